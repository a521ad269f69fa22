#!/usr/bin/env bash
# gpu_train.sh: parts at the course's settings (default 5b and 5c, side by side with --jobs 2) on one
# CUDA GPU in one sitting, and what they produced brought back through `pack` within what a lent
# machine returns per command (at most 8 files, 64 MiB together).
#
#   OUT=/path/to/empty/dir bash tools/gpu_train.sh            # train (or resume), then pack
#   OUT=/path/to/empty/dir bash tools/gpu_train.sh fetch 2    # a later command: the model pack number 2
#
# train: `experiments.py all --profile full --parts $PARTS --jobs $JOBS --minutes $MINUTES` into
#   $WORK/results (WORK, default .gpu-work, is git-ignored, so a warm machine keeps it between
#   commands: rerun the same command to resume a run the time limit stopped). Then into $OUT:
#   train.log (the output) and light/ (one pack of every file but model.pt and checkpoint.pt: metrics,
#   per-image values, figures, history, run.log, job.log, the summary).
# The models are packed into $WORK/models in packs of 4 pieces of 15 MiB; each later `fetch K`
#   command copies pack K into $OUT (5 files, 60 MiB).
#   A run stopped by the time limit packs its checkpoints too, to resume on another machine.
# Here: python experiments.py unpack DIR... (the packs in any order) restores them into results/.
set -u
: "${OUT:?set OUT to an empty directory}"
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
DEVICE=${DEVICE:-cuda}
PROFILE=${PROFILE:-full}
PARTS=${PARTS:-5b,5c}
JOBS=${JOBS:-2}
MINUTES=${MINUTES:-8}                # leaves time for packing inside a 10-minute command
WORK=${WORK:-.gpu-work}
PIECE_MIB=${PIECE_MIB:-15}           # 4 pieces + a manifest: under the 64 MiB a command returns
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
mkdir -p "$OUT" "$WORK"
R=$WORK/results
pack() { "$PY" experiments.py pack "$@" --profile "$PROFILE" --parts "$PARTS" --results-dir "$R"; }

if [ "${1:-train}" = fetch ]; then
  k=${2:?fetch needs a pack number}
  src=$WORK/models/pack-$k
  [ -d "$src" ] || [ "$k" != 1 ] || src=$WORK/models   # a single pack is written into the directory itself
  [ -f "$src/manifest.json" ] || { echo "no model pack $k in $WORK/models" >&2; exit 1; }
  mkdir -p "$OUT/models-$k" && cp "$src"/* "$OUT/models-$k/"
  ls -l "$OUT/models-$k"
  exit 0
fi

start=$(date +%s)
"$PY" experiments.py all --profile "$PROFILE" --parts "$PARTS" --device "$DEVICE" --results-dir "$R" \
      --jobs "$JOBS" --minutes "$MINUTES" --no-progress > "$WORK/train.log" 2>&1
rc=$?
echo "all: exit status $rc after $(( $(date +%s) - start )) s" >> "$WORK/train.log"
finished=yes
for part in ${PARTS//,/ }; do [ -f "$R/$PROFILE/$part/metrics.json" ] || finished=no; done
rm -rf "$OUT/light" "$WORK/models"
pack "$OUT/light" --leave-out model.pt,checkpoint.pt --max-files 3 --piece-mib 15 >> "$WORK/train.log" 2>&1
if [ $finished = yes ]; then
  pack "$WORK/models" --leave-out checkpoint.pt,is_partial.pt --max-files 5 --piece-mib "$PIECE_MIB" \
       >> "$WORK/train.log" 2>&1
else
  pack "$WORK/models" --max-files 5 --piece-mib "$PIECE_MIB" >> "$WORK/train.log" 2>&1   # checkpoints too
fi
packs=$(ls -d "$WORK"/models/pack-* 2>/dev/null | wc -l); (( packs == 0 )) && packs=1
echo "finished: $finished; model packs: $packs (bring back each with: bash tools/gpu_train.sh fetch K)" \
     >> "$WORK/train.log"
cp "$WORK/train.log" "$OUT/"
tail -20 "$OUT/train.log"
exit $rc
