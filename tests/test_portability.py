"""The paths a GPU user meets, checked on the CPU: no float64 on the compute device (MPS has none),
a checkpoint moving between device types, `auto` resolving to the course's settings on CUDA in the
notebooks and in `all`, time-limited slices packed and moved between machines, and the captured
training step against eager."""
import json
import os
import shutil
import sys

import nbformat
import pytest
import torch
from torch.overrides import TorchFunctionMode

from engine import config as C
from engine import jobs, runs
from engine import evaluate as V
import experiments as E
from conftest import an_hour_per_step
from engine import transfer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
torch.set_num_threads(2)


class NoFloat64(TorchFunctionMode):
    """Fails on any torch call that brings float64 in (a float64 result from no float64 input),
    outside evaluate.to_host64: the one place where per-image values become float64, on the host."""

    def __init__(self):
        super().__init__()
        self.host = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [a for a in list(args) + list((kwargs or {}).values()) if isinstance(a, torch.Tensor)]
        if not self.host and not any(a.dtype == torch.float64 for a in inputs):
            for t in (out if isinstance(out, (tuple, list)) else (out,)):
                if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                    raise AssertionError(f'{getattr(func, "__name__", func)} made a float64 tensor on the compute path')
        return out


@pytest.mark.parametrize('part', ['5b', '6a', '6e-freebits'])
def test_no_float64_on_the_compute_path(tmp_path, monkeypatch, part):
    guard = NoFloat64()
    to_host64 = V.to_host64

    def on_host(values):
        guard.host += 1
        try:
            return to_host64(values)
        finally:
            guard.host -= 1

    monkeypatch.setattr(V, 'to_host64', on_host)
    monkeypatch.setattr(runs, 'to_host64', on_host)
    with guard:
        metrics = E.run_part(part, profile='smoke', device='cpu', results_dir=str(tmp_path), progress=False)
    assert metrics['epochs'] == 2


def test_checkpoint_from_another_device_type_resumes(tmp_path, capsys):
    """A CUDA generator state cannot be set on a CPU generator: the run resumes with the eps draws
    restarted from the seed and says so; everything else (weights, optimiser, data order) resumes."""
    E.run_part('6b', profile='smoke', device='cpu', results_dir=str(tmp_path), progress=False, epochs=1)
    out = tmp_path / 'smoke' / '6b'
    ck = torch.load(out / 'checkpoint.pt', weights_only=True)
    ck['rng']['noise'] = torch.zeros(16, dtype=torch.uint8)  # the size of a CUDA generator's state
    torch.save(ck, out / 'checkpoint.pt')
    two = E.run_part('6b', profile='smoke', device='cpu', results_dir=str(tmp_path), progress=False, epochs=2)
    assert two['epochs'] == 2 and two['steps'] == 4
    assert 'comes from another device' in (out / 'run.log').read_text()


def test_importance_sampling_from_another_device_type_restarts_with_a_note(tmp_path):
    """is_partial.pt carried from a machine of another device type (its generator state does not
    fit this one's): the rerun restarts the pass, notes it in run.log, and reports the numbers of
    an unbroken run."""
    settings = dict(profile='smoke', device='cpu', progress=False, epochs=1)
    unbroken = E.run_part('6b', results_dir=str(tmp_path / 'unbroken'), **settings)
    E.run_part('6b', results_dir=str(tmp_path), **settings)
    out = tmp_path / 'smoke' / '6b'
    os.remove(out / 'metrics.json')
    assert E.run_part('6b', results_dir=str(tmp_path), stop_at=0.0, **settings) is None
    partial = torch.load(out / 'is_partial.pt', weights_only=True)
    carried = {k: v for k, v in partial.items() if k != 'digest'}  # as an older file carried from a CUDA machine
    carried['key'] = dict(partial['key'], draws='0' * 64)  # a CUDA generator's first state: other draws
    torch.save(dict(carried, generator=torch.zeros(16, dtype=torch.uint8), device='cuda'), out / 'is_partial.pt')
    again = E.run_part('6b', results_dir=str(tmp_path), **settings)
    assert again['values'] == unbroken['values']
    assert 'saved on another device type' in (out / 'run.log').read_text()


def test_model_files_and_checkpoints_hold_cpu_tensors():
    """What a run saves from a GPU (weights, optimiser state) is copied to the CPU first; fake CUDA
    tensors stand in for a GPU's (they carry a device but no data)."""
    from engine import modelfiles as MF
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        weight = torch.empty(3, 2, device='cuda')
        state = dict(state={0: dict(step=torch.empty((), device='cuda'), exp_avg=torch.empty(3, device='cuda'))},
                     param_groups=[dict(lr=1e-3, params=[0])])

        class OnGPU(torch.nn.Module):
            def state_dict(self):
                return {'weight': weight}

        record = MF.model_record({'decoder': OnGPU()}, {'decoder': ('GaussianVAEDecoder', {})})
        saved = MF.on_cpu(state)
    assert weight.device.type == 'cuda'
    assert record['decoder']['state_dict']['weight'].device.type == 'cpu'
    assert [t.device.type for t in saved['state'][0].values()] == ['cpu', 'cpu']
    assert saved['param_groups'] == state['param_groups']


def test_a_number_trained_on_a_gpu_verifies_on_a_cpu(tmp_path, monkeypatch):
    """The reproduce command of a run trained on CUDA names no device, so that it runs (and agrees)
    on a machine without one."""
    E.run_part('6a', profile='smoke', device='cpu', results_dir=str(tmp_path), progress=False, epochs=1)
    path = tmp_path / 'smoke' / '6a' / 'metrics.json'
    on_gpu = dict(device='cuda', hardware='simulated GPU')
    path.write_text(json.dumps(dict(json.loads(path.read_text()), **on_gpu, sittings=[dict(on_gpu, seconds=1.0)])))
    E.write_summary(str(tmp_path), 'smoke')
    row = json.loads((tmp_path / 'smoke' / 'summary.json').read_text())[0]
    assert row['device'] == 'cuda' and '--device' not in row['reproduce']
    monkeypatch.delenv('HW2_DEVICE')                       # the device is picked: the CPU, CUDA being hidden
    checked = E.verify(str(tmp_path), parts=['6a'])
    assert checked and all(c['ok'] and c['error'] is None for c in checked)


@pytest.fixture
def simulated_cuda(monkeypatch):
    monkeypatch.delenv('HW2_DEVICE')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda *a: 'simulated GPU', raising=False)


@pytest.mark.parametrize('name', ['gaussian_vae.ipynb', 'pixelcnn.ipynb', 'binaryvae.ipynb'])
def test_notebooks_run_the_course_settings_on_cuda(simulated_cuda, monkeypatch, name):
    """Executing the committed notebook's cells as they are, on a machine with CUDA: every part
    it trains resolves to the full profile."""

    profiles = []
    record = lambda part, profile='auto', **kw: profiles.append(  # noqa: E731
        (part, C.pick_profile(profile, C.pick_device(kw.get('device')), quiet=True)))
    monkeypatch.setattr(E, 'run_part', record)
    monkeypatch.setattr(jobs, 'run_part', record)  # run_parts, which the Gaussian VAE notebook calls
    for fn in ('show', 'compare', 'show_finished', 'show_remedies'):
        monkeypatch.setattr(E, fn, lambda *a, **k: None)
    nb = nbformat.read(os.path.join(ROOT, name), as_version=4)
    namespace = {}
    for cell in nb.cells:
        if cell.cell_type == 'code':
            exec(cell.source, namespace)
    assert profiles and all(p == 'full' for _, p in profiles)


def test_all_runs_the_course_settings_on_cuda(simulated_cuda, monkeypatch):
    seen = []
    monkeypatch.setattr(jobs, 'estimate_all', lambda profile, parts, *a, **k: {p: dict(seconds=0.0, precision='fp32')
                                                                           for p in parts})
    monkeypatch.setattr(jobs, 'run_part', lambda part, profile, **kw: seen.append(profile) or {})
    monkeypatch.setattr(E, 'write_summary', lambda *a, **k: None)
    assert E.run_all(progress=False)
    assert seen == ['full'] * len(C.PARTS)


def test_time_limited_slices_moved_between_machines_equal_an_unbroken_run(tmp_path):
    """`all --minutes` slices of a 6c run (it switches autoregression on mid-way), each packed,
    moved to an empty results directory and unpacked there: the same numbers as one unbroken run."""
    unbroken = tmp_path / 'unbroken'
    assert E.run_all('smoke', ['6c'], 'cpu', results_dir=str(unbroken), progress=False)
    slices, here = 0, tmp_path / 'machine0'
    while not E.run_all('smoke', ['6c'], 'cpu', results_dir=str(here), progress=False, minutes=1e-6):
        slices += 1
        files = transfer.pack(str(tmp_path / f'pack{slices}'), 'smoke', results_dir=str(here))
        assert len(files) <= 8 and all(os.path.getsize(f) <= 16 * 2 ** 20 for f in files)
        shutil.rmtree(here)
        here = tmp_path / f'machine{slices}'
        transfer.unpack(str(tmp_path / f'pack{slices}'), str(here))
        assert slices < 10
    assert slices >= 2
    a, b = (json.loads((d / 'smoke' / '6c' / 'metrics.json').read_text()) for d in (unbroken, here))
    assert a['values'] == b['values'] and a['steps'] == b['steps']
    ha, hb = (json.loads((d / 'smoke' / '6c' / 'history.json').read_text()) for d in (unbroken, here))
    assert ha['loss'] == hb['loss'] and ha['autoregress_step'] == hb['autoregress_step']


def test_minutes_from_the_command_line_stops_cleanly(tmp_path, monkeypatch, capsys):
    """`experiments.py all --minutes 1`, parsed from its command line: the limit falls inside the
    part, which stops cleanly with a checkpoint and says how to resume. The run's clock is the
    test's: it stands still until the first training step ends, then jumps an hour, so the limit
    passes at that step on any machine, however loaded (no race against the wall clock)."""
    an_hour_per_step(monkeypatch)
    args = ['all', '--profile', 'smoke', '--parts', '6a', '--device', 'cpu', '--minutes', '1',
            '--results-dir', str(tmp_path), '--no-progress']
    monkeypatch.setattr(sys, 'argv', ['experiments.py', *args])
    E.main(args)  # an error would exit
    out = capsys.readouterr().out
    assert 'run the same command again to resume: experiments.py ' + ' '.join(args) in out
    checkpoint = torch.load(tmp_path / 'smoke' / '6a' / 'checkpoint.pt', weights_only=True)
    assert checkpoint['step'] == 1 and not os.path.exists(tmp_path / 'smoke' / '6a' / 'metrics.json')
    with pytest.raises(ValueError, match='manifest'):
        transfer.unpack(str(tmp_path / 'nothing-here'), str(tmp_path / 'elsewhere'))


def test_a_damaged_pack_is_refused(tmp_path):
    E.run_part('6a', profile='smoke', device='cpu', results_dir=str(tmp_path / 'a'), progress=False, epochs=1)
    files = transfer.pack(str(tmp_path / 'p'), 'smoke', results_dir=str(tmp_path / 'a'))
    with open(files[0], 'r+b') as fh:
        fh.seek(100)
        fh.write(b'\x00\x01\x02')
    with pytest.raises(ValueError, match='do not match their manifest'):
        transfer.unpack(str(tmp_path / 'p'), str(tmp_path / 'b'))
