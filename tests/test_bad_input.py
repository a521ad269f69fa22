"""Bad input to the models and the engine gets a clear error that names what is wrong and loses
nothing: wrong shapes, impossible sizes, empty batches, bad command lines, damaged result files."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from engine import config as C
from engine import runs
import experiments as E
import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('build,match', [
    (lambda: models.PixelCNN(capacity=0), 'capacity must be an integer >= 1'),
    (lambda: models.PixelCNN(depth=-1), 'depth must be an integer >= 0'),
    (lambda: models.VAEEncoder(flows=-2), 'flows must be an integer >= 0'),
    (lambda: models.VAEEncoder(flows=1.5), 'flows must be an integer'),
    (lambda: models.DiscreteVAEDecoder(depth=-3), 'depth must be an integer >= 0'),
    (lambda: models.IAF(0), 'filters must be an integer >= 1'),
    (lambda: models.ConvnetBlock(0), 'filters must be an integer >= 1'),
    (lambda: models.MaskedConvnetBlock(0), 'filters must be an integer >= 1'),
    (lambda: models.PixelCNN(layout='v2'), 'layout must be one of course, v1'),
])
def test_impossible_sizes_are_refused(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_the_smallest_sizes_are_accepted():
    """The bounds the messages state are the bounds: one filter and no residual blocks build."""
    x = torch.zeros(1, 1, 28, 28)
    for block in (models.ConvnetBlock(1), models.MaskedConvnetBlock(1)):
        assert block(torch.zeros(1, 1, 7, 7)).shape == (1, 1, 7, 7)
    assert models.PixelCNN(capacity=1, depth=0)(x).shape == x.shape
    assert models.DiscreteVAEDecoder(capacity=1, depth=0).latent_logits(torch.zeros(1, 49)).shape == x.shape


@pytest.mark.parametrize('shape', [(2, 3, 28, 28), (2, 1, 32, 32), (1, 28, 28), (2, 784)])
def test_wrong_image_shapes_are_refused_by_name(shape):
    """Images reach the networks as (B, 1, 28, 28); a colour channel, another size, a missing
    channel axis or a flattened batch is refused with the shape that came, before any convolution."""
    x = torch.zeros(shape)
    for net in (models.PixelCNN(capacity=2, depth=0).forward, models.VAEEncoder(capacity=2, depth=0).encode):
        with pytest.raises(ValueError, match=rf'^x must have shape \(B, 1, 28, 28\), got {re.escape(str(shape))}$'):
            net(x)


def test_wrong_latent_shapes_are_refused_not_reshaped():
    f = models.VAEEncoder(capacity=4, depth=1, flows=1)
    x = torch.rand(2, 1, 28, 28)
    for eps in (torch.zeros(49, 2), torch.zeros(1, 98), torch.zeros(3, 49)):
        with pytest.raises(ValueError, match='epsilon must have shape'):
            f(x, eps)
    h, mu, logvar = f.encode(x)
    with pytest.raises(ValueError, match='mu and logvar must both have shape'):
        f.reparameterize(h, mu[:, :48], logvar, torch.zeros(2, 49))
    with pytest.raises(ValueError, match=r'z must have shape \(B, 49\)'):
        f.flows[0](torch.zeros(2, 48), h)
    with pytest.raises(ValueError, match='offset must have shape'):
        models.PixelCNN(capacity=4, depth=1).sample(2, offset=torch.zeros(2, 28, 28))


def test_empty_batches_give_empty_results_and_bad_counts_are_refused():
    p = models.PixelCNN(capacity=4, depth=1)
    assert p.sample(0).shape == (0, 1, 28, 28)
    d = models.DiscreteVAEDecoder(capacity=4, depth=1, autoregress=True, pixelcnn_capacity=4, pixelcnn_depth=1)
    assert d.sample(torch.zeros(0, 49)).shape == (0, 1, 28, 28)
    d.autoregress = True
    assert d.sample(torch.zeros(0, 49)).shape == (0, 1, 28, 28)
    for n in (-1, 2.5, True):
        with pytest.raises(ValueError, match='n must be a non-negative integer'):
            p.sample(n)


def cli(*args):
    return subprocess.run([sys.executable, 'experiments.py', *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_command_lines_are_checked_before_any_work(tmp_path):
    for args, match in ((('all', '--parts', '', '--device', 'cpu'), '--parts must name one or more parts'),
                        (('estimate', '--parts', '6b,zz', '--device', 'cpu'), 'unknown part'),
                        (('run', '6a', '--epochs', '0', '--device', 'cpu', '--results-dir', str(tmp_path)),
                         'epochs must be an integer >= 1'),
                        (('all', '--minutes', '0', '--device', 'cpu', '--results-dir', str(tmp_path)),
                         'minutes must be a positive number')):
        run = cli(*args)
        assert run.returncode != 0 and match in run.stderr, (args, run.stderr[-500:])
        assert 'estimating' not in run.stdout and 'Traceback' not in run.stderr
    assert not any(os.scandir(tmp_path))  # nothing was written


def test_damaged_result_files_are_named_with_what_to_do(tmp_path):
    E.run_part('6a', profile='smoke', device='cpu', results_dir=str(tmp_path), progress=False, epochs=1)
    out = tmp_path / 'smoke' / '6a'
    metrics = (out / 'metrics.json').read_text()
    (out / 'metrics.json').write_text(metrics[:40])  # truncated
    with pytest.raises(ValueError, match=r'(?s)metrics\.json cannot be read.*git checkout'):
        E.run_part('6a', profile='smoke', device='cpu', results_dir=str(tmp_path), progress=False, epochs=1)
    (out / 'metrics.json').write_text(metrics)
    torch.save({'weights': torch.zeros(3)}, out / 'model.pt')  # well-formed, not a model file
    run = cli('eval', '6a', '--quantity', 'test_nll', '--profile', 'smoke', '--device', 'cpu', '--results-dir',
              str(tmp_path))
    assert run.returncode != 0 and 'is not a model file of this project' in run.stderr
    (out / 'model.pt').write_bytes(b'garbage')
    run = cli('eval', '6a', '--quantity', 'test_nll', '--profile', 'smoke', '--device', 'cpu', '--results-dir',
              str(tmp_path))
    assert run.returncode != 0 and 'model.pt is corrupt or unreadable' in run.stderr
    assert '--fresh' not in run.stderr.split('retrain')[0]  # eval has no --fresh: the advice is to restore or retrain
    assert json.loads((out / 'metrics.json').read_text())['part'] == '6a'


def test_runs_with_another_models_py_are_not_passed_off_as_its_results(tmp_path, monkeypatch):
    done = E.run_part('6a', profile='smoke', device='cpu', results_dir=str(tmp_path), progress=False, epochs=1)
    assert set(done['code']) == {'models.py', 'losses.py'}
    monkeypatch.setattr(runs, 'code_digest', lambda: dict(done['code'], **{'models.py': '0' * 64}))
    with pytest.raises(E.ResultsExistError, match=r'(?s)from another models\.py.*not this code.s results.*--fresh'):
        E.run_part('6a', profile='smoke', device='cpu', results_dir=str(tmp_path), progress=False, epochs=1)
    assert C.config('6a', 'smoke')['layout'] == 'course'


def test_the_command_line_never_trains_over_a_finished_run(tmp_path):
    """`run` with other settings than the finished run in that directory refuses and keeps it."""
    E.run_part('6a', profile='smoke', device='cpu', results_dir=str(tmp_path), progress=False, epochs=1)
    out = tmp_path / 'smoke' / '6a'
    os.remove(out / 'checkpoint.pt')  # as in a fresh clone: nothing to train on from
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    run = cli('run', '6a', '--profile', 'smoke', '--epochs', '2', '--device', 'cpu', '--results-dir', str(tmp_path))
    assert run.returncode != 0 and 'finished run with other settings (epochs: 1 there, 2 asked)' in run.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
