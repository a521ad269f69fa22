#!/usr/bin/env bash
# gpu_check.sh: the GPU path of the homework end to end, and the numbers that matter, on one CUDA GPU,
# every step inside BUDGET seconds (default 420) after a preflight of a few seconds. Only the project's
# own commands run (experiments.py, tools/bench.py); nvidia-smi only watches.
#
#   OUT=/path/to/empty/dir bash tools/gpu_check.sh        # from the repository root
#   bash tools/gpu_check.sh plan                          # each step's share of BUDGET; runs nothing
#
# Steps: every part at smoke size on the device, serially and with --jobs 3 (the numbers must agree);
# a CPU checkpoint of 6b resumed on the device at course settings, then its evaluation; 6c's CPU-trained
# model evaluated on the device; `estimate --profile full` with --is-images 1000; tools/bench.py; eager
# training against CUDA graphs (--compile-train); low-precision smoke runs. Every step but estimate and
# the low-precision ones trains in float32 (--precision fp32), so that they check the same thing on every
# GPU: with `auto`, a GPU without bfloat16 tensor cores (a T4) would train in float16, in another run
# directory, and the CPU checkpoint would not be resumed at all.
#
# The budget: each step has a share of BUDGET - SPARE seconds in proportion to its weight (the table
# below; `plan` prints the shares), and none is skipped for time: a step's limit is what is left of the
# budget less the shares of the steps after it, never less than its share, so the time one step leaves
# goes to the next. SPARE covers the short commands between steps and the seconds a kill may take.
#
# Preflight (tools/gpu_preflight.py), before any step: MNIST, which data/ (git-ignored) does not bring:
# carry data/MNIST/gz, the four gzipped IDX files (11 MiB; `python tools/gpu_preflight.py pack-data` makes
# them here), and they are unpacked into data/MNIST/raw; without them the check stops (exit status 3).
# Then the packages each step imports when it starts: a step that cannot start is skipped, and the
# preflight says which package, imported where, it lacks (exit status 4 at the end).
#
# What comes back is small on purpose (a lent machine returns at most 8 files): $OUT/summary.txt,
# $OUT/steps.txt, $OUT/gpu.txt, $OUT/preflight.txt and $OUT/check.tar.gz (every log, metrics.json, history
# and the bench files; no model or checkpoint). Everything else is written under WORK (default: a
# temporary directory). Nothing in the checkout is modified but data/MNIST/raw; `eval 6c` only reads
# results/full/6c/model.pt.
#
# PY: the Python with torch (default .venv/bin/python, else python3, else python). The same script runs
# on the CPU with a stand-in for tests (tests/test_gpu_check.py): DEVICE=cpu, CHECK_PROFILE=smoke,
# BENCH_PROFILE=smoke, a fake nvidia-smi on PATH.
set -u
MODE=${1:-check}
case $MODE in check|plan) ;; *) echo "usage: OUT=DIR bash tools/gpu_check.sh [plan]" >&2; exit 2 ;; esac
[ "$MODE" = plan ] || : "${OUT:?set OUT to an empty directory}"
. tools/gpu_common.sh  # from the repository root, like every path of this script
find_python gpu_check
DEVICE=${DEVICE:-cuda}
P=${CHECK_PROFILE:-full}             # the profile of the resume, estimate and eager/graphs steps
BENCH_PROFILE=${BENCH_PROFILE:-full}
BUDGET=${BUDGET:-420}                # seconds for all the steps together; preflight and summary come outside it
SPARE=${SPARE:-10}                   # of which this many for the commands between steps and the kill margin
MIN_STEP=${MIN_STEP:-10}             # a BUDGET that gives a step less is refused
SMOKE_PARTS=${SMOKE_PARTS:-}         # empty: every part
EST_PARTS=${EST_PARTS:-}             # empty: every part
IS=${IS_IMAGES:-500}                 # importance-sampled test images of the resumed 6b
EST_IS=${EST_IS_IMAGES:-1000}        # importance-sampled test images in the estimate (a lever of the issue)
GRAPH_EPOCHS=${GRAPH_EPOCHS:-2}      # the first epoch compiles; the second is timed
read -r -a BENCH_ARGS <<< "${BENCH_ARGS:-}"   # more options of tools/bench.py (the CPU stand-in: --no-baseline)
EVAL_RESULTS=${EVAL_RESULTS:-results}
whole_numbers gpu_check BUDGET SPARE MIN_STEP IS EST_IS GRAPH_EPOCHS

# The steps in order and their weights: seconds at the default BUDGET (they sum to 410 = 420 - SPARE)
NAMES=() WEIGHTS=()
plan() { NAMES+=("$1"); WEIGHTS+=("$2"); }
plan smoke 40                        # every part, smoke size, serially
[ -f "results/$P/6b/checkpoint.pt" ] || plan cpu_checkpoint 25   # else the committed checkpoint is resumed
plan resume_6b 50                    # the rest of its first epoch at course settings, then its evaluation
plan eval_6c 35                      # if there is a model of 6c by then (else its share goes on)
plan estimate 35
plan bench 50
plan train_eager 35                  # GRAPH_EPOCHS of 6b, eagerly
plan train_graphs 75                 # the same through CUDA graphs (compiling included)
plan smoke_jobs 35                   # every part, smoke size, 3 at once: the numbers of step smoke
plan smoke_bf16 15
[ "$DEVICE" = cpu ] || plan smoke_fp16 15   # float16 training needs a GPU (the engine refuses it on a CPU)

shares() {  # SHARES from WEIGHTS, over the steps not skipped
  local total=0 i
  SHARES=()
  for i in "${!NAMES[@]}"; do total=$(( total + WEIGHTS[i] )); done
  for i in "${!NAMES[@]}"; do SHARES[i]=$(( total > 0 ? WEIGHTS[i] * (BUDGET - SPARE) / total : 0 )); done
  for i in "${!NAMES[@]}"; do
    if (( SHARES[i] < MIN_STEP )); then
      echo "gpu_check: BUDGET=$BUDGET gives ${NAMES[i]} ${SHARES[i]} s, under MIN_STEP=$MIN_STEP s: raise BUDGET" >&2
      return 1
    fi
  done
}
shares || exit 2
if [ "$MODE" = plan ]; then
  sum=0
  for i in "${!NAMES[@]}"; do printf '%-15s %4d s\n' "${NAMES[i]}" "${SHARES[i]}"; sum=$(( sum + SHARES[i] )); done
  echo "total           $sum s of BUDGET=$BUDGET (SPARE=$SPARE)"
  exit 0
fi

WORK=${WORK:-$(mktemp -d)}
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
R=$WORK/results
mkdir -p "$R" "$OUT"
: > "$WORK/steps.txt"
parts=(--no-progress); [ -n "$SMOKE_PARTS" ] && parts+=(--parts "$SMOKE_PARTS")
estimated=(--is-images "$EST_IS"); [ -n "$EST_PARTS" ] && estimated+=(--parts "$EST_PARTS")

# Preflight: MNIST (stop without it), then what each step imports (skip the steps that cannot start)
if ! "$PY" tools/gpu_preflight.py data > "$WORK/preflight.txt" 2>&1; then
  cat "$WORK/preflight.txt"; cp "$WORK/preflight.txt" "$OUT/"
  echo "gpu_check: no MNIST, so no step ran (exit status 3)"; exit 3
fi
entries=()
for name in "${NAMES[@]}"; do
  case $name in bench) entries+=("$name=tools/bench.py") ;; *) entries+=("$name=experiments.py") ;; esac
done
"$PY" tools/gpu_preflight.py packages "${entries[@]}" summary=tools/gpu_summary.py --blocked "$WORK/blocked.txt" \
    >> "$WORK/preflight.txt" 2>&1
preflight=$?
(( preflight == 0 || preflight == 4 )) || echo "preflight of the packages failed (exit status $preflight); every step runs" \
    >> "$WORK/preflight.txt"
cat "$WORK/preflight.txt"
declare -A BLOCKED=()
if (( preflight == 4 )); then
  while read -r name missing; do BLOCKED[$name]=$missing; done < "$WORK/blocked.txt"
fi
KEEP_NAMES=() KEEP_WEIGHTS=()
for i in "${!NAMES[@]}"; do
  if [ -n "${BLOCKED[${NAMES[i]}]:-}" ]; then
    echo "${NAMES[i]} - - skipped(missing:${BLOCKED[${NAMES[i]}]})" >> "$WORK/steps.txt"
  else
    KEEP_NAMES+=("${NAMES[i]}"); KEEP_WEIGHTS+=("${WEIGHTS[i]}")
  fi
done
NAMES=(${KEEP_NAMES[@]+"${KEEP_NAMES[@]}"}) WEIGHTS=(${KEEP_WEIGHTS[@]+"${KEEP_WEIGHTS[@]}"})
shares || exit 2

{ echo "python: $PY ($("$PY" -V 2>&1))"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1
  "$PY" -c "import torch; c = torch.cuda.is_available(); print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'cudnn', torch.backends.cudnn.version(), 'bf16', c and torch.cuda.is_bf16_supported(False), \
'capability', c and torch.cuda.get_device_capability())" 2>&1; } > "$WORK/gpu.txt"
nvidia-smi dmon -s u -o T -d 1 > "$WORK/dmon.log" 2>&1 &
DMON=$!

START=$(date +%s)
STEP=0
limited() {  # limited COMMAND...: step STEP under its limit: what is left of the budget less the shares of
  local name=${NAMES[STEP]} share=${SHARES[STEP]} after=0 i t0 rc limit  # the steps after it, and never under its share
  for (( i = STEP + 1; i < ${#NAMES[@]}; i++ )); do after=$(( after + SHARES[i] )); done
  limit=$(( START + BUDGET - SPARE - $(date +%s) - after ))
  (( limit >= share )) || limit=$share
  t0=$(date +%s)
  timeout -k 5 "$limit" "$@" > "$WORK/$name.log" 2>&1
  rc=$?
  echo "$name $t0 $(date +%s) rc=$rc limit=${limit}s share=${share}s" >> "$WORK/steps.txt"
  echo "[$(( $(date +%s) - START ))s] $name rc=$rc ($(( $(date +%s) - t0 ))s of ${limit}s)"
}

step_smoke() {
  limited "$PY" experiments.py all --profile smoke --precision fp32 --device "$DEVICE" --results-dir "$R/serial" \
          "${parts[@]}"
}
step_cpu_checkpoint() {  # one step of 6b trained here on the CPU, checkpointed
  limited "$PY" experiments.py run 6b --profile "$P" --precision fp32 --device cpu --minutes 0.000001 \
          --results-dir "$R/resume" --no-progress
}
step_resume_6b() {  # the CPU checkpoint (the committed one if there is one) resumed on the device
  mkdir -p "$R/resume/$P/6b"
  [ -f "results/$P/6b/checkpoint.pt" ] && cp "results/$P/6b/checkpoint.pt" "$R/resume/$P/6b/"
  "$PY" -c "import sys; from engine.modelfiles import load_file; c = load_file(sys.argv[1]); print(c['epoch'], c['train_seconds'])" \
      "$R/resume/$P/6b/checkpoint.pt" > "$WORK/cpu_checkpoint.txt" 2>&1
  local epoch; epoch=$(awk '{print $1; exit}' "$WORK/cpu_checkpoint.txt"); [[ "$epoch" =~ ^[0-9]+$ ]] || epoch=0
  limited "$PY" experiments.py run 6b --profile "$P" --precision fp32 --device "$DEVICE" --epochs $(( epoch + 1 )) \
          --is-images "$IS" --results-dir "$R/resume" --no-progress
}
step_eval_6c() {  # a CPU-trained model evaluated on the device: 6c's importance-sampled NLL, same test images
  if [ ! -f "$EVAL_RESULTS/$P/6c/model.pt" ]; then
    echo "eval_6c - - skipped(no-model:$EVAL_RESULTS/$P/6c/model.pt)" >> "$WORK/steps.txt"; return
  fi
  local m; m=$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['config']['is_samples'])" \
               "$EVAL_RESULTS/$P/6c/metrics.json" 2>&1)
  if ! [[ "$m" =~ ^[0-9]+$ ]]; then
    echo "$m" > "$WORK/eval_6c.log"; echo "eval_6c - - skipped(no-is_samples-in-metrics.json)" >> "$WORK/steps.txt"; return
  fi
  limited "$PY" experiments.py eval 6c --profile "$P" --device "$DEVICE" --quantity "test_nll_is$m" \
          --results-dir "$EVAL_RESULTS"
}
step_estimate() {  # what this machine predicts for every part at the profile's settings, IS on EST_IS images
  limited "$PY" experiments.py estimate --profile "$P" --device "$DEVICE" --results-dir "$WORK/none" "${estimated[@]}"
}
step_bench() {  # this implementation at the engine's settings against the straightforward one
  limited "$PY" -m tools.bench --device "$DEVICE" --profile "$BENCH_PROFILE" --json "$WORK/bench.json" \
          --baseline-json "$WORK/bench_straightforward.json" --bf16-json "$WORK/bench_bf16.json" \
          --flops-json "$WORK/bench_flops.json" ${BENCH_ARGS[@]+"${BENCH_ARGS[@]}"}
}
step_train_eager() {
  limited "$PY" experiments.py run 6b --profile "$P" --precision fp32 --device "$DEVICE" --epochs "$GRAPH_EPOCHS" \
          --is-images 100 --results-dir "$R/eager" --no-progress
}
step_train_graphs() {  # --compile-train: torch.compile mode reduce-overhead
  TORCH_LOGS=${TORCH_LOGS:-perf_hints,recompiles} limited "$PY" experiments.py run 6b --profile "$P" --precision fp32 \
          --device "$DEVICE" --epochs "$GRAPH_EPOCHS" --is-images 100 --compile-train --results-dir "$R/graphs" --no-progress
}
step_smoke_jobs() {
  limited "$PY" experiments.py all --profile smoke --precision fp32 --device "$DEVICE" --results-dir "$R/jobs" --jobs 3 \
          "${parts[@]}"
}
step_smoke_bf16() {
  limited "$PY" experiments.py all --profile smoke --parts 6a,6c --precision bf16 --device "$DEVICE" \
          --results-dir "$R/serial" --no-progress
}
step_smoke_fp16() {
  limited "$PY" experiments.py all --profile smoke --parts 6a,6c --precision fp16 --device "$DEVICE" \
          --results-dir "$R/serial" --no-progress
}
for (( STEP = 0; STEP < ${#NAMES[@]}; STEP++ )); do "step_${NAMES[STEP]}"; done

kill "$DMON" 2>/dev/null
wait "$DMON" 2>/dev/null
"$PY" tools/gpu_summary.py "$WORK" "$P" > "$WORK/summary.txt" 2>&1
cat "$WORK/summary.txt"
archive() {
  tar czf "$OUT/check.tar.gz" -C "$WORK" --exclude=model.pt --exclude=checkpoint.pt --exclude='checkpoint-step*.pt' \
      --exclude=is_partial.pt --exclude='eval_partial_*.pt' --exclude=run.lock "$@" .
}
archive --exclude='*.png'
if (( $(stat -c %s "$OUT/check.tar.gz") > 16 * 1024 * 1024 )); then  # a returned file holds at most 16 MiB
  archive --exclude='*.png' --exclude=per_image.pt --exclude=history.json
  echo "check.tar.gz: over 16 MiB with per_image.pt and history.json, so without them" >> "$WORK/summary.txt"
fi
cp "$WORK/summary.txt" "$WORK/steps.txt" "$WORK/gpu.txt" "$WORK/preflight.txt" "$OUT/"
echo "total $(( $(date +%s) - START )) s of steps (BUDGET $BUDGET); summary, steps and an archive of the logs in $OUT"
(( ${#BLOCKED[@]} == 0 )) || { echo "gpu_check: steps skipped for missing packages: ${!BLOCKED[*]} (see preflight.txt)"; exit 4; }
exit 0
