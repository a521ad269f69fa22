"""tools/gpu_check.sh and tools/gpu_train.sh on the CPU. End to end with a stand-in for the GPU
(DEVICE=cpu, a fake nvidia-smi, smoke sizes; marked `script`): every step runs with exit status 0
and writes its files, and what comes back stays within what a lent machine returns (8 files of
16 MiB). In seconds, with a stand-in Python whose steps only sleep, on a PATH that has python3 and
no python, as on a bare GPU machine: each step's share of the budget, the arguments the steps get,
MNIST carried gzipped, and the packages each step lacks (tools/gpu_preflight.py)."""
import gzip
import hashlib
import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE_SMI = """#!/bin/sh
case "$*" in
  *dmon*) echo "# Time gpu sm mem enc dec"; while true; do echo "$(date +%H:%M:%S) 0 7 0 0 0"; sleep 1; done ;;
  *) echo "Stand-in GPU, 0.0, 1 MiB, 1 MHz" ;;
esac
"""
STEPS = {'smoke', 'cpu_checkpoint', 'resume_6b', 'eval_6c', 'estimate', 'bench', 'train_eager', 'train_graphs',
         'smoke_jobs', 'smoke_bf16', 'smoke_fp16'}  # smoke_fp16 on a GPU only: the engine refuses fp16 on a CPU


@pytest.mark.script
def test_gpu_check_runs_every_step_with_a_stand_in(tmp_path):
    bin_dir, out, work = tmp_path / 'bin', tmp_path / 'out', tmp_path / 'work'
    bin_dir.mkdir()
    smi = bin_dir / 'nvidia-smi'
    smi.write_text(FAKE_SMI)
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    env = {k: v for k, v in os.environ.items() if k != 'TORCH_LOGS'}  # torch refuses an empty one
    env.update(OUT=str(out), WORK=str(work), PY=sys.executable, DEVICE='cpu', CHECK_PROFILE='smoke',
               BENCH_PROFILE='smoke', SMOKE_PARTS='6c', EST_PARTS='6b', EVAL_RESULTS=str(work / 'results' / 'serial'),
               BUDGET='1200', TORCHDYNAMO_DISABLE='1', GRAPH_EPOCHS='2', BENCH_ARGS='--no-baseline --is-images 2',
               PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
    run = subprocess.run(['bash', 'tools/gpu_check.sh'], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=1500)
    assert run.returncode == 0, run.stderr[-3000:]
    steps = {line.split()[0]: line.split()[3] for line in (work / 'steps.txt').read_text().splitlines()}
    failed = {s: (work / f'{s}.log').read_text()[-1500:] for s, rc in steps.items() if rc != 'rc=0'}
    assert set(steps) == STEPS - {'smoke_fp16'} and not failed, (steps, failed)
    assert sorted(os.listdir(out)) == ['check.tar.gz', 'gpu.txt', 'preflight.txt', 'steps.txt', 'summary.txt']
    with tarfile.open(out / 'check.tar.gz') as tar:
        names = {os.path.normpath(n) for n in tar.getnames()}
    for path in ['bench.json', 'bench_flops.json', 'bench_bf16.json'] + [
            f'results/{d}/smoke/{p}/metrics.json' for d, p in (('serial', '6c'), ('jobs', '6c'), ('resume', '6b'),
                                                              ('eager', '6b'), ('graphs', '6b'))] + [
            f'{s}.log' for s in STEPS - {'smoke_fp16'}]:
        assert path in names, path
    assert not any(n.endswith(('model.pt', 'checkpoint.pt')) for n in names)
    summary = (out / 'summary.txt').read_text()
    assert 'Stand-in GPU' in summary and '--jobs 3: the same numbers as serial' in summary
    assert 'eager  epoch 1' in summary and 'graphs epoch 1' in summary and 'settings: training' in summary
    assert 'Traceback' not in summary


@pytest.mark.script
def test_gpu_train_brings_back_in_one_command_what_fits_and_lists_what_it_left(tmp_path):
    work = tmp_path / 'work'
    env = {k: v for k, v in os.environ.items() if k != 'TORCH_LOGS'}
    env.update(WORK=str(work), PY=sys.executable, DEVICE='cpu', PROFILE='smoke', PARTS='6a,6b', JOBS='2', MINUTES='5')
    run = subprocess.run(['bash', 'tools/gpu_train.sh'], cwd=ROOT, env=dict(env, OUT=str(tmp_path / 'all')),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    log = (tmp_path / 'all' / 'train.log').read_text()
    assert 'finished: yes' in log and 'brought back: light/' in log and 'brought back: models/' in log, log
    assert returned(tmp_path / 'all')
    from engine import transfer
    transfer.unpack([str(tmp_path / 'all' / 'light')], str(tmp_path / 'light'))
    light = tmp_path / 'light' / 'smoke'
    assert (light / '6b' / 'metrics.json').exists() and (light / '6b' / 'per_image.pt').exists()
    assert not (light / '6b' / 'model.pt').exists() and (light / '6a' / 'job.log').exists()
    transfer.unpack([str(tmp_path / 'all' / 'models')], str(tmp_path / 'models'))
    for part in ('6a', '6b'):
        assert (tmp_path / 'models' / 'smoke' / part / 'model.pt').read_bytes() == (
            work / 'results' / 'smoke' / part / 'model.pt').read_bytes()
    # the same run, with room in one command for the light files only: the models stay, each listed
    again = subprocess.run(['bash', 'tools/gpu_train.sh'], cwd=ROOT, env=dict(env, OUT=str(tmp_path / 'some'),
                           RETURN_FILES='3'), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    log = (tmp_path / 'some' / 'train.log').read_text()
    assert sorted(os.listdir(tmp_path / 'some')) == ['light', 'train.log'] and returned(tmp_path / 'some', files=3)
    for part in ('6a', '6b'):
        digest = hashlib.sha256((work / 'results' / 'smoke' / part / 'model.pt').read_bytes()).hexdigest()
        assert f'{part}/model.pt' in log and digest in log, log


def returned(out, files=8, piece=16 * 2 ** 20, total=64 * 2 ** 20):
    """Whether a command's $OUT is within what a lent machine returns: 8 files of at most 16 MiB, 64
    MiB together, none more than two folders down."""
    found = [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs]
    return (len(found) <= files and all(os.path.getsize(f) <= piece for f in found)
            and sum(map(os.path.getsize, found)) <= total
            and all(os.path.relpath(f, out).count(os.sep) <= 2 for f in found))


# ---------------------------------------------------------------------------------------------
# In seconds: a checkout without .venv, python3 only, a stand-in Python whose steps only sleep

FAKE_PY = """#!/bin/bash
# a stand-in python3: the preflight, the summary and the version are the real Python's; a step is
# written down, then sleeps FAKE_SLEEP seconds (the check kills it at its limit)
echo "$*" >> "$FAKE_LOG"
case "$1" in
  tools/gpu_preflight.py|tools/gpu_summary.py|-V) exec "$REAL_PY" "$@" ;;
  -c) case "$2" in *is_samples*) echo 16 ;; *load_file*) echo "1 0.5" ;; *) echo stand-in ;; esac; exit 0 ;;
esac
exec sleep "$FAKE_SLEEP"
"""
LINKED = ('experiments.py', 'models.py', 'losses.py', 'engine', 'reporting', 'tools')
STEP_COMMANDS = ('experiments.py all', 'experiments.py run', 'experiments.py eval', 'experiments.py estimate',
                 '-m tools.bench', 'experiments.py pack')


def bare_machine(tmp_path, data=None):
    """(checkout, env): a checkout of links to this one's code, without .venv and with `data` (default:
    this checkout's) as data/, and an environment whose PATH has the stand-in python3 and no python."""
    checkout, bin_dir = tmp_path / 'checkout', tmp_path / 'bin'
    checkout.mkdir()
    bin_dir.mkdir()
    for name in LINKED:
        os.symlink(os.path.join(ROOT, name), checkout / name)
    os.symlink(data or os.path.join(ROOT, 'data'), checkout / 'data')
    for name, text in (('python3', FAKE_PY), ('nvidia-smi', FAKE_SMI)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    path = [d for d in os.environ['PATH'].split(os.pathsep) if d and not os.path.exists(os.path.join(d, 'python'))]
    env = {k: v for k, v in os.environ.items() if k not in ('TORCH_LOGS', 'PY', 'HW2_DATA', 'VIRTUAL_ENV')}
    env.update(PATH=os.pathsep.join([str(bin_dir)] + path), REAL_PY=sys.executable, FAKE_LOG=str(tmp_path / 'calls'),
               FAKE_SLEEP='0', OUT=str(tmp_path / 'out'), WORK=str(tmp_path / 'work'))
    return checkout, env


def calls(tmp_path):
    path = tmp_path / 'calls'
    return path.read_text().splitlines() if path.exists() else []


def steps(tmp_path):
    """{step: its fields in steps.txt}."""
    return {line.split()[0]: line.split()[1:] for line in (tmp_path / 'work' / 'steps.txt').read_text().splitlines()}


def eval_results(tmp_path):
    """A stand-in of a CPU-trained 6c, so that the check plans its evaluation."""
    d = tmp_path / 'cpu' / 'smoke' / '6c'
    d.mkdir(parents=True)
    (d / 'model.pt').write_bytes(b'')
    (d / 'metrics.json').write_text(json.dumps({'config': {'is_samples': 16}}))
    return str(tmp_path / 'cpu')


def test_gpu_check_gives_every_step_its_share_of_the_budget_with_python3_alone(tmp_path):
    checkout, env = bare_machine(tmp_path)
    env.update(FAKE_SLEEP='1000', BUDGET='30', SPARE='1', MIN_STEP='1', CHECK_PROFILE='smoke',
               EVAL_RESULTS=eval_results(tmp_path))  # every step runs until it is killed at its limit
    plan = subprocess.run(['bash', 'tools/gpu_check.sh', 'plan'], cwd=checkout, env=env, capture_output=True,
                          text=True, timeout=60)
    assert plan.returncode == 0, plan.stderr
    shares = {line.split()[0]: int(line.split()[1]) for line in plan.stdout.splitlines() if line.split()[0] != 'total'}
    assert set(shares) == STEPS and sum(shares.values()) <= 30 - 1, shares
    run = subprocess.run(['bash', 'tools/gpu_check.sh'], cwd=checkout, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert calls(tmp_path)[0].startswith('tools/gpu_preflight.py data')  # python3, the only Python there
    ran = steps(tmp_path)
    assert set(ran) == STEPS, ran    # none skipped, in the budget that fits them all
    for name, (_, _, rc, limit, share) in ran.items():
        assert rc == 'rc=124' and int(limit[6:-1]) >= int(share[6:-1]) == shares[name], (name, ran[name])
    starts, ends = [int(f[0]) for f in ran.values()], [int(f[1]) for f in ran.values()]
    assert max(ends) - min(starts) <= 30 + 2 * len(ran)  # within the budget, but for the kills' own seconds
    summary = (tmp_path / 'out' / 'summary.txt').read_text()
    assert 'SKIPPED' not in summary and 'Traceback' not in summary, summary
    assert returned(tmp_path / 'out')


def test_gpu_check_trains_in_float32_wherever_it_compares_or_resumes(tmp_path):
    """On a GPU without bfloat16 tensor cores (a T4), `auto` would train in float16, in another run
    directory: the resume of the CPU checkpoint would start afresh and the comparisons read nothing."""
    checkout, env = bare_machine(tmp_path)
    env.update(CHECK_PROFILE='smoke', EVAL_RESULTS=eval_results(tmp_path))
    run = subprocess.run(['bash', 'tools/gpu_check.sh'], cwd=checkout, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    commands = [c for c in calls(tmp_path) if c.startswith(STEP_COMMANDS)]
    assert len(commands) == len(STEPS), commands
    trains = [c for c in commands if c.startswith(('experiments.py all', 'experiments.py run'))]
    resume = [c for c in trains if '--results-dir ' + str(tmp_path / 'work' / 'results' / 'resume') in c]
    assert len(resume) == 2 and any('--device cpu' in c for c in resume), resume   # made on the CPU, resumed
    for c in trains:
        precision = c.split('--precision ')[1].split()[0]
        assert precision == 'fp32' or ('--parts 6a,6c' in c and precision in ('bf16', 'fp16')), c


def test_gpu_check_and_gpu_train_stop_before_any_step_without_mnist(tmp_path):
    checkout, env = bare_machine(tmp_path, data=str(tmp_path / 'nothing'))
    for script, extra in (('tools/gpu_check.sh', {}), ('tools/gpu_train.sh', dict(OUT=str(tmp_path / 'train')))):
        run = subprocess.run(['bash', script], cwd=checkout, env=dict(env, **extra), capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 3, (script, run.stdout[-2000:], run.stderr[-2000:])
        assert 'carry data/MNIST/gz' in run.stdout + run.stderr, run.stdout + run.stderr
    assert not [c for c in calls(tmp_path) if c.startswith(STEP_COMMANDS)]
    assert 'carry data/MNIST/gz' in (tmp_path / 'out' / 'preflight.txt').read_text()


def test_mnist_travels_gzipped_and_is_unpacked_and_checked_there(tmp_path):
    raw = os.path.join(ROOT, 'data', 'MNIST', 'raw')
    names = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')
    if not all(os.path.exists(os.path.join(raw, n)) for n in names):
        pytest.skip('MNIST is not in data/MNIST/raw')
    gz = tmp_path / 'gz'
    tool = [sys.executable, os.path.join(ROOT, 'tools', 'gpu_preflight.py')]
    made = subprocess.run(tool + ['pack-data', '--root', os.path.join(ROOT, 'data'), '--gz', str(gz)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    assert sorted(os.listdir(gz)) == sorted(n + '.gz' for n in names)
    assert sum(os.path.getsize(gz / (n + '.gz')) for n in names) < 12 * 2 ** 20  # not the 53 MiB unpacked
    there = tmp_path / 'there'
    unpacked = subprocess.run(tool + ['data', '--root', str(there), '--gz', str(gz)], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
    assert unpacked.returncode == 0, unpacked.stderr
    for n in names:
        assert (there / 'MNIST' / 'raw' / n).read_bytes() == pathlib.Path(raw, n).read_bytes()
    # a damaged file is refused, and nothing half-written is left where engine/data.py looks
    with gzip.open(gz / 't10k-labels-idx1-ubyte.gz', 'wb') as fh:
        fh.write(b'not MNIST')
    shutil.rmtree(there)
    bad = subprocess.run(tool + ['data', '--root', str(there), '--gz', str(gz)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 3 and 'SHA-256' in bad.stderr, bad.stderr
    assert not (there / 'MNIST' / 'raw' / 't10k-labels-idx1-ubyte').exists()


def test_gpu_check_says_which_step_lacks_which_package(tmp_path):
    """A bare machine may lack torchvision, tqdm or matplotlib: each step that imports one when it
    starts is skipped, the preflight naming the package and where it is imported; the others run."""
    checkout, env = bare_machine(tmp_path)
    blocked = tmp_path / 'blocked'
    for package in ('torchvision', 'tqdm', 'matplotlib'):  # installed here, but not importable
        (blocked / package).mkdir(parents=True)
        (blocked / package / '__init__.py').write_text(f'raise ModuleNotFoundError("No module named {package!r}", '
                                                       f'name={package!r})\n')
    env.update(PYTHONPATH=str(blocked), CHECK_PROFILE='smoke', EVAL_RESULTS=eval_results(tmp_path))
    run = subprocess.run(['bash', 'tools/gpu_check.sh'], cwd=checkout, env=env, capture_output=True, text=True,
                         timeout=300)
    preflight = (tmp_path / 'out' / 'preflight.txt').read_text()
    ran = steps(tmp_path)
    skipped = {name: f[2] for name, f in ran.items() if f[0] == '-'}
    assert set(ran) == STEPS and run.returncode == (4 if skipped else 0), (ran, preflight)
    started = ' '.join(calls(tmp_path))
    for name, why in skipped.items():
        missing = why[len('skipped(missing:'):-1].split(',')
        assert set(missing) <= {'torchvision', 'tqdm', 'matplotlib'}, (name, why)
        assert f'step {name} ' in preflight and all(f'missing {p} (' in preflight for p in missing), preflight
    for line in preflight.splitlines():
        if line.startswith('missing '):
            assert 'imported at module level by ' in line and '.py:' in line, line
    assert ('bench' in skipped) == ('-m tools.bench' not in started)
    assert 'SKIPPED' in (tmp_path / 'out' / 'summary.txt').read_text() or not skipped


def test_the_preflight_follows_the_imports_a_step_makes_when_it_starts(tmp_path):
    """Through the repository's own modules, at module level only: an import inside a function, under
    TYPE_CHECKING or guarded by `except ImportError` does not stop a step."""
    (tmp_path / 'engine').mkdir()
    (tmp_path / 'tools').mkdir()
    (tmp_path / 'engine' / '__init__.py').write_text('import os\n')
    (tmp_path / 'engine' / 'a.py').write_text('import json\nfrom . import b\n')
    (tmp_path / 'engine' / 'b.py').write_text(
        'import sys\nimport nosuch_plotting.figure as f\n'
        'def late():\n    import nosuch_notebooks\n'
        'try:\n    import nosuch_speedup\nexcept ImportError:\n    nosuch_speedup = None\n'
        'if TYPE_CHECKING:\n    import nosuch_types\n')
    (tmp_path / 'experiments.py').write_text('"""entry"""\nimport argparse\n\nfrom engine import a\n')
    (tmp_path / 'tools' / '__init__.py').write_text('')
    (tmp_path / 'tools' / 'bench.py').write_text('import json\n')
    out = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'gpu_preflight.py'), 'packages',
                          'smoke=experiments.py', 'bench=tools/bench.py', '--blocked', 'blocked.txt'],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 4, out.stdout + out.stderr
    assert (tmp_path / 'blocked.txt').read_text() == 'smoke nosuch_plotting\n'
    assert 'missing nosuch_plotting (ModuleNotFoundError' in out.stdout
    assert 'experiments.py:4 > engine/a.py:2 > engine/b.py:2' in out.stdout, out.stdout
    assert not any(n in out.stdout for n in ('nosuch_notebooks', 'nosuch_speedup', 'nosuch_types'))


def test_gpu_train_names_its_precision_for_training_and_packing_alike(tmp_path):
    """PRECISION (default fp32) goes to `all` and to `pack`, so that packing reads the run directory
    the training wrote, on a T4 too, where `auto` would train into full-fp16."""
    checkout, env = bare_machine(tmp_path)
    for part in ('5b', '5c'):  # what the stand-in's training leaves: the parts' directories, finished
        (tmp_path / 'work' / 'results' / 'full' / part).mkdir(parents=True)
        (tmp_path / 'work' / 'results' / 'full' / part / 'metrics.json').write_text('{}')
    run = subprocess.run(['bash', 'tools/gpu_train.sh'], cwd=checkout, env=env, capture_output=True, text=True,
                         timeout=120)
    commands = [c for c in calls(tmp_path) if c.startswith(STEP_COMMANDS)]
    assert commands and commands[0].startswith('experiments.py all'), (commands, run.stdout, run.stderr)
    assert '--profile full' in commands[0] and '--parts 5b,5c' in commands[0]
    packs = [c for c in commands if c.startswith('experiments.py pack')]
    assert packs and all('--precision fp32' in c for c in commands), commands
    assert returned(tmp_path / 'out')
