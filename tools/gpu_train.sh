#!/usr/bin/env bash
# gpu_train.sh: parts at the course's settings (default 5b and 5c, side by side with --jobs 2) on one
# CUDA GPU in one sitting, and what they produced brought back in the same command, within what a lent
# machine returns per command (RETURN_FILES files of at most 16 MiB, RETURN_MIB MiB together: 8 and 64).
#
#   OUT=/path/to/empty/dir bash tools/gpu_train.sh        # train (or resume), then bring back what fits
#
# `experiments.py all --profile full --parts $PARTS --precision fp32 --jobs $JOBS --minutes $MINUTES`
# into $WORK/results (WORK, default .gpu-work, is git-ignored, so a warm machine keeps it between
# commands: rerun the same command to resume a run the time limit stopped). Then into $OUT:
#   train.log     the output, and at its end what was brought back and what was left behind;
#   light/        one pack of every file but the models and checkpoints: metrics, per-image values,
#                 figures, history, run.log, job.log (`python experiments.py unpack DIR` restores it);
#   models/       one pack of the whole parts, models included (checkpoints too while a part is
#                 unfinished), only if it fits in the files and bytes the other two leave.
# What does not fit stays on the machine, listed in train.log with its size and SHA-256: at course
# settings 5b and 5c's model.pt are 116 MiB each (their checkpoints 348 MiB), which no single command
# can return; such a model is not committed anyway (docs/engine.md, "What is committed").
#
# Before training, the preflight of tools/gpu_check.sh (tools/gpu_preflight.py): MNIST from the carried
# data/MNIST/gz (exit status 3 without it) and the packages experiments.py imports (exit status 4 without
# one, saying which); nothing is trained then. PY: default .venv/bin/python, else python3, else python.
set -u
: "${OUT:?set OUT to an empty directory}"
. tools/gpu_common.sh  # from the repository root, like every path of this script
find_python gpu_train
DEVICE=${DEVICE:-cuda}
PROFILE=${PROFILE:-full}
PARTS=${PARTS:-5b,5c}
JOBS=${JOBS:-2}
MINUTES=${MINUTES:-8}                # leaves time for packing inside a 10-minute command
PRECISION=${PRECISION:-fp32}         # explicit, so that training and packing name the same run directory
WORK=${WORK:-.gpu-work}
RETURN_FILES=${RETURN_FILES:-8}      # what one command of a lent machine returns
RETURN_MIB=${RETURN_MIB:-64}
PIECE_MIB=${PIECE_MIB:-16}           # the most one returned file may hold
whole_numbers gpu_train JOBS RETURN_FILES RETURN_MIB
[[ $PIECE_MIB =~ ^[0-9]*\.?[0-9]+$ ]] || { echo "gpu_train: PIECE_MIB=$PIECE_MIB: expected a number" >&2; exit 2; }
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
mkdir -p "$OUT" "$WORK"
R=$WORK/results
run=$R/$PROFILE; [ "$PRECISION" = fp32 ] || run=$R/$PROFILE-$PRECISION
LOG=$WORK/train.log
: > "$LOG"
say() { echo "$*" | tee -a "$LOG"; }

stop() { cp "$LOG" "$OUT/"; cat "$LOG"; echo "gpu_train: $1"; exit "$2"; }
"$PY" tools/gpu_preflight.py data >> "$LOG" 2>&1 || stop "no MNIST, nothing trained" 3
"$PY" tools/gpu_preflight.py packages train=experiments.py >> "$LOG" 2>&1
(( $? != 4 )) || stop "a package experiments.py imports is missing (above), nothing trained" 4

start=$(date +%s)
"$PY" experiments.py all --profile "$PROFILE" --parts "$PARTS" --precision "$PRECISION" --device "$DEVICE" \
      --results-dir "$R" --jobs "$JOBS" --minutes "$MINUTES" --no-progress >> "$LOG" 2>&1
rc=$?
say "all: exit status $rc after $(( $(date +%s) - start )) s"
finished=yes present=()
for part in ${PARTS//,/ }; do
  [ -f "$run/$part/metrics.json" ] || finished=no
  [ -d "$run/$part" ] && present+=("$part")
done
rm -rf "$OUT/light" "$OUT/models"
(( ${#present[@]} > 0 )) || stop "nothing to bring back: no part in $run" $(( rc ? rc : 1 ))
have=$(IFS=,; echo "${present[*]}")
pack() { "$PY" experiments.py pack "$@" --profile "$PROFILE" --precision "$PRECISION" --parts "$have" \
                --results-dir "$R" --piece-mib "$PIECE_MIB" >> "$LOG" 2>&1; }
files_in() { find "$@" -type f 2> /dev/null | wc -l; }
bytes_in() { find "$@" -type f -printf '%s\n' 2> /dev/null | awk '{s += $1} END {print s + 0}'; }
heavy=(model.pt checkpoint.pt is_partial.pt)
mib=$(( 1024 * 1024 ))
in_mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
room_files=$(( RETURN_FILES - 1 ))               # train.log comes back too, its last MiB at most
room_bytes=$(( RETURN_MIB * mib - mib ))

pack "$OUT/light" --leave-out "$(IFS=,; echo "${heavy[*]}")" --max-files "$room_files"
if [ -d "$OUT/light" ] && (( $(files_in "$OUT/light") <= room_files && $(bytes_in "$OUT/light") <= room_bytes )) \
   && ! ls -d "$OUT"/light/pack-* > /dev/null 2>&1; then
  room_files=$(( room_files - $(files_in "$OUT/light") )); room_bytes=$(( room_bytes - $(bytes_in "$OUT/light") ))
  say "brought back: light/ (metrics, per-image values, figures, history, logs of $have)"
else
  rm -rf "$WORK/light"; [ -d "$OUT/light" ] && mv "$OUT/light" "$WORK/light"
  say "left behind: the light files of $have, over what one command returns (they are in $WORK/light)"
fi

# the models; while a part is unfinished, the checkpoints too (what resumes it elsewhere)
wanted=(model.pt); leave=(--leave-out checkpoint.pt,is_partial.pt)
[ "$finished" = yes ] || { wanted=("${heavy[@]}"); leave=(); }
mapfile -t big < <(cd "$run" && for part in "${present[@]}"; do for f in "${wanted[@]}"; do
                     [ -f "$part/$f" ] && echo "$part/$f"; done; done)
if (( ${#big[@]} == 0 )); then
  say "no model or checkpoint to bring back"
else
  need_bytes=$(cd "$run" && bytes_in "${big[@]}")
  need_files=$(awk -v b="$need_bytes" -v p="$PIECE_MIB" 'BEGIN { n = b / (p * 1048576); print int(n) + (n > int(n)) + 1 }')
  if (( need_bytes <= room_bytes && need_files <= room_files )) \
     && pack "$OUT/models" ${leave[@]+"${leave[@]}"} --max-files "$room_files" && ! ls -d "$OUT"/models/pack-* > /dev/null 2>&1 \
     && (( $(files_in "$OUT/models") <= room_files && $(bytes_in "$OUT/models") <= room_bytes )); then
    say "brought back: models/ (the whole parts, with ${big[*]})"
  else
    rm -rf "$OUT/models"
    say "left behind on this machine, in $run (over what one command returns: $(in_mib "$need_bytes") in" \
        "${#big[@]} files, against $(in_mib "$room_bytes") and $room_files files left):"
    for f in "${big[@]}"; do
      say "  $f $(in_mib "$(stat -c %s "$run/$f")") sha256 $(sha256sum "$run/$f" | cut -d' ' -f1)"
    done
  fi
fi
if [ "$finished" = yes ]; then
  say "finished: yes"
else
  say "finished: no (the time limit stopped a part: rerun the same command on this machine to resume)"
fi
tail -c "$mib" "$LOG" > "$OUT/train.log"
tail -20 "$LOG"
exit $rc
