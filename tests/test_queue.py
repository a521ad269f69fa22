"""tools/queue.sh: the course-settings queue runs its parts in order from a worktree at a fixed
commit, writes into the results directory it is given, and a rerun finds the finished parts done."""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_queue_runs_from_its_own_worktree_and_resumes(tmp_path):
    if shutil.which('git') is None or not os.path.isdir(os.path.join(ROOT, '.git')) and not os.path.isfile(
            os.path.join(ROOT, '.git')):
        pytest.skip('not a git checkout')
    tree, results = tmp_path / 'run', tmp_path / 'results'
    env = dict(os.environ, QUEUE='6a 6b', PROFILE='smoke', RESULTS=str(results), RUN_TREE=str(tree),
               PY=sys.executable, HW2_DATA=os.environ.get('HW2_DATA', os.path.join(ROOT, 'data')))
    try:
        first = subprocess.run(['bash', 'tools/queue.sh'], cwd=ROOT, env=env, capture_output=True, text=True)
        assert first.returncode == 0, first.stdout + first.stderr
        assert (tree / 'experiments.py').exists()  # the parts ran from the worktree, not the checkout
        for part in ('6a', '6b'):
            assert (results / 'smoke' / part / 'metrics.json').exists()
        starts = [line.split(':')[0] for line in first.stdout.splitlines()]  # the parts' own lines begin '<part>:'
        assert starts.index('6a') < starts.index('6b')
        again = subprocess.run(['bash', 'tools/queue.sh'], cwd=ROOT, env=env, capture_output=True, text=True)
        assert again.returncode == 0 and again.stdout.count('already done') == 2, again.stdout + again.stderr
        # then 6b's importance-sampled NLL over more test images, written into its metrics
        more = subprocess.run(['bash', 'tools/queue.sh'], cwd=ROOT, env=dict(env, QUEUE='', RECOMPUTE='6b', IS_IMAGES='12'),
                              capture_output=True, text=True)
        assert more.returncode == 0 and 'every part done' in more.stdout, more.stdout + more.stderr
        m = json.loads((results / 'smoke' / '6b' / 'metrics.json').read_text())
        assert m['values']['test_nll_is16']['n_images'] == 12 and m['recomputed']['test_nll_is16']['is_images'] == 12
        assert not list((results / 'smoke' / '6b').glob('eval_partial_*'))
        once = subprocess.run(['bash', 'tools/queue.sh'], cwd=ROOT, env=dict(env, QUEUE='', RECOMPUTE='6b', IS_IMAGES='12'),
                              capture_output=True, text=True)
        assert once.returncode == 0 and "6b's test_nll_is16 already covers 12 test images" in once.stdout, once.stdout
    finally:
        subprocess.run(['git', 'worktree', 'remove', '--force', str(tree)], cwd=ROOT, capture_output=True)
