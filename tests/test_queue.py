"""tools/queue.sh: the course-settings queue runs its parts in order from a worktree at a fixed
commit, writes into the results directory it is given, and a rerun finds the finished parts done.
Every value it is given is checked before anything runs, and none is ever run as Python code."""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def need_git():
    if shutil.which('git') is None or not os.path.isdir(os.path.join(ROOT, '.git')) and not os.path.isfile(
            os.path.join(ROOT, '.git')):
        pytest.skip('not a git checkout')


def queue(tmp_path, **values):
    """tools/queue.sh with the worktree and results in tmp_path and the variables `values`; the
    worktree, if it made one, is removed again."""
    env = dict(os.environ, PROFILE='smoke', RESULTS=str(tmp_path / 'results'), RUN_TREE=str(tmp_path / 'run'),
               PY=sys.executable, HW2_DATA=os.environ.get('HW2_DATA', os.path.join(ROOT, 'data')))
    env.update(values)
    try:
        return subprocess.run(['bash', 'tools/queue.sh'], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
    finally:
        if (tmp_path / 'run').exists():
            subprocess.run(['git', 'worktree', 'remove', '--force', str(tmp_path / 'run')], cwd=ROOT,
                           capture_output=True)


@pytest.mark.parametrize('values, named', [
    (dict(QUEUE='', RECOMPUTE='6b', PROFILE='nonsense'), 'PROFILE'),
    (dict(QUEUE='', RECOMPUTE='6b', PROFILE='auto'), 'PROFILE'),  # results/<profile> needs a profile by name
    (dict(QUEUE='6a 7z'), "'7z'"),                                # refused before 6a runs
    (dict(QUEUE='*'), "'*'"),                                     # never expanded as a file name pattern
    (dict(QUEUE='', RECOMPUTE='6b 6x'), "'6x'"),
    (dict(QUEUE='', RECOMPUTE='6a'), '6a has no importance-sampled NLL'),
    (dict(QUEUE='', RECOMPUTE='6b', IS_IMAGES='abc'), 'IS_IMAGES'),
    (dict(QUEUE='', RECOMPUTE='6b', IS_IMAGES='0'), 'IS_IMAGES'),
    (dict(QUEUE='', RECOMPUTE='6b', IS_IMAGES='10001'), 'IS_IMAGES'),
    (dict(QUEUE='', RECOMPUTE='6b', MINUTES='-5'), 'MINUTES'),
    (dict(QUEUE='', RECOMPUTE='6b', MINUTES='soon'), 'MINUTES'),
])
def test_a_wrong_value_stops_the_queue_with_one_line_before_anything_runs(tmp_path, values, named):
    need_git()
    run = queue(tmp_path, **values)
    assert run.returncode == 2, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('queue: ') and named in lines[0], run.stderr
    assert 'Traceback' not in run.stdout + run.stderr
    assert not (tmp_path / 'run').exists() and not (tmp_path / 'results').exists()  # no worktree, no run


def test_a_part_name_is_never_run_as_python(tmp_path):
    need_git()
    canary = tmp_path / 'canary'
    opens = f"'+str(open({str(canary)!r},'w'))[:0]+'"  # pasted between quotes, Python that creates the canary
    for values in (dict(QUEUE='', RECOMPUTE='6b' + opens), dict(QUEUE='6b' + opens),
                   dict(QUEUE='', RECOMPUTE='6b', PROFILE='smoke' + opens)):
        run = queue(tmp_path, **values)
        assert not canary.exists(), (values, run.stdout + run.stderr)
        assert run.returncode == 2 and run.stderr.count('\n') == 1 and 'Traceback' not in run.stderr, run.stderr


def test_the_queue_runs_from_its_own_worktree_and_resumes(tmp_path):
    need_git()
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
        more = subprocess.run(['bash', 'tools/queue.sh'], cwd=ROOT,
                              env=dict(env, QUEUE='', RECOMPUTE='6b', IS_IMAGES='12'), capture_output=True, text=True)
        assert more.returncode == 0 and 'every part done' in more.stdout, more.stdout + more.stderr
        m = json.loads((results / 'smoke' / '6b' / 'metrics.json').read_text())
        assert m['values']['test_nll_is16']['n_images'] == 12 and m['recomputed']['test_nll_is16']['is_images'] == 12
        assert not list((results / 'smoke' / '6b').glob('eval_partial_*'))
        once = subprocess.run(['bash', 'tools/queue.sh'], cwd=ROOT,
                              env=dict(env, QUEUE='', RECOMPUTE='6b', IS_IMAGES='12'), capture_output=True, text=True)
        assert once.returncode == 0 and "6b's test_nll_is16 already covers 12 test images" in once.stdout, once.stdout
        # a part that has not finished has nothing to recompute: one line, no traceback
        unfinished = subprocess.run(['bash', 'tools/queue.sh'], cwd=ROOT, env=dict(env, QUEUE='', RECOMPUTE='6c'),
                                    capture_output=True, text=True)
        assert unfinished.returncode == 2 and 'has not finished' in unfinished.stderr, unfinished.stderr
        assert 'Traceback' not in unfinished.stderr
    finally:
        subprocess.run(['git', 'worktree', 'remove', '--force', str(tree)], cwd=ROOT, capture_output=True)
