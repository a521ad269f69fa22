#!/usr/bin/env bash
# The course-settings training queue on a CPU, resumable across sittings: from a fixed commit in a
# worktree of its own (so that edits in the checkout cannot change a run in flight), under nice,
# writing into the checkout's results/ and reading its data/. Rerun it to resume where it stopped.
#
#   bash tools/queue.sh                 # from the checkout's root; QUEUE="6d 6e-weak" to change the parts
#   EXTRA=--compile-train bash tools/queue.sh   # more options of `experiments.py run`, for every part
#
# Each part resumes from its checkpoint, or is reported as done if it has finished. Importance
# sampling covers the first 1,000 test images (M = 1000), as for 6c, so that every course-settings
# comparison is paired over the same images. The worktree is made at the checkout's HEAD the first
# time; `git -C ../hw2-run checkout --detach <commit>` moves it to other code between sittings.
#
# Then, for the finished parts in RECOMPUTE (e.g. RECOMPUTE="6b 6c"), the importance-sampled NLL
# over the first IS_IMAGES test images (default all 10,000), from the model, written into
# metrics.json and per_image.pt (`experiments.py eval --keep --update`). It saves the images done
# after each batch (beside the model, eval_partial_*.pt) and stops after MINUTES (default a day);
# rerun the queue to resume it. A part whose number already covers that many images is skipped.
#
# QUEUE, RECOMPUTE, PROFILE, IS_IMAGES and MINUTES are checked before anything runs, against the
# parts and profiles of the code the queue runs (tools/queue_info.py): a wrong one stops the queue
# with one line and exit status 2. No value is ever pasted into Python code.
#
# At the end of a sitting, to go on in another (on this machine or a fresh clone): stop the queue
# after an epoch's checkpoint, then `python experiments.py carry --profile full` writes the
# checkpoint of each unfinished part as <part>/checkpoint.pack (pieces git can hold) to commit with
# the part's run.log; the next run restores it by itself.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
run=${RUN_TREE:-$root/../hw2-run}
# 6d last: the longest (60 epochs), and its checkpoint (32 MiB) goes between sittings only as a
# carried pack (three pieces, 32 MiB in the full history for each sitting it spans)
parts=${QUEUE-6b 6e-baseline 6e-freebits 6e-warmup 6e-weak 6d}
py=${PY:-$root/.venv/bin/python}
profile=${PROFILE:-full}          # the tests use the smoke profile
results=${RESULTS:-$root/results}
recompute=${RECOMPUTE:-}
is_images=${IS_IMAGES:-10000}
minutes=${MINUTES:-1440}
# the checkout's own helper, whatever commit the worktree is at; the engine it asks is the worktree's
info() { "$py" "$root/tools/queue_info.py" "$@"; }
code=$root; [ -d "$run" ] && code=$run
info check --code "$code" --profile "$profile" --queue "$parts" --recompute "$recompute" \
     --is-images "$is_images" --minutes "$minutes" || exit $?
read -r -d '' -a queue_parts <<< "$parts" || true
read -r -d '' -a recompute_parts <<< "$recompute" || true
[ -d "$run" ] || git -C "$root" worktree add --quiet --detach "$run" HEAD
cd "$run"
echo "queue: $(git rev-parse --short HEAD) in $run, parts: ${queue_parts[*]+${queue_parts[*]}}"
for part in ${queue_parts[@]+"${queue_parts[@]}"}; do
  HW2_DATA=$root/data nice -n 10 "$py" experiments.py run "$part" --profile "$profile" --is-images 1000 \
    --results-dir "$results" --no-progress ${EXTRA:-} || { echo "queue: $part failed; the parts after it did not run"; exit 1; }
done
for part in ${recompute_parts[@]+"${recompute_parts[@]}"}; do
  quantity=$(info quantity --code "$run" "$part" "$profile")
  covered=$(info covered "$results/$profile/$part/metrics.json" "$quantity")
  if [ "$covered" -eq "$is_images" ]; then echo "queue: $part's $quantity already covers $covered test images"; continue; fi
  status=0
  HW2_DATA=$root/data nice -n 10 "$py" experiments.py eval "$part" --quantity "$quantity" --profile "$profile" \
    --is-images "$is_images" --keep --update --minutes "$minutes" --results-dir "$results" || status=$?
  if [ "$status" -eq 3 ]; then echo "queue: $part stopped at the time limit; rerun to resume"; exit 3; fi
  [ "$status" -eq 0 ] || { echo "queue: recomputing $part failed; the parts after it did not run"; exit 1; }
done
echo "queue: every part done"
