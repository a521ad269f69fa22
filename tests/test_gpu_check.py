"""tools/gpu_check.sh on the CPU with a stand-in for the GPU (DEVICE=cpu, a fake nvidia-smi, smoke
sizes): every step runs with exit status 0 and writes its files, and what comes back stays within
what a lent machine returns (8 files)."""
import os
import stat
import subprocess
import sys
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE_SMI = """#!/bin/sh
case "$*" in
  *dmon*) echo "# Time gpu sm mem enc dec"; while true; do echo "$(date +%H:%M:%S) 0 7 0 0 0"; sleep 1; done ;;
  *) echo "Stand-in GPU, 0.0, 1 MiB, 1 MHz" ;;
esac
"""
STEPS = {'smoke', 'cpu_checkpoint', 'resume_6b', 'eval_6c', 'estimate', 'bench', 'train_eager', 'train_graphs',
         'smoke_jobs', 'smoke_bf16'}


def test_gpu_check_runs_every_step_with_a_stand_in(tmp_path):
    bin_dir, out, work = tmp_path / 'bin', tmp_path / 'out', tmp_path / 'work'
    bin_dir.mkdir()
    smi = bin_dir / 'nvidia-smi'
    smi.write_text(FAKE_SMI)
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    env = {k: v for k, v in os.environ.items() if k != 'TORCH_LOGS'}  # torch refuses an empty one
    env.update(OUT=str(out), WORK=str(work), PY=sys.executable, DEVICE='cpu', CHECK_PROFILE='smoke',
               BENCH_PROFILE='smoke', SMOKE_PARTS='6c', EST_PARTS='6b', EVAL_RESULTS=str(work / 'results' / 'serial'),
               BUDGET='900', TORCHDYNAMO_DISABLE='1', GRAPH_EPOCHS='2', BENCH_ARGS='--no-baseline',
               PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
    run = subprocess.run(['bash', 'tools/gpu_check.sh'], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    steps = {line.split()[0]: line.split()[3] for line in (work / 'steps.txt').read_text().splitlines()}
    assert set(steps) == STEPS and all(rc == 'rc=0' for rc in steps.values()), steps
    assert sorted(os.listdir(out)) == ['check.tar.gz', 'gpu.txt', 'steps.txt', 'summary.txt']
    with tarfile.open(out / 'check.tar.gz') as tar:
        names = {os.path.normpath(n) for n in tar.getnames()}
    for path in ['bench.json', 'bench_flops.json', 'bench_bf16.json'] + [
            f'results/{d}/smoke/{p}/metrics.json' for d, p in (('serial', '6c'), ('jobs', '6c'), ('resume', '6b'),
                                                              ('eager', '6b'), ('graphs', '6b'))] + [
            f'{s}.log' for s in STEPS]:
        assert path in names, path
    assert not any(n.endswith(('model.pt', 'checkpoint.pt')) for n in names)
    summary = (out / 'summary.txt').read_text()
    assert 'Stand-in GPU' in summary and '--jobs 3: the same numbers as serial' in summary
    assert 'eager  epoch 1' in summary and 'graphs epoch 1' in summary and 'settings: training' in summary
    assert 'Traceback' not in summary
