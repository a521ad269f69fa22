#!/usr/bin/env bash
# gpu_check.sh: the GPU path of the homework end to end, and the numbers that matter, on one CUDA GPU
# in about 7 minutes of wall time (BUDGET). Only the project's own commands run (experiments.py,
# tools/bench.py); nvidia-smi only watches.
#
#   OUT=/path/to/empty/dir bash tools/gpu_check.sh        # from the repository root
#
# Steps: every part at smoke size on the device, serially and with --jobs 3 (the numbers must agree);
# a CPU checkpoint of 6b resumed on the device at course settings, then its evaluation; 6c's CPU-trained
# model evaluated on the device; `estimate --profile full` with --is-images 1000; tools/bench.py; eager
# training against CUDA graphs (--compile-train); low-precision smoke runs.
# What comes back is small on purpose (a lent machine returns at most 8 files): $OUT/summary.txt,
# $OUT/steps.txt, $OUT/gpu.txt and $OUT/check.tar.gz (every log, metrics.json, history and the bench
# files; no model or checkpoint). Everything else is written under WORK (default: a temporary directory).
# Nothing in the checkout is modified; `eval 6c` only reads results/full/6c/model.pt.
#
# Needs torch with CUDA for $PY (default .venv/bin/python, else python) and MNIST in data/ (git-ignored:
# carry data/MNIST, the four raw IDX files; the binarized caches are rebuilt from them in seconds).
# The same script runs on the CPU with a stand-in for tests (tests/test_gpu_check.py): DEVICE=cpu,
# CHECK_PROFILE=smoke, BENCH_PROFILE=smoke, a fake nvidia-smi on PATH.
set -u
: "${OUT:?set OUT to an empty directory}"
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
DEVICE=${DEVICE:-cuda}
P=${CHECK_PROFILE:-full}             # the profile of the resume, estimate and eager/graphs steps
BENCH_PROFILE=${BENCH_PROFILE:-full}
BUDGET=${BUDGET:-420}                # seconds for the steps; the summary follows (a few seconds)
SMOKE_PARTS=${SMOKE_PARTS:-}         # empty: every part
EST_PARTS=${EST_PARTS:-}             # empty: every part
IS=${IS_IMAGES:-500}                 # importance-sampled test images of the resumed 6b
EST_IS=${EST_IS_IMAGES:-1000}        # importance-sampled test images in the estimate (a lever of the issue)
GRAPH_EPOCHS=${GRAPH_EPOCHS:-3}
read -r -a BENCH_ARGS <<< "${BENCH_ARGS:-}"   # more options of tools/bench.py (the CPU stand-in: --no-baseline)
BENCH_SECONDS=${BENCH_SECONDS:-100}
STEP_SCALE=${STEP_SCALE:-1}          # times every step's limit (a loaded CPU stand-in: more)
EVAL_RESULTS=${EVAL_RESULTS:-results}
WORK=${WORK:-$(mktemp -d)}
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
START=$(date +%s)
R=$WORK/results
mkdir -p "$R" "$OUT"
: > "$WORK/steps.txt"
parts=(--no-progress); [ -n "$SMOKE_PARTS" ] && parts+=(--parts "$SMOKE_PARTS")
estimated=(--is-images "$EST_IS"); [ -n "$EST_PARTS" ] && estimated+=(--parts "$EST_PARTS")

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader > "$WORK/gpu.txt" 2>&1
"$PY" -c "import torch; c = torch.cuda.is_available(); print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'cudnn', torch.backends.cudnn.version(), 'bf16', c and torch.cuda.is_bf16_supported(False), \
'capability', c and torch.cuda.get_device_capability())" >> "$WORK/gpu.txt" 2>&1
nvidia-smi dmon -s u -o T -d 1 > "$WORK/dmon.log" 2>&1 &
DMON=$!

step() {  # step NAME MAX_SECONDS COMMAND...: a timeout that keeps every step inside BUDGET
  local name=$1 max=$(( $2 * STEP_SCALE )); shift 2
  local left=$(( START + BUDGET - $(date +%s) ))
  (( left < max )) && max=$left
  if (( max < 10 )); then echo "$name - - skipped(budget)" >> "$WORK/steps.txt"; return; fi
  local t0; t0=$(date +%s)
  timeout -k 5 "$max" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  echo "$name $t0 $(date +%s) rc=$rc limit=${max}s" >> "$WORK/steps.txt"
  echo "[$(( $(date +%s) - START ))s] $name rc=$rc ($(( $(date +%s) - t0 ))s)"
}

# 1. every part at seconds' sizes on the device: train, test ELBO, active units, importance sampling,
#    figures, summary
step smoke 100 "$PY" experiments.py all --profile smoke --device "$DEVICE" --results-dir "$R/serial" "${parts[@]}"
# 2. a CPU checkpoint of 6b resumed on the device: the committed one if there is one, else one step
#    trained here on the CPU; then the rest of its epoch and the evaluation at the profile's settings
mkdir -p "$R/resume/$P/6b"
if [ -f "results/$P/6b/checkpoint.pt" ]; then
  cp "results/$P/6b/checkpoint.pt" "$R/resume/$P/6b/"
else
  step cpu_checkpoint 60 "$PY" experiments.py run 6b --profile "$P" --device cpu --minutes 0.000001 \
       --results-dir "$R/resume" --no-progress
fi
"$PY" -c "import sys; from engine.train import load_file; c = load_file(sys.argv[1]); print(c['epoch'], c['train_seconds'])" \
    "$R/resume/$P/6b/checkpoint.pt" > "$WORK/cpu_checkpoint.txt" 2>&1
EPOCH=$(awk '{print $1; exit}' "$WORK/cpu_checkpoint.txt"); [[ "$EPOCH" =~ ^[0-9]+$ ]] || EPOCH=0
step resume_6b 75 "$PY" experiments.py run 6b --profile "$P" --device "$DEVICE" --epochs $(( EPOCH + 1 )) \
     --is-images "$IS" --results-dir "$R/resume" --no-progress
# 3. a CPU-trained model evaluated on the device: 6c's importance-sampled NLL over the same test images
if [ -f "$EVAL_RESULTS/$P/6c/model.pt" ]; then
  M=$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['config']['is_samples'])" \
      "$EVAL_RESULTS/$P/6c/metrics.json")
  step eval_6c 50 "$PY" experiments.py eval 6c --profile "$P" --device "$DEVICE" --quantity "test_nll_is$M" \
       --results-dir "$EVAL_RESULTS"
fi
# 4. what this machine predicts for every part at the profile's settings, IS on EST_IS images
step estimate 60 "$PY" experiments.py estimate --profile "$P" --device "$DEVICE" --results-dir "$WORK/none" \
     "${estimated[@]}"
# 5. the benchmark: this implementation at the engine's settings against the straightforward one
step bench "$BENCH_SECONDS" "$PY" -m tools.bench --device "$DEVICE" --profile "$BENCH_PROFILE" --json "$WORK/bench.json" \
     --baseline-json "$WORK/bench_straightforward.json" --bf16-json "$WORK/bench_bf16.json" \
     --flops-json "$WORK/bench_flops.json" ${BENCH_ARGS[@]+"${BENCH_ARGS[@]}"}
# 6. eager against CUDA graphs (--compile-train: torch.compile mode reduce-overhead), GRAPH_EPOCHS of 6b each
step train_eager 60 "$PY" experiments.py run 6b --profile "$P" --device "$DEVICE" --epochs "$GRAPH_EPOCHS" \
     --is-images 100 --results-dir "$R/eager" --no-progress
TORCH_LOGS=${TORCH_LOGS:-perf_hints,recompiles} step train_graphs 150 "$PY" experiments.py run 6b --profile "$P" \
     --device "$DEVICE" --epochs "$GRAPH_EPOCHS" --is-images 100 --compile-train --results-dir "$R/graphs" --no-progress
# 7. several parts at once on one device: the same numbers as step 1
step smoke_jobs 100 "$PY" experiments.py all --profile smoke --device "$DEVICE" --results-dir "$R/jobs" --jobs 3 "${parts[@]}"
# 8. low precision through the engine, if time is left (fp16 where this version offers it)
for precision in bf16 fp16; do
  if "$PY" experiments.py run --help | grep -q "$precision"; then
    step "smoke_$precision" 30 "$PY" experiments.py all --profile smoke --parts 6a,6c --precision "$precision" \
         --device "$DEVICE" --results-dir "$R/serial" --no-progress
  fi
done

kill "$DMON" 2>/dev/null
wait "$DMON" 2>/dev/null
"$PY" tools/gpu_summary.py "$WORK" "$P" > "$WORK/summary.txt" 2>&1
cat "$WORK/summary.txt"
tar czf "$OUT/check.tar.gz" -C "$WORK" --exclude=model.pt --exclude=checkpoint.pt --exclude=is_partial.pt \
    --exclude='*.png' --exclude=run.lock .
cp "$WORK/summary.txt" "$WORK/steps.txt" "$WORK/gpu.txt" "$OUT/"
echo "total $(( $(date +%s) - START )) s; summary, steps and an archive of the logs in $OUT"
