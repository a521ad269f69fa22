"""tools/gpu_check.sh on the CPU with a stand-in for the GPU (DEVICE=cpu, a fake nvidia-smi, smoke
sizes): every step runs with exit status 0 and writes its files, and what comes back stays within
what a lent machine returns (8 files)."""
import os
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
         'smoke_jobs', 'smoke_bf16', 'smoke_fp16'}  # fp16: run offers --precision fp16


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
               BUDGET='900', TORCHDYNAMO_DISABLE='1', GRAPH_EPOCHS='2', BENCH_ARGS='--no-baseline --is-images 2',
               BENCH_SECONDS='100', STEP_SCALE='4',
               PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
    run = subprocess.run(['bash', 'tools/gpu_check.sh'], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    steps = {line.split()[0]: line.split()[3] for line in (work / 'steps.txt').read_text().splitlines()}
    failed = {s: (work / f'{s}.log').read_text()[-1500:] for s, rc in steps.items() if rc != 'rc=0'}
    assert set(steps) == STEPS and not failed, (steps, failed)
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


@pytest.mark.script
def test_gpu_train_brings_back_light_files_then_model_packs_that_unpack_in_any_order(tmp_path):
    work, out = tmp_path / 'work', tmp_path / 'out'
    env = {k: v for k, v in os.environ.items() if k != 'TORCH_LOGS'}
    env.update(WORK=str(work), PY=sys.executable, DEVICE='cpu', PROFILE='smoke', PARTS='6a,6b', JOBS='2',
               MINUTES='5', PIECE_MIB='0.01')  # pieces of 10 KiB: the smoke models need several packs
    run = subprocess.run(['bash', 'tools/gpu_train.sh'], cwd=ROOT, env=dict(env, OUT=str(out / 'train')),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    log = (out / 'train' / 'train.log').read_text()
    assert 'finished: yes' in log
    packs = int(log.split('model packs: ')[1].split()[0])
    assert packs >= 2
    for k in range(1, packs + 1):  # one command each, as a lent machine returns at most 8 files
        fetch = subprocess.run(['bash', 'tools/gpu_train.sh', 'fetch', str(k)], cwd=ROOT,
                               env=dict(env, OUT=str(out / f'fetch{k}')), capture_output=True, text=True, timeout=60)
        assert fetch.returncode == 0, fetch.stderr
        assert len(os.listdir(out / f'fetch{k}' / f'models-{k}')) <= 5
    for d in [out / 'train'] + [out / f'fetch{k}' for k in range(1, packs + 1)]:
        assert sum(len(files) for _, _, files in os.walk(d)) <= 8
    from engine import transfer
    transfer.unpack([str(out / 'train' / 'light')], str(tmp_path / 'light'))
    light = tmp_path / 'light' / 'smoke'
    assert (light / '6b' / 'metrics.json').exists() and (light / '6b' / 'per_image.pt').exists()
    assert not (light / '6b' / 'model.pt').exists() and (light / '6a' / 'job.log').exists()
    transfer.unpack([str(out / f'fetch{k}' / f'models-{k}') for k in range(packs, 0, -1)], str(tmp_path / 'models'))
    for part in ('6a', '6b'):
        assert (tmp_path / 'models' / 'smoke' / part / 'model.pt').read_bytes() == (
            work / 'results' / 'smoke' / part / 'model.pt').read_bytes()
