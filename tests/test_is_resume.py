"""An importance-sampling pass resumed over several sittings (partial.PartialPass): the seconds of
every sitting count in its evaluation time, and a partial pass is taken up only by the very pass
that made it, never by one whose draws or weights differ, only if it holds what that pass could
have saved (its number of images, finite positive NLLs, the generator's state its draws leave, its
digest), and with the message about the device type where it was saved on another one."""
import importlib
import math
import os
import pathlib
import re

import pytest
import torch

from engine import evaluate as V
from engine import partial as P
from engine import reproduce as R
import experiments as E
import models

torch.set_num_threads(2)


class Clock:
    """A wall clock that moves only when told: each batch of importance sampling takes `per_batch`
    seconds on it (counted when the batch is saved), so the seconds each sitting spends are set by the
    test."""

    def __init__(self, now=1000.0):
        self.now, self.per_batch = now, 0.0

    def time(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    save = V.PartialPass.save

    def timed(partial, *args, **kwargs):
        if partial.path is not None:  # a pass's batch, not one computed again to check a file
            fake.now += fake.per_batch
        return save(partial, *args, **kwargs)
    monkeypatch.setattr(V.PartialPass, 'save', timed)
    for module in (P, E, R, *runs_module()):
        monkeypatch.setattr(module, 'time', fake)
    return fake


def runs_module():
    """[engine.runs], where run_part evaluates (its clock is the run's), or [] where it is not a module."""
    try:
        return [importlib.import_module('engine.runs')]
    except ImportError:
        return []


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
OTHER = 'holds importance sampling of another model, other test images or other settings'


def one_pass(f, g, x, samples, chunk, batch, seed, partial=None, eps=None):
    generator = None if eps is not None else torch.Generator().manual_seed(seed)
    return V.importance_sampled_nll(f, g, x, samples=samples, chunk=chunk, batch=batch, generator=generator,
                                    eps=eps, partial=partial)


def stopped_pass(path):
    """What a pass at BASE settings over 6 images saves, stopped at the time limit after its first batch."""
    f, g = tiny_vae()
    with pytest.raises(V.EvaluationStopped):
        one_pass(f, g, binary_images(6), **BASE, partial=V.PartialPass(path, stop_at=0.0))
    return torch.load(path, weights_only=True)


LEGACY = ('key', 'nll', 'seconds', 'generator')  # a file written before digests, as passes in progress wrote them


def legacy(saved):
    return {k: saved[k] for k in LEGACY}


def resealed(saved):
    """saved with the digest of what it holds now: a change the digest does not catch."""
    record = {k: v for k, v in saved.items() if k != 'digest'}
    return dict(record, digest=V.partial_digest(record))


@pytest.fixture
def saved_pass(tmp_path):
    """(path, its bytes): the first batch of a pass at BASE settings over 6 images, stopped at the time limit."""
    path = str(tmp_path / 'is_partial.pt')
    stopped_pass(path)
    return path, open(path, 'rb').read()


def test_the_same_pass_takes_its_partial_pass_up(saved_pass, capsys):
    """The control: the pass that made the file resumes from it, computing only the 4 images left."""
    path, _ = saved_pass
    f, g = tiny_vae()
    messages = []
    nll = one_pass(f, g, binary_images(6), **BASE, partial=V.PartialPass(path, log=messages.append))
    assert messages == [] and 'importance sampling resumes after 2 images' in capsys.readouterr().out
    assert torch.equal(nll, one_pass(f, g, binary_images(6), **BASE))


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
def test_a_pass_with_other_draws_or_weights_starts_afresh(saved_pass, change):
    """Each setting that changes the draws or the weights of the estimate (the resume key): a pass
    with it changed does not take the partial pass up, says why, and its numbers are those of an
    unbroken pass."""
    path, saved_bytes = saved_pass
    settings = dict(BASE, x=binary_images(6), vae=tiny_vae(), eps=None)
    settings.update(CHANGES[change]())
    f, g = settings.pop('vae')
    x = settings.pop('x')
    unbroken = one_pass(f, g, x, **settings)
    pathlib.Path(path).write_bytes(saved_bytes)
    messages = []
    nll = one_pass(f, g, x, **settings, partial=V.PartialPass(path, log=messages.append))
    assert torch.equal(nll, unbroken)
    assert len(messages) == 1 and OTHER in messages[0], messages


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
# What a file must hold to be taken up: its number of images, finite positive NLLs, the generator
# state its draws leave, its digest; a file written before digests is still taken up

def resume_once(path, saved, generator_seed=BASE['seed']):
    """(the NLLs of a BASE pass over 6 images given the file `saved` at path, and the messages)."""
    torch.save(saved, path)
    messages = []
    f, g = tiny_vae()
    nll = one_pass(f, g, binary_images(6), **dict(BASE, seed=generator_seed),
                   partial=V.PartialPass(path, log=messages.append))
    return nll, messages


def unbroken_pass():
    f, g = tiny_vae()
    return one_pass(f, g, binary_images(6), **BASE)


def draws_of(images, seed=BASE['seed']):
    """The state of a BASE pass's generator after the draws of its first `images` images."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(0, images, BASE['batch']):
        for _ in range(0, BASE['samples'], BASE['chunk']):
            V.latent_noise(gen, BASE['chunk'], BASE['batch'], torch.zeros(1, 49, dtype=torch.float64))
    return gen.get_state()


def test_a_new_file_records_its_device_type_and_a_digest_of_what_it_holds(tmp_path):
    saved = stopped_pass(str(tmp_path / 'is_partial.pt'))
    assert set(saved) == set(LEGACY) | {'device', 'digest'} and saved['device'] == 'cpu'
    assert saved['digest'] == V.partial_digest({k: v for k, v in saved.items() if k != 'digest'})
    assert torch.equal(saved['generator'], draws_of(2))


def test_a_file_of_the_same_pass_is_taken_up_written_before_digests_or_after(tmp_path, capsys):
    """A file as passes in progress write it today (key, nll, seconds, generator) is taken up, as is
    one with a digest; both end with the numbers of an unbroken pass, and neither recomputes its images."""
    path = str(tmp_path / 'is_partial.pt')
    saved = stopped_pass(path)
    unbroken = unbroken_pass()
    for file in (saved, legacy(saved)):
        capsys.readouterr()
        nll, messages = resume_once(path, file)
        assert messages == [] and 'importance sampling resumes after 2 images' in capsys.readouterr().out
        assert torch.equal(nll, unbroken)


def test_a_file_whose_nlls_were_changed_is_not_taken_up(tmp_path):
    """Its NLLs set to 1.0, finite and positive: the digest tells (issue 48: taken up, the pass ended
    at 136.30 instead of 542.22)."""
    path = str(tmp_path / 'is_partial.pt')
    saved = stopped_pass(path)
    saved['nll'] = torch.ones_like(saved['nll'])
    nll, messages = resume_once(path, saved)
    assert torch.equal(nll, unbroken_pass())
    assert len(messages) == 1 and 'is not taken up: its contents do not match its digest' in messages[0]
    assert 'starts from the first image' in messages[0]


def with_nll(values):
    return lambda saved: dict(saved, nll=values(saved['nll']))


TAMPERED = {  # (the change, the reason given)
    'not a whole number of batches': (with_nll(lambda v: torch.cat([v, v[:1]])),
                                      'its 3 images are not a whole number of batches of 2 images'),
    'more images than the pass': (with_nll(lambda v: torch.cat([v] * 4)), 'it holds 8 images, and this pass has 6'),
    'no images': (with_nll(lambda v: v[:0]), 'it holds 0 images'),
    'an infinite NLL': (with_nll(lambda v: torch.cat([v[:1], torch.tensor([math.inf], dtype=v.dtype)])),
                        'NLLs that are not finite and positive'),
    'a NaN': (with_nll(lambda v: torch.full_like(v, math.nan)), 'NLLs that are not finite and positive'),
    'a negative NLL': (with_nll(lambda v: -v), 'NLLs that are not finite and positive'),
    'a zero NLL': (with_nll(lambda v: v * 0), 'NLLs that are not finite and positive'),
    'NLLs as a matrix': (with_nll(lambda v: v[None]), 'not a vector of numbers'),
    'every NLL set to 1.0': (with_nll(torch.ones_like),
                             'the NLL it holds for image 1 of the pass, 1.000000, is not the'),
    'the last NLL changed': (with_nll(lambda v: torch.cat([v[:1], v[1:] + 1.0])),
                             'the NLL it holds for image 2 of the pass'),
    'another generator state': (lambda saved: dict(saved, generator=draws_of(2, seed=8)),
                                'its generator state is not where the draws of its 2 images leave the generator'),
    'the state of a batch further': (lambda saved: dict(saved, generator=draws_of(4)),
                                     'its generator state is not where the draws of its 2 images leave the generator'),
    'the state before any draw': (lambda saved: dict(saved, generator=draws_of(0)),
                                  'its generator state is not where the draws of its 2 images leave the generator'),
    'a generator state cut short': (lambda saved: dict(saved, generator=saved['generator'][:16]),
                                    "its generator state is not one that this pass's generator can take"),
    'negative seconds': (lambda saved: dict(saved, seconds=-1.0), 'its seconds (-1.0) are not a time spent'),
}


@pytest.mark.parametrize('written', ['before digests', 'with its digest remade'])
@pytest.mark.parametrize('change', list(TAMPERED))
def test_a_file_that_no_pass_could_have_saved_is_not_taken_up(tmp_path, change, written):
    """Issue 48: a file of 147 images (not a whole number of batches) ended at 542.219639, one of
    300 for a 200-image pass reported 'over 300 test images', one with another generator state
    ended at 542.219762. Each check holds without the digest: in files written before it, and where
    the digest was remade after the change."""
    path = str(tmp_path / 'is_partial.pt')
    tamper, reason = TAMPERED[change]
    saved = tamper(stopped_pass(path))
    saved = legacy(saved) if written == 'before digests' else resealed(saved)
    nll, messages = resume_once(path, saved)
    assert torch.equal(nll, unbroken_pass())
    assert len(messages) == 1 and 'is not taken up: ' in messages[0] and reason in messages[0], messages
    assert 'importance sampling starts from the first image' in messages[0]


MALFORMED = {
    'seconds as words': (lambda saved: dict(saved, seconds='ten'), "its seconds ('ten') are not a time spent"),
    'NLLs as a list': (lambda saved: dict(saved, nll=saved['nll'].tolist()), 'its NLLs are not a vector of numbers'),
    'no generator state': (lambda saved: {k: v for k, v in saved.items() if k != 'generator'},
                           "it could not be checked (KeyError: 'generator')"),
}


@pytest.mark.parametrize('change', list(MALFORMED))
def test_a_file_with_a_malformed_entry_is_not_taken_up(tmp_path, change):
    path = str(tmp_path / 'is_partial.pt')
    tamper, reason = MALFORMED[change]
    nll, messages = resume_once(path, tamper(legacy(stopped_pass(path))))
    assert torch.equal(nll, unbroken_pass())
    assert len(messages) == 1 and 'is not taken up: ' + reason in messages[0], messages


# ---------------------------------------------------------------------------------------------
# A file saved on another device type: the message says so

def cuda_like(saved, draws_seed=BASE['seed'], **key):
    """saved as a CUDA generator would have left it: a 16-byte state (seed, offset) and, in the key,
    the fingerprint of the CUDA generator's first state, which differs from the CPU one's."""
    first = torch.tensor([draws_seed, 0], dtype=torch.int64).view(torch.uint8)
    return dict(saved, generator=torch.tensor([draws_seed, 24], dtype=torch.int64).view(torch.uint8),
                key=dict(saved['key'], draws=V.fingerprint(first), **key))


MOVED = 'was saved on another device type{}, whose random draws cannot be continued on cpu'


@pytest.mark.parametrize('written', ['before digests', 'with a digest'])
def test_a_file_saved_on_another_device_type_says_so(tmp_path, written):
    """Issue 48: the key's draws, the fingerprint of the generator's first state, differ between
    device types, so such a file got the message of another model or settings."""
    path = str(tmp_path / 'is_partial.pt')
    saved = cuda_like(stopped_pass(path))
    saved = legacy(saved) if written == 'before digests' else resealed(dict(saved, device='cuda'))
    nll, messages = resume_once(path, saved)
    assert torch.equal(nll, unbroken_pass())
    device = ' (cuda)' if written == 'with a digest' else ''
    assert len(messages) == 1 and MOVED.format(device) in messages[0], messages
    assert 'the 2 images done there are computed again' in messages[0]


@pytest.mark.parametrize('other', ['model', 'x', 'batch'])
def test_a_file_of_another_pass_saved_on_another_device_type_is_another_pass(tmp_path, other):
    """Where more than the draws differ, the file is another pass's, wherever it was saved."""
    path = str(tmp_path / 'is_partial.pt')
    saved = resealed(dict(cuda_like(stopped_pass(path), **{other: 3}), device='cuda'))
    nll, messages = resume_once(path, saved)
    assert torch.equal(nll, unbroken_pass())
    assert len(messages) == 1 and OTHER in messages[0], messages


def test_a_file_of_the_same_device_type_with_other_draws_is_another_pass(tmp_path):
    """Another seed on the same device type: the key's draws differ, the message is the usual one."""
    path = str(tmp_path / 'is_partial.pt')
    saved = stopped_pass(path)
    nll, messages = resume_once(path, saved, generator_seed=8)
    f, g = tiny_vae()
    assert torch.equal(nll, one_pass(f, g, binary_images(6), **dict(BASE, seed=8)))
    assert len(messages) == 1 and OTHER in messages[0], messages


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_a_pass_stopped_on_cuda_resumed_on_the_cpu_and_the_reverse_says_so(tmp_path):
    """The real thing: each device type's pass ends with its own unbroken numbers, and says why it
    computes the other's images again; so does a CPU file written before digests, resumed on CUDA."""
    f, g = tiny_vae()
    x = binary_images(6)

    def on(device, partial=None):
        with V.float32_eval():
            return V.importance_sampled_nll(f.to(device), g.to(device), x.to(device), samples=6, chunk=3, batch=2,
                                            generator=torch.Generator(device).manual_seed(7), partial=partial)
    for saved_on, resumed_on in (('cuda', 'cpu'), ('cpu', 'cuda')):
        path = str(tmp_path / f'{saved_on}.pt')
        with pytest.raises(V.EvaluationStopped):
            on(saved_on, V.PartialPass(path, stop_at=0.0))
        saved = torch.load(path, weights_only=True)
        assert saved['device'] == saved_on
        files = [saved] + ([legacy(saved)] if saved_on == 'cpu' else [])
        for file in files:
            torch.save(file, path)
            messages = []
            assert torch.equal(on(resumed_on, V.PartialPass(path, log=messages.append)), on(resumed_on))
            assert len(messages) == 1 and f'was saved on another device type ({saved_on}), whose random draws ' \
                                          f'cannot be continued on {resumed_on}' in messages[0], messages


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
