"""An importance-sampling pass resumed over several sittings (evaluate.PartialPass): the seconds of
every sitting count in its evaluation time, and a partial pass is taken up only by the very pass
that made it, never by one whose draws or weights differ."""
import os
import re

import pytest
import torch

from engine import evaluate as V
from engine import reproduce as R
import experiments as E
import models

torch.set_num_threads(2)


class Clock:
    """A wall clock that moves only when told: each batch of importance sampling takes `per_batch`
    seconds on it, so the seconds each sitting spends are set by the test."""

    def __init__(self, now=1000.0):
        self.now, self.per_batch = now, 0.0

    def time(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    sample = V.importance_sample

    def timed(*args, **kwargs):
        fake.now += fake.per_batch
        return sample(*args, **kwargs)
    monkeypatch.setattr(V, 'importance_sample', timed)
    monkeypatch.setattr(V, 'time', fake)
    monkeypatch.setattr(E, 'time', fake)
    monkeypatch.setattr(R, 'time', fake)
    return fake


def tiny_vae(seed=0, autoregress=True):
    torch.manual_seed(seed)
    f = models.VAEEncoder(capacity=4, depth=1, flows=1, iaf_depth=1)
    g = models.DiscreteVAEDecoder(capacity=4, depth=1, autoregress=True, pixelcnn_capacity=4, pixelcnn_depth=1)
    g.autoregress = autoregress
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in list(f.parameters()) + list(g.parameters()):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return f.double().eval(), g.double().eval()


def binary_images(n, seed=0):
    return torch.bernoulli(torch.full((n, 1, 28, 28), 0.3, dtype=torch.float64),
                           generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# Seconds: every sitting counts

SITTINGS = (1.0, 10.0, 100.0)  # seconds of the first, second and third sitting


def test_three_sittings_keep_the_seconds_of_every_earlier_one(tmp_path, clock):
    """Six images in batches of two, one batch a sitting: the file holds 1, then 1 + 10, then
    1 + 10 + 100 seconds, and the last sitting starts from the 11 of the two before it."""
    f, g = tiny_vae()
    x, path = binary_images(6), str(tmp_path / 'is_partial.pt')
    total = 0.0
    for i, seconds in enumerate(SITTINGS):
        clock.per_batch = seconds
        partial = V.PartialPass(path, stop_at=clock.now)  # past the limit after its first batch
        last = i == len(SITTINGS) - 1
        try:
            V.importance_sampled_nll(f, g, x, samples=4, chunk=2, batch=2, partial=partial,
                                     generator=torch.Generator().manual_seed(7))
        except V.EvaluationStopped:
            assert not last
        else:
            assert last
        assert partial.earlier == total  # what experiments.py adds to this sitting's time
        total += seconds
        assert torch.load(path, weights_only=True)['seconds'] == total


def test_eval_seconds_of_a_run_evaluated_over_three_sittings_counts_all_three(tmp_path, clock):
    """run_part, its training done, stopped by the time limit after each batch of importance
    sampling (10 images in batches of 4): metrics.json's eval_seconds is the three sittings' sum."""
    settings = dict(profile='smoke', results_dir=str(tmp_path), progress=False, epochs=1, is_batch=4)
    E.run_part('6b', **settings)
    out = tmp_path / 'smoke' / '6b'
    os.remove(out / 'metrics.json')
    for seconds in SITTINGS[:2]:
        clock.per_batch = seconds
        assert E.run_part('6b', stop_at=0.0, **settings) is None
    clock.per_batch = SITTINGS[2]
    metrics = E.run_part('6b', stop_at=0.0, **settings)
    assert metrics['eval_seconds'] == sum(SITTINGS)


# ---------------------------------------------------------------------------------------------
# Which pass may take a partial pass up

BASE = dict(samples=6, chunk=3, batch=2, seed=7)
PLANTED = 1e6  # an NLL no pass computes: where it shows, the partial pass was taken up


def one_pass(f, g, x, samples, chunk, batch, seed, partial=None, eps=None):
    generator = None if eps is not None else torch.Generator().manual_seed(seed)
    return V.importance_sampled_nll(f, g, x, samples=samples, chunk=chunk, batch=batch, generator=generator,
                                    eps=eps, partial=partial)


@pytest.fixture
def planted(tmp_path):
    """(path, its bytes): the first batch of a pass at BASE settings, stopped at the time limit,
    with its saved NLLs replaced by PLANTED."""
    f, g = tiny_vae()
    path = str(tmp_path / 'is_partial.pt')
    with pytest.raises(V.EvaluationStopped):
        one_pass(f, g, binary_images(6), **BASE, partial=V.PartialPass(path, stop_at=0.0))
    saved = torch.load(path, weights_only=True)
    saved['nll'] = torch.full_like(saved['nll'], PLANTED)
    torch.save(saved, path)
    return path, open(path, 'rb').read()


def test_the_same_pass_takes_its_partial_pass_up(planted):
    """The control: the pass that made the file resumes from it (the planted NLLs come back)."""
    path, _ = planted
    f, g = tiny_vae()
    nll = one_pass(f, g, binary_images(6), **BASE, partial=V.PartialPass(path))
    assert torch.equal(nll[:2], torch.full((2,), PLANTED, dtype=nll.dtype))
    assert (nll[2:] < PLANTED).all()


def other_weights():
    f, g = tiny_vae()
    with torch.no_grad():
        next(g.parameters()).add_(0.01)
    return dict(vae=(f, g))


def given_eps(seed):
    """Draws for 6 images x 6 samples, given instead of a generator's."""
    return torch.randn(6, 6, 49, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


CHANGES = {
    'is_chunk': lambda: dict(chunk=2),
    'is_batch': lambda: dict(batch=3),
    'is_samples': lambda: dict(samples=8),
    'seed': lambda: dict(seed=8),
    'other test images': lambda: dict(x=binary_images(6, seed=1)),
    'fewer test images': lambda: dict(x=binary_images(4)),
    'other weights': other_weights,
    'PixelCNN switched off': lambda: dict(vae=tiny_vae(autoregress=False)),
    'given eps': lambda: dict(eps=given_eps(7)),
}


@pytest.mark.parametrize('change', list(CHANGES))
def test_a_pass_with_other_draws_or_weights_starts_afresh(planted, change):
    """Each setting that changes the draws or the weights of the estimate (the resume key): a pass
    with it changed does not take the partial pass up, and its numbers are those of an unbroken pass."""
    path, planted_bytes = planted
    settings = dict(BASE, x=binary_images(6), vae=tiny_vae(), eps=None)
    settings.update(CHANGES[change]())
    f, g = settings.pop('vae')
    x = settings.pop('x')
    unbroken = one_pass(f, g, x, **settings)
    open(path, 'wb').write(planted_bytes)
    nll = one_pass(f, g, x, **settings, partial=V.PartialPass(path))
    assert torch.equal(nll, unbroken)


def test_a_pass_given_other_eps_starts_afresh(tmp_path):
    """Draws given as eps are part of the key too: other eps, same shape, start afresh."""
    f, g = tiny_vae()
    x, path = binary_images(6), str(tmp_path / 'is_partial.pt')
    eps = [given_eps(1), given_eps(2)]
    with pytest.raises(V.EvaluationStopped):
        one_pass(f, g, x, **BASE, eps=eps[0], partial=V.PartialPass(path, stop_at=0.0))
    assert torch.equal(one_pass(f, g, x, **BASE, eps=eps[1], partial=V.PartialPass(path)),
                       one_pass(f, g, x, **BASE, eps=eps[1]))


# ---------------------------------------------------------------------------------------------
# `eval --minutes N`: an importance-sampled NLL recomputed over more images, across sittings

def test_eval_over_more_images_resumes_across_sittings_to_the_unbroken_number(tmp_path, clock):
    """A finished smoke 6b recomputed over 12 test images in batches of 4, one minute a batch on the
    clock: a 1.5-minute sitting stops after 8 images, an evaluation of other images leaves its file
    alone, and the next sitting ends with the unbroken pass's number, written into metrics.json."""
    E.run_part('6b', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=1, is_batch=4)
    out = tmp_path / 'smoke' / '6b'
    quantity = next(k for k in E.read_json(out / 'metrics.json')['values'] if k.startswith('test_nll_is'))
    ask = dict(part='6b', quantity=quantity, results_dir=str(tmp_path), device='cpu', profile='smoke', is_images=12)
    unbroken = R.eval_command(**ask)
    before = (out / 'metrics.json').read_bytes()
    partial = out / R.partial_name(quantity, 12)
    clock.per_batch = 60.0
    with pytest.raises(V.EvaluationStopped) as stopped:
        R.eval_command(**ask, keep=True, update=True, minutes=1.5)
    assert (stopped.value.done, stopped.value.total) == (8, 12) and partial.exists()
    assert (out / 'metrics.json').read_bytes() == before  # nothing is reported before the pass ends
    saved = partial.read_bytes()
    R.eval_command(**dict(ask, is_images=None))  # verify's evaluation, over the run's own images
    assert partial.read_bytes() == saved
    assert R.eval_command(**ask, keep=True, update=True, minutes=1.5) == unbroken
    assert not partial.exists()
    m = E.read_json(out / 'metrics.json')
    assert m['values'][quantity]['value'] == unbroken and m['values'][quantity]['n_images'] == 12
    assert m['recomputed'][quantity]['is_images'] == 12
    assert len(torch.load(out / 'per_image.pt', weights_only=True)[quantity]) == 12


def test_eval_stopped_at_its_time_limit_exits_with_status_3_and_says_how_to_resume(tmp_path, clock, capsys):
    E.run_part('6b', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=1, is_batch=4)
    clock.per_batch = 60.0
    with pytest.raises(SystemExit) as ended:
        E.main(['eval', '6b', '--quantity', 'test_nll_is16', '--profile', 'smoke', '--device', 'cpu',
                '--results-dir', str(tmp_path), '--is-images', '12', '--minutes', '0.5'])
    assert ended.value.code == E.EVAL_STOPPED == 3
    assert 'after 4 of 12 test images' in capsys.readouterr().out


@pytest.mark.parametrize('quantity,minutes,match', [
    ('kl', '5', r'--minutes applies to the importance-sampled NLL \(test_nll_is16\) only'),
    ('test_nll_is16', '0', '--minutes must be a positive number'),
    ('test_nll_is16', '-1', '--minutes must be a positive number'),
])
def test_eval_minutes_is_checked_before_any_work(tmp_path, quantity, minutes, match, capsys):
    E.run_part('6b', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=1)
    out = tmp_path / 'smoke' / '6b'
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(SystemExit) as ended:
        E.main(['eval', '6b', '--quantity', quantity, '--profile', 'smoke', '--device', 'cpu',
                '--results-dir', str(tmp_path), '--minutes', minutes])
    assert re.search(match, str(ended.value.code))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files  # nothing written, nothing lost
