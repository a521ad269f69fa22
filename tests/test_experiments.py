"""The orchestration: a finished run is never trained over, string parameters, the run lock, and
the whole homework end to end at the smoke profile with its reproduce commands (the estimators,
the objective and the training loop: test_engine.py)."""
import json
import math
import os
import pathlib
import shlex
import subprocess
import sys

import pytest
import torch

from engine import config as C
from engine import files, runs
import experiments as E
from reporting.summary import summary_rows

torch.set_num_threads(2)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------
# Finished runs, parameters and locks (smoke profile, in process)

def test_finished_run_with_other_settings_is_never_trained_over(tmp_path):
    done = E.run_part('6b', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=1)
    files = {p: p.read_bytes() for p in (tmp_path / 'smoke' / '6b').iterdir() if p.is_file()}
    for overrides in (dict(dec_depth=2), dict(is_images=5, lr=0.01), dict(epochs=2, lr=0.01)):
        with pytest.raises(E.ResultsExistError, match=r'(?s)finished run with other settings.*--results-dir.*--fresh'):
            E.run_part('6b', profile='smoke', results_dir=str(tmp_path), progress=False, **{'epochs': 1, **overrides})
    # another number of importance-sampled images alone is no reason to train again: the run is done
    assert E.run_part('6b', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=1, is_images=5) == done
    assert {p: p.read_bytes() for p in files} == files  # every file of the finished run is kept as it was
    # the same part at another profile or precision goes to its own directory
    E.run_part('6b', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=1, precision='bf16')
    assert os.path.exists(tmp_path / 'smoke-bf16' / '6b' / 'metrics.json')
    assert E.run_part('6b', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=1) == done


def test_a_finished_run_asked_for_other_images_prints_a_command_that_recomputes_them(tmp_path, capsys):
    """The advice names the part, its profile, precision and results directory (not a literal PART),
    and the command it prints, with N filled in, recomputes the number over those images."""
    settings = dict(profile='smoke', results_dir=str(tmp_path), progress=False, epochs=1, precision='bf16')
    E.run_part('6b', **settings)
    capsys.readouterr()
    E.run_part('6b', **dict(settings, is_images=5))
    advice = capsys.readouterr().out
    command = advice[advice.index('python experiments.py eval'):].splitlines()[0]
    assert 'PART' not in command and command.startswith('python experiments.py eval 6b --quantity test_nll_is16 '
                                                        '--profile smoke --precision bf16 --results-dir ')
    E.main(shlex.split(command.replace(' N ', ' 5 '))[2:])
    metrics = json.loads((tmp_path / 'smoke-bf16' / '6b' / 'metrics.json').read_text())
    assert metrics['values']['test_nll_is16']['n_images'] == 5


def test_string_parameters_mean_what_they_say(tmp_path):
    """papermill's -p passes 'false' as a string: it must not mean True."""
    done = E.run_part('6a', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=1)
    again = E.run_part('6a', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=1, fresh='false')
    assert again == done  # not deleted and retrained
    assert C.part_for('false', '0', 'None') == '6b' and C.part_for('true', 0) == '6c'
    assert C.part_for(False, '8') == '6d' and C.part_for('1', 8, 'freebits') == '6e-freebits'
    for bad, match in ((dict(autoregress='maybe'), 'autoregress must be true or false'),
                       (dict(flows=2), 'flows must be one of 0, 8'), (dict(remedy='strong'), 'remedy must be')):
        with pytest.raises(ValueError, match=match):
            C.part_for(**bad)
    with pytest.raises(ValueError, match='fresh must be true or false'):
        E.run_part('6a', profile='smoke', results_dir=str(tmp_path), progress=False, fresh='yes please')
    for epochs in (0, -1):
        with pytest.raises(ValueError, match='epochs must be an integer >= 1'):
            C.config('6a', 'smoke', epochs=epochs)
    for n in (0, 'all', 2.5):
        with pytest.raises(ValueError, match='is_images must be an integer >= 1'):
            C.config('6b', 'smoke', is_images=n)
    assert C.config('6b', 'smoke', is_images='7')['is_images'] == 7


def test_second_run_of_the_same_part_refuses_while_the_first_lives(tmp_path):
    out = tmp_path / 'smoke' / '6a'
    out.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        (out / 'run.lock').write_text(str(sleeper.pid))
        with pytest.raises(E.RunLockedError, match=f'in use by process {sleeper.pid}'):
            E.run_part('6a', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=1)
    finally:
        sleeper.kill()
        sleeper.wait()
    dead = files._tmp_path(str(out / 'checkpoint.pt')).replace(f'.{os.getpid()}.', f'.{sleeper.pid}.')
    pathlib.Path(dead).write_bytes(b'half a checkpoint')  # left by the engine's writer, killed
    # a dead pid's lock is cleared
    E.run_part('6a', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=1)
    assert not os.path.exists(out / 'run.lock') and not os.path.exists(dead)


# ---------------------------------------------------------------------------------------------
# The whole homework, one command

def test_all_parts_end_to_end_and_reproduce_commands(tmp_path):
    results = tmp_path / 'results'
    run = subprocess.run([sys.executable, 'experiments.py', 'all', '--profile', 'smoke', '--results-dir', str(results),
                          '--no-progress'], cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stderr[-3000:]
    assert 'all remaining parts' in run.stdout
    for part in E.PARTS:
        with open(results / 'smoke' / part / 'metrics.json') as fh:
            m = json.load(fh)
        assert m['profile'] == 'smoke' and m['device'] == 'cpu' and m['epochs'] == 2
        for name in ('samples', 'loss') + (('reconstructions', 'kl') if part != '6a' else ()):
            with open(m['figures'][name], 'rb') as fh:
                assert fh.read(8) == b'\x89PNG\r\n\x1a\n'
        assert os.path.exists(results / 'smoke' / part / 'model.pt')
        assert all(math.isfinite(v['value']) for v in m['values'].values())
    assert '| 6e-freebits |' in (results / 'smoke' / 'summary.md').read_text()
    rows = json.loads((results / 'smoke' / 'summary.json').read_text())
    assert {r['part'] for r in rows} == set(E.PARTS)
    keys = {'part', 'quantity', 'value', 'stderr', 'n_images', 'profile', 'device', 'epochs', 'train_seconds',
            'precision', 'model', 'reproduce'}
    assert all(keys <= set(r) for r in rows)
    quantities = {(r['part'], r['quantity']) for r in rows}
    assert {('5b', 'test_elbo'), ('5c', 'test_elbo_mc'), ('6a', 'test_nll'), ('6b', 'test_nll_is16'),
            ('6c', 'kl'), ('6e-weak', 'active_units')} <= quantities
    for part, quantity in (('6c', 'test_nll_is16'), ('5c', 'test_elbo')):
        row = next(r for r in rows if (r['part'], r['quantity']) == (part, quantity))
        argv = shlex.split(row['reproduce'])
        assert argv[0] == 'python'
        out = subprocess.run([sys.executable] + argv[1:], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        assert float(out.stdout.strip().splitlines()[-1]) == row['value']
    # `verify` runs the commands the same way and catches a reported number that no run produced
    checked = E.verify(str(results), parts=['6a'])
    assert checked and all(c['ok'] and c['reproduced'] == c['reported'] for c in checked)
    rows[[r['part'] for r in rows].index('6a')]['value'] += 1.0
    (results / 'smoke' / 'summary.json').write_text(json.dumps(rows))
    assert not E.verify(str(results), parts=['6a'])[0]['ok']
    # an importance-sampled NLL recomputed over other test images, with its command in the summary
    common = ['--profile', 'smoke', '--device', 'cpu', '--results-dir', str(results)]
    out = subprocess.run([sys.executable, 'experiments.py', 'eval', '6c', '--quantity', 'test_nll_is16', '--is-images',
                          '6', '--keep', '--update'] + common, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    m = json.loads((results / 'smoke' / '6c' / 'metrics.json').read_text())
    assert m['values']['test_nll_is16']['n_images'] == 6 and m['recomputed']['test_nll_is16']['is_images'] == 6
    kept = torch.load(results / 'smoke' / '6c' / 'per_image.pt', weights_only=True)['test_nll_is16']
    assert len(kept) == 6 and abs(kept.mean().item() - m['values']['test_nll_is16']['value']) < 1e-4
    row = next(r for r in summary_rows([m], str(results)) if r['quantity'] == 'test_nll_is16')
    assert '--is-images 6' in row['reproduce']
    argv = shlex.split(row['reproduce'])
    again = subprocess.run([sys.executable] + argv[1:], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert float(again.stdout.strip().splitlines()[-1]) == row['value']




@pytest.fixture
def bf16_cpu(monkeypatch):
    """A CPU with bfloat16 units on which bf16 trains twice as fast, and smoke parts 6a and 6b with
    shown parity; returns the list of parts whose speed was measured."""
    measured = []
    monkeypatch.setattr(runs, 'bf16_units', lambda: ('amx_bf16',))
    monkeypatch.setattr(runs, 'precision_speeds', lambda part, profile, device: measured.append(part) or
                        dict(fp32=100.0, bf16=200.0))
    monkeypatch.setattr(runs, 'BF16_PARITY', ('6a', '6b'))
    monkeypatch.setattr(runs, 'AUTO_PROFILES', ('smoke',))
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: (9, 0))  # a GPU with bf16 tensor cores
    return measured


def test_auto_precision_is_bf16_only_with_parity_units_and_measured_speed(bf16_cpu, monkeypatch, tmp_path):
    def pick(part, device='cpu', profile='smoke'):
        return E.pick_precision('auto', part, profile, device, str(tmp_path))
    assert pick('6a') == ('bf16', 'bf16: the CPU has amx_bf16, 200 against 100 training images/s, measured in '
                                  'turns, and 6a has shown parity')
    assert pick('6c')[0] == 'fp32' and 'has not shown bf16 parity' in pick('6c')[1]
    assert pick('6a', profile='cpu') == ('fp32', 'float32 in the cpu profile')
    assert pick('6a', device='cuda') == ('fp32', 'float32 on cuda')
    assert bf16_cpu == ['6a']                                          # measured only where the rest allows bf16
    monkeypatch.setattr(runs, 'precision_speeds', lambda *a: dict(fp32=100.0, bf16=109.0))
    assert pick('6a')[0] == 'fp32' and 'not faster' in pick('6a')[1]  # under AUTO_SPEEDUP = 1.1
    monkeypatch.setattr(runs, 'precision_speeds', lambda *a: dict(fp32=100.0, bf16=111.0))
    assert pick('6a')[0] == 'bf16'
    monkeypatch.setattr(runs, 'bf16_units', lambda: ())
    assert pick('6a') == ('fp32', 'float32: this CPU reports no bfloat16 units')
    assert E.pick_precision('bf16', '6c', 'smoke', 'cuda') == ('bf16', 'as asked')  # a setting is taken as asked
    assert E.pick_precision('fp16', '6a', 'smoke', 'cpu') == ('fp16', 'as asked')
    with pytest.raises(ValueError, match="precision must be auto or one of fp32, bf16, fp16, got 'fp8'"):
        E.pick_precision('fp8', '6a', 'smoke', 'cpu')


@pytest.mark.parametrize('capability,precision', [((7, 5), 'fp16'), ((7, 0), 'fp16'), ((8, 0), 'fp32'),
                                                  ((9, 0), 'fp32')])
def test_auto_precision_is_fp16_on_a_gpu_without_bf16_tensor_cores(monkeypatch, tmp_path, capability, precision):
    """A T4 (7.5) or V100 (7.0) trains in float16 with loss scaling, into its own directory; an A100
    (8.0) or H100 (9.0) in float32; the CPU's rules are unchanged."""
    from reporting import reader
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: capability)
    chosen, why = E.pick_precision('auto', '6b', 'full', 'cuda', str(tmp_path))
    assert chosen == precision
    assert why == (f'fp16: CUDA compute capability {capability[0]}.{capability[1]} has no bfloat16 tensor cores'
                   if precision == 'fp16' else 'float32 on cuda')
    assert E.pick_precision('auto', '6b', 'full', 'cpu', str(tmp_path))[0] == 'fp32'
    assert C.run_dir('results', 'full', chosen) == ('results/full-fp16' if precision == 'fp16' else 'results/full')
    monkeypatch.setattr(reader, 'pick_device', lambda device=None: torch.device('cuda'))
    write = C.part_dir(str(tmp_path), '6b', 'full', precision)
    os.makedirs(write)
    (tmp_path / os.path.relpath(write, tmp_path) / 'metrics.json').write_text(json.dumps(dict(part='6b')))
    assert reader.part_metrics(str(tmp_path), 'auto', '6b', 'auto') == dict(part='6b')  # the notebooks find it


def test_auto_precision_resumes_the_run_it_finds_and_logs_its_choice(bf16_cpu, monkeypatch, tmp_path):
    results = str(tmp_path)
    m = E.run_part('6b', profile='smoke', device='cpu', results_dir=results, progress=False, epochs=1)
    assert m['precision'] == 'bf16' and m['config']['precision'] == 'bf16'
    out = tmp_path / 'smoke-bf16' / '6b'
    assert "6b: precision 'auto' -> bf16 (bf16: the CPU has amx_bf16" in (out / 'run.log').read_text()
    assert not (tmp_path / 'smoke' / '6b').exists()
    monkeypatch.setattr(runs, 'precision_speeds', lambda *a: dict(fp32=100.0, bf16=50.0))
    assert E.pick_precision('auto', '6b', 'smoke', 'cpu', results) == ('bf16', f'its run in {out}')
    assert E.run_part('6b', profile='smoke', device='cpu', results_dir=results, progress=False, epochs=1) == m
    assert E.pick_precision('auto', '6b', 'smoke', 'cpu', results, fresh=True)[0] == 'fp32'  # fresh: measured again
    E.run_part('6b', profile='smoke', device='cpu', results_dir=results, progress=False, epochs=1, precision='fp32')
    assert E.pick_precision('auto', '6b', 'smoke', 'cpu', results)[0] == 'fp32'  # in both: float32 first
    assert E.pick_precision('auto', '6b', 'smoke', 'cuda', results)[0] == 'fp32'


def test_all_trains_each_part_in_its_own_precision_and_summarises_both(bf16_cpu, tmp_path):
    assert E.run_all('smoke', ['6a', '5b'], 'cpu', results_dir=str(tmp_path), progress=False)
    for run, part, precision in (('smoke-bf16', '6a', 'bf16'), ('smoke', '5b', 'fp32')):
        assert json.loads((tmp_path / run / part / 'metrics.json').read_text())['precision'] == precision
        assert f'| {part} |' in (tmp_path / run / 'summary.md').read_text()
    assert not (tmp_path / 'smoke' / '6a').exists() and not (tmp_path / 'smoke-bf16' / '5b').exists()


def test_commands_start_without_torchvision_or_the_compiler():
    """The entry points import neither torchvision nor TorchDynamo when they start (seconds each, paid
    by every command): they are imported where a step uses them (MNIST without its cached sets,
    torch.compile)."""
    probe = ('import sys, experiments, report; '
             'print(sorted(m for m in ("torchvision", "torch._dynamo") if m in sys.modules))')
    run = subprocess.run([sys.executable, '-c', probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == '[]', run.stdout + run.stderr[-2000:]
