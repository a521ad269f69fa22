#!/usr/bin/env bash
# The course-settings training queue on a CPU, resumable across sittings: from a fixed commit in a
# worktree of its own (so that edits in the checkout cannot change a run in flight), under nice,
# writing into the checkout's results/ and reading its data/. Rerun it to resume where it stopped.
#
#   bash tools/queue.sh                 # from the checkout's root; QUEUE="6d 6e-weak" to change the parts
#
# Each part resumes from its checkpoint, or is reported as done if it has finished. Importance
# sampling covers the first 1,000 test images (M = 1000), as for 6c, so that every course-settings
# comparison is paired over the same images. The worktree is made at the checkout's HEAD the first
# time; `git -C ../hw2-run checkout --detach <commit>` moves it to other code between sittings.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
run=${RUN_TREE:-$root/../hw2-run}
# 6d last: its checkpoint (31 MiB) is over the 16 MiB a committed file may have, so it cannot be
# carried from one sitting to the next through git; nor can a 6e checkpoint (33 MiB), but 6e trains
# 20 epochs to 6d's 60
parts=${QUEUE:-6b 6e-baseline 6e-freebits 6e-warmup 6e-weak 6d}
py=${PY:-$root/.venv/bin/python}
profile=${PROFILE:-full}          # the tests use the smoke profile
results=${RESULTS:-$root/results}
[ -d "$run" ] || git -C "$root" worktree add --detach "$run" HEAD
cd "$run"
echo "queue: $(git rev-parse --short HEAD) in $run, parts: $parts"
for part in $parts; do
  HW2_DATA=$root/data nice -n 10 "$py" experiments.py run "$part" --profile "$profile" --is-images 1000 \
    --results-dir "$results" --no-progress || { echo "queue: $part failed; the parts after it did not run"; exit 1; }
done
echo "queue: every part done"
