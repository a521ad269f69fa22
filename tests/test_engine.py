"""The engine's arithmetic through its public functions: the test ELBO against losses.py on the
same seeded draws; the importance-sampling estimator against a model with a closed-form likelihood,
against the course's plain loop and compiled against eager; active units; the training objective
under beta, KL warm-up and free bits; what a smoke run records about autoregression, KL warm-up and
the learning-rate drop; resuming and stopping on bad checkpoints or non-finite values; the
optimiser, the output bias and bfloat16 training."""
import json
import math
import os
import pathlib
import re
import time
import warnings

import pytest
import torch

from engine import config as C
from engine import evaluate as V
import experiments as E
import losses
import models
from engine import train as T
from engine import modelfiles as MF
from engine import objectives as O
from reference import DTYPE, LinearGaussianModel, broken_compile

torch.set_num_threads(2)

SEED = 11


def tiny_vae(flows=0, autoregress=False, seed=0, dtype=torch.float64):
    """A small binary VAE with random weights of a visible size, so that every path matters."""
    torch.manual_seed(seed)
    f = models.VAEEncoder(capacity=4, depth=1, flows=flows, iaf_depth=1)
    g = models.DiscreteVAEDecoder(capacity=4, depth=1, autoregress=autoregress, pixelcnn_capacity=4,
                                  pixelcnn_depth=1)
    g.autoregress = autoregress
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in list(f.parameters()) + list(g.parameters()):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return f.to(dtype).eval(), g.to(dtype).eval()


def binary_images(n, dtype=torch.float64, seed=0):
    return torch.bernoulli(torch.full((n, 1, 28, 28), 0.3, dtype=dtype), generator=torch.Generator().manual_seed(seed))


def seeded_eps(shape, seed=SEED):
    """The draws neg_elbo makes: torch.Generator().manual_seed(seed), then one randn of mu's shape."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def per_image_by_hand(loss, *tensors):
    """loss evaluated on each image on its own (a batch of one), its terms stacked: (n,) each."""
    rows = [loss(*(t[i:i + 1] for t in tensors)) for i in range(len(tensors[0]))]
    return [torch.stack(column) for column in zip(*rows, strict=True)]


def sample_stats(values):
    v = values.double()
    return v.mean().item(), (v.std() / math.sqrt(len(v))).item()


# ---------------------------------------------------------------------------------------------
# The test ELBO: losses.py per image at the seeded z ~ q(z|x)

@pytest.mark.parametrize('flows,autoregress', [(0, False), (0, True), (2, True)])
def test_binary_test_elbo_is_the_discrete_output_elbo_at_the_seeded_sample(flows, autoregress):
    f, g = tiny_vae(flows=flows, autoregress=autoregress)
    x = binary_images(6)
    keep = {}
    out = V.neg_elbo(dict(encoder=f, decoder=g), C.config('6b', 'smoke'), x, SEED, keep=keep)
    with torch.no_grad():
        h, mu, logvar = f.encode(x)
        eps = seeded_eps(mu.shape)
        if flows:
            z, logqzx = f.reparameterize(h, mu, logvar, eps)
        else:  # z = mu + sigma eps, -log q(z|x) - (49/2) log 2pi = sum_d (logvar_d + eps_d^2) / 2
            z, logqzx = mu + torch.exp(0.5 * logvar) * eps, 0.5 * (logvar + eps.pow(2)).sum(1)
        recon, kl = per_image_by_hand(losses.discrete_output_elbo, g(z, x), x, z, logqzx)
    assert set(keep) == {'test_elbo', 'test_recon', 'kl'}
    torch.testing.assert_close(keep['test_recon'], recon, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(keep['kl'], kl, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(keep['test_elbo'], recon + kl, rtol=1e-10, atol=1e-9)
    for key, values in (('test_elbo', recon + kl), ('test_recon', recon), ('kl', kl)):
        mean, stderr = sample_stats(values)
        assert out[key]['value'] == pytest.approx(mean, abs=2e-6)
        assert out[key]['stderr'] == pytest.approx(stderr, abs=2e-6)
        assert out[key]['n_images'] == 6


def test_gaussian_test_elbo_has_both_kl_estimators_on_the_same_sample():
    torch.manual_seed(0)
    f = models.VAEEncoder(capacity=4, depth=1).double().eval()
    g = models.GaussianVAEDecoder(capacity=4, depth=1).double().eval()
    with torch.no_grad():
        for p in list(f.parameters()) + list(g.parameters()):
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.2)
    cfg = C.config('5b', 'smoke', sigma=0.3)
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    keep = {}
    out = V.neg_elbo(dict(encoder=f, decoder=g), cfg, x, SEED, keep=keep)
    with torch.no_grad():
        _, mu, logvar = f.encode(x)
        z = mu + torch.exp(0.5 * logvar) * seeded_eps(mu.shape)
        recon, kl = per_image_by_hand(lambda *a: losses.gaussian_elbo(*a[:3], 0.3, *a[3:]), g(z), x, z, mu, logvar)
        recon_mc, kl_mc = per_image_by_hand(lambda *a: losses.mc_gaussian_elbo(*a[:3], 0.3, *a[3:]),
                                            g(z), x, z, mu, logvar)
    torch.testing.assert_close(recon_mc, recon)
    expected = dict(test_elbo=recon + kl, test_elbo_mc=recon + kl_mc, test_recon=recon, kl=kl, kl_mc=kl_mc)
    assert set(keep) == set(expected)
    for key, values in expected.items():
        torch.testing.assert_close(keep[key], values, rtol=1e-10, atol=1e-8)
        assert out[key]['value'] == pytest.approx(sample_stats(values)[0], abs=2e-6)
    assert not torch.allclose(kl, kl_mc)  # two estimators, not one twice


def test_pixelcnn_test_nll_is_the_cross_entropy_per_image():
    torch.manual_seed(0)
    p = models.PixelCNN(capacity=4, depth=1).double().eval()
    with torch.no_grad():
        for q in p.parameters():
            q.copy_(torch.randn(q.shape, generator=torch.Generator().manual_seed(q.numel())) * 0.2)
    x = binary_images(4)
    keep = {}
    out = V.neg_elbo(dict(pixelcnn=p), C.config('6a', 'smoke'), x, SEED, keep=keep)
    with torch.no_grad():
        nll, = per_image_by_hand(lambda *a: (losses.cross_entropy(*a),), p(x), x)
    assert set(out) == set(keep) == {'test_nll'}
    torch.testing.assert_close(keep['test_nll'], nll)
    assert out['test_nll']['value'] == pytest.approx(sample_stats(nll)[0], abs=2e-6)


def test_test_elbo_in_batches_draws_each_batch_from_the_one_generator():
    f, g = tiny_vae(flows=2)
    x = binary_images(5)
    keep = {}
    out = V.neg_elbo(dict(encoder=f, decoder=g), C.config('6b', 'smoke'), x, SEED, batch=2, keep=keep)
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        h, mu, logvar = f.encode(x)
        eps = torch.cat([torch.randn(len(mu[i:i + 2]), 49, generator=gen) for i in range(0, 5, 2)])
        z, logqzx = f.reparameterize(h, mu, logvar, eps)
        recon, kl = per_image_by_hand(losses.discrete_output_elbo, g(z, x), x, z, logqzx)
    torch.testing.assert_close(keep['test_elbo'], recon + kl, rtol=1e-10, atol=1e-9)
    assert out['test_elbo']['n_images'] == 5
    one = V.neg_elbo(dict(encoder=f, decoder=g), C.config('6b', 'smoke'), x[:1], SEED)
    assert math.isnan(one['test_elbo']['stderr']) and one['test_elbo']['n_images'] == 1


def test_per_image_runs_each_loss_on_one_image_at_a_time_under_vmap():
    """evaluate.per_image (torch.func.vmap): the same numbers as a loop over images; under vmap the
    value checks of losses.py are skipped (the values cannot steer Python), the shape checks kept."""
    gen = torch.Generator().manual_seed(4)
    x1, x2 = torch.randn(5, 1, 28, 28, generator=gen), torch.rand(5, 1, 28, 28, generator=gen)
    z, mu, logvar = (torch.randn(5, 49, generator=gen) for _ in range(3))
    logqzx = torch.randn(5, generator=gen)
    for loss, args in ((losses.discrete_output_elbo, (x1, x2, z, logqzx)),
                       (lambda a, b, c, d, e: losses.gaussian_elbo(a, b, c, 0.2, d, e), (x1, x2, z, mu, logvar)),
                       (lambda a, b, c, d, e: losses.mc_gaussian_elbo(a, b, c, torch.tensor(0.2), d, e),
                        (x1, x2, z, mu, logvar))):
        got = V.per_image(loss, *args)
        want = per_image_by_hand(loss, *args)
        for g, w in zip(got, want, strict=True):
            assert g.shape == (5,)
            torch.testing.assert_close(g, w)
    torch.testing.assert_close(V.per_image(losses.cross_entropy, x1, x2), per_image_by_hand(
        lambda a, b: (losses.cross_entropy(a, b),), x1, x2)[0])
    grads = torch.func.vmap(torch.func.grad(lambda a, b: losses.cross_entropy(a[None], b[None])))(x1, x2)
    torch.testing.assert_close(grads, torch.sigmoid(x1) - x2)
    with pytest.raises(ValueError, match='logqzx must have shape'):
        V.per_image(losses.discrete_output_elbo, x1, x2, z, logqzx[:, None].expand(5, 2))
    assert V.per_image(losses.cross_entropy, x1, x2 * 3).shape == (5,)  # values unchecked under vmap
    with pytest.raises(ValueError, match='data x2 must be binary or in'):
        losses.cross_entropy(x1, x2 * 3)  # outside vmap the values are checked


def test_loss_errors_name_the_offending_value():
    """What the engine passes on to a user who set sigma badly, or built a z of the wrong size."""
    gen = torch.Generator().manual_seed(5)
    x1, x2 = torch.rand(3, 1, 28, 28, generator=gen), torch.rand(3, 1, 28, 28, generator=gen)
    z, mu, logvar = (torch.randn(3, 49, generator=gen) for _ in range(3))
    for loss in (losses.gaussian_elbo, losses.mc_gaussian_elbo):
        with pytest.raises(ValueError, match=r'sigma must be finite and > 0 .*got -0\.5$'):
            loss(x1, x2, z, torch.tensor(-0.5), mu, logvar)
        with pytest.raises(TypeError, match='sigma must be a real number.*got str$'):
            loss(x1, x2, z, '0.1', mu, logvar)
        with pytest.raises(ValueError, match=r'mu and z must have the same shape'):
            loss(x1, x2, z[:, :48], 0.1, mu, logvar)  # z is checked even where the KL does not read it
    with pytest.raises(TypeError, match='x1 must be a torch.Tensor, got list'):
        losses.cross_entropy(x1.tolist(), x2)
    for bad in (1.5, -0.5):  # just outside [0, 1]
        with pytest.raises(ValueError, match='data x2 must be binary or in'):
            losses.cross_entropy(x1, torch.full_like(x2, bad))


def test_reported_numbers_are_rounded_means_with_standard_errors():
    values = torch.tensor([1.23456789, 2.5, 3.75])
    got = V.mean_stderr(values)
    assert got == dict(value=round(values.double().mean().item(), 6),
                       stderr=round((values.double().std() / math.sqrt(3)).item(), 6), n_images=3)
    two = V.mean_stderr(torch.tensor([1.0, 2.0]))
    assert two == dict(value=1.5, stderr=0.5, n_images=2)
    assert math.isnan(V.mean_stderr(torch.tensor([7.0]))['stderr'])  # one image: no standard error


def evaluate_setup(part, **overrides):
    settings = dict(test_images=6, is_images=3, is_samples=4, is_batch=2, is_chunk=2, au_samples=2, **overrides)
    cfg = C.config(part, 'smoke', **settings)
    torch.manual_seed(0)
    nets = T.build(C.model_spec(cfg), 'cpu')
    for net in nets.values():
        net.eval()
    return cfg, nets, batch_for(cfg, 8)


def test_evaluate_reports_each_quantity_of_a_binary_vae_on_its_images():
    cfg, nets, test_x = evaluate_setup('6d')
    keep = {}
    out = V.evaluate(nets, cfg, test_x, progress=False, keep=keep)
    assert set(out) == {'test_elbo', 'test_recon', 'kl', 'active_units', 'test_nll_is4'}
    assert {k: out[k]['n_images'] for k in out} == dict(test_elbo=6, test_recon=6, kl=6, active_units=6,
                                                        test_nll_is4=3)
    assert out['test_nll_is4']['M'] == 4 and keep['test_nll_is4'].shape == (3,)
    assert out['test_nll_is4']['value'] == round(keep['test_nll_is4'].double().mean().item(), 6)
    assert set(keep) == {'test_elbo', 'test_recon', 'kl', 'test_nll_is4', 'test_elbo_index', 'test_recon_index',
                         'kl_index', 'test_nll_is4_index'} and keep['kl'].shape == (6,)
    assert {v['subset'] for v in out.values()} == {f'uniform:{V.SUBSET_SEED}'}
    assert out == V.evaluate(nets, cfg, test_x, progress=False)  # seeded: the same numbers again
    # one quantity at a time: the same numbers, and only its group
    assert V.evaluate(nets, cfg, test_x, only='active_units', progress=False) == dict(active_units=out['active_units'])
    assert V.evaluate(nets, cfg, test_x, only='test_nll_is4', progress=False) == dict(test_nll_is4=out['test_nll_is4'])
    assert V.evaluate(nets, cfg, test_x, only='kl', progress=False) == {
        k: out[k] for k in ('test_elbo', 'test_recon', 'kl')}
    with pytest.raises(ValueError,
                       match="part has no quantity 'test_nll'; it has test_elbo, test_nll_is4, kl, active_units"):
        V.evaluate(nets, cfg, test_x, only='test_nll', progress=False)


def test_evaluate_draws_each_group_from_its_own_seeded_stream(monkeypatch):
    """The generator streams that make `eval` recompute the committed numbers: importance sampling
    from seed + 202, active units from seed + 303 (the test ELBO's seed + 101: the tests above)."""
    cfg, nets, test_x = evaluate_setup('6d')
    out = V.evaluate(nets, cfg, test_x, progress=False)
    gen = torch.Generator().manual_seed(cfg['seed'] + 202)
    nll = V.importance_sampled_nll(nets['encoder'], nets['decoder'], test_x[V.test_subset(len(test_x), 3)], 4, 2, 2,
                                   generator=gen)
    assert out['test_nll_is4'] == dict(V.mean_stderr(nll), M=4, subset=f'uniform:{V.SUBSET_SEED}')
    seeds = []
    monkeypatch.setattr(V, 'active_units', lambda f, x, samples, seed: seeds.append((len(x), samples, seed)) or
                        dict(value=0, stderr=None, n_images=len(x)))
    V.evaluate(nets, cfg, test_x, only='active_units', progress=False)
    assert seeds == [(6, cfg['au_samples'], cfg['seed'] + 303)]


def test_evaluate_reports_each_quantity_of_a_gaussian_vae_and_a_pixelcnn():
    cfg, nets, test_x = evaluate_setup('5c')
    out = V.evaluate(nets, cfg, test_x, progress=False)
    assert set(out) == {'test_elbo', 'test_elbo_mc', 'test_recon', 'kl', 'kl_mc', 'active_units'}
    for only in ('test_elbo', 'test_elbo_mc', 'test_recon', 'kl', 'kl_mc'):
        assert V.evaluate(nets, cfg, test_x, only=only, progress=False)[only] == out[only]
    cfg, nets, test_x = evaluate_setup('6a')
    out = V.evaluate(nets, cfg, test_x, progress=False)
    assert set(out) == {'test_nll'} and out['test_nll']['n_images'] == 6
    assert V.evaluate(nets, cfg, test_x, only='test_nll', progress=False) == out
    with pytest.raises(ValueError, match='part has no quantity .active_units.'):
        V.evaluate(nets, cfg, test_x, only='active_units', progress=False)


def test_a_compile_failure_names_what_failed_and_runs_it_eagerly(monkeypatch, capsys):
    monkeypatch.setattr(torch, 'compile', broken_compile)
    unnamed = V.Compiled(lambda t: t * 2)
    assert torch.equal(unnamed(torch.ones(2)), torch.full((2,), 2.0))
    said = capsys.readouterr().err
    assert 'torch.compile of function failed (RuntimeError: no C++ compiler); running it eagerly' in said
    assert torch.equal(unnamed(torch.ones(2)), torch.full((2,), 2.0)) and capsys.readouterr().err == ''  # said once
    off = V.Compiled(lambda t: t + 1, enabled=False)
    assert torch.equal(off(torch.ones(1)), torch.full((1,), 2.0)) and capsys.readouterr().err == ''


# ---------------------------------------------------------------------------------------------
# Importance sampling

def test_importance_sampling_on_a_linear_gaussian_model():
    """z ~ N(0, I_2), x | z ~ N(Az + b, s^2 I_3): log p(x) is known exactly. With an imperfect
    Gaussian q, the estimator V.importance_sample lies below log p(x) on average (handout, Problem
    2), equals the ELBO log p(x) - KL(q || p(z|x)) at M = 1, and the gap shrinks as M grows."""
    g = torch.Generator().manual_seed(0)
    model = LinearGaussianModel(g)
    z, noise = torch.randn(2, generator=g, dtype=DTYPE), torch.randn(3, generator=g, dtype=DTYPE)
    x = model.b + model.A @ z + model.s * noise
    log_px = model.log_marginal(x).item()
    post = model.posterior(x)
    q = torch.distributions.MultivariateNormal(post.loc + 0.4, torch.diag(post.covariance_matrix.diagonal() * 1.5))
    kl = torch.distributions.kl_divergence(q, post).item()
    repeats = 4000

    def draw(m, start):  # (m, repeats, 2): independent estimates side by side
        return q.sample((m, repeats))

    def log_weight(z):  # log p(x | z) + log r(z) - log q(z | x)
        return model.log_joint(x, z) - q.log_prob(z)

    torch.manual_seed(0)
    gaps = {}
    for M in (1, 10, 100):
        est = V.importance_sample(draw, log_weight, M, chunk=7)  # (repeats,)
        se = (est.std() / math.sqrt(repeats)).item()
        gaps[M] = log_px - est.mean().item()
        assert gaps[M] > -3 * se
        if M == 1:
            assert gaps[1] == pytest.approx(kl, abs=4 * se)
            assert gaps[1] > 10 * se  # a clear gap to shrink
    assert gaps[1] > gaps[10] > gaps[100]
    assert gaps[100] < 0.2 * gaps[1]


def test_importance_sampling_stopped_and_resumed_equals_an_unbroken_pass(tmp_path, capsys):
    """A pass stopped at a time limit after each batch, then resumed from its file in a new call
    with a fresh generator of the same seed, ends with exactly the NLLs of an unbroken pass."""
    f, g = tiny_vae(autoregress=True)
    x = binary_images(5)

    def nll(partial=None):
        return V.importance_sampled_nll(f, g, x, samples=6, chunk=4, batch=2, partial=partial,
                                        generator=torch.Generator().manual_seed(7))

    unbroken, path = nll(), str(tmp_path / 'is_partial.pt')
    for done in (2, 4):  # one batch of 2 images a sitting, past the time limit
        with pytest.raises(V.EvaluationStopped, match=f'after {done} of 5 test images; .*rerun the same command'):
            nll(V.PartialPass(path, stop_at=0.0))
        saved = torch.load(path, weights_only=True)
        assert torch.equal(saved['nll'], unbroken[:done]) and saved['seconds'] > 0
    resumed = V.PartialPass(path, stop_at=0.0)  # the last batch: done, so no stop
    assert torch.equal(nll(resumed), unbroken) and resumed.earlier == saved['seconds']
    assert 'resumes after 4 images' in capsys.readouterr().out
    resumed.remove()
    assert not os.path.exists(path)
    assert torch.equal(nll(V.PartialPass(None, stop_at=0.0)), unbroken)  # no file: nothing saved, never stopped


def test_a_partial_pass_of_another_model_or_a_damaged_one_is_not_used(tmp_path, capsys):
    f, g = tiny_vae(autoregress=True)
    x = binary_images(4)
    path = str(tmp_path / 'is_partial.pt')

    def nll(samples=6, images=x, partial=None):
        return V.importance_sampled_nll(f, g, images, samples=samples, chunk=4, batch=2, partial=partial,
                                        generator=torch.Generator().manual_seed(7))

    with pytest.raises(V.EvaluationStopped):
        nll(partial=V.PartialPass(path, stop_at=0.0))
    with torch.no_grad():
        next(g.parameters()).add_(0.01)  # the model changed since
    for changed in (dict(), dict(samples=8), dict(images=binary_images(4, seed=1))):
        assert torch.equal(nll(partial=V.PartialPass(path), **changed), nll(**changed))
        assert 'holds importance sampling of another model, other test images or other settings' in \
            capsys.readouterr().err
    pathlib.Path(path).write_bytes(b'half a file')
    assert torch.equal(nll(partial=V.PartialPass(path)), nll())
    assert 'cannot be read' in capsys.readouterr().err


def test_a_partial_pass_from_another_device_type_restarts_its_draws(tmp_path):
    """A pass saved with a generator state of another device type (16 bytes: a CUDA generator's)
    cannot continue its draws: it restarts from the first image, says so, and ends with the NLLs
    of an unbroken pass on this device."""
    f, g = tiny_vae()
    x = binary_images(4)
    path = str(tmp_path / 'is_partial.pt')

    def nll(partial=None):
        return V.importance_sampled_nll(f, g, x, samples=6, chunk=4, batch=2, partial=partial,
                                        generator=torch.Generator().manual_seed(7))

    with pytest.raises(V.EvaluationStopped):
        nll(V.PartialPass(path, stop_at=0.0))
    saved = torch.load(path, weights_only=True)
    carried = {k: v for k, v in saved.items() if k != 'digest'}  # an older file, carried from a CUDA machine
    carried['key'] = dict(saved['key'], draws='0' * 64)  # whose generator drew other numbers
    torch.save(dict(carried, generator=torch.zeros(16, dtype=torch.uint8), device='cuda'), path)
    notes = []
    partial = V.PartialPass(path, log=notes.append)
    assert torch.equal(nll(partial), nll()) and partial.earlier == 0.0
    assert len(notes) == 1 and 'saved on another device type' in notes[0] and 'restarts its draws' in notes[0]


@pytest.mark.parametrize('flows,autoregress', [(0, False), (0, True), (2, True)])
def test_fast_importance_sampling_equals_the_course_loop(flows, autoregress):
    f, g = tiny_vae(flows=flows, autoregress=autoregress)
    gen = torch.Generator().manual_seed(3)
    x = torch.bernoulli(torch.full((5, 1, 28, 28), 0.3, dtype=torch.float64), generator=gen)
    eps = torch.randn(5, 12, 49, generator=gen, dtype=torch.float64)  # (N, M, 49), the same draws for both
    fast = V.importance_sampled_nll(f, g, x, samples=12, chunk=5, batch=2, eps=eps)
    naive = V.importance_sample_naive(f, g, x, eps, chunk=4)
    assert fast.shape == (5,)
    torch.testing.assert_close(fast, naive, rtol=0, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# Compiled importance sampling

def test_compiled_importance_sampling_equals_eager_and_follows_weight_updates(capsys):
    """compile=True (torch.compile with freezing) computes the same estimate as eager on the same
    draws, also after the weights change in place (no stale frozen copy), and really compiles
    (no fallback to eager)."""
    f, g = tiny_vae(flows=2, autoregress=True, dtype=torch.float32)
    x = torch.bernoulli(torch.full((4, 1, 28, 28), 0.3), generator=torch.Generator().manual_seed(0))
    eps = torch.randn(4, 12, 49, generator=torch.Generator().manual_seed(1))
    for scale in (1.0, 1.3):
        with torch.no_grad():
            for p in list(f.parameters()) + list(g.parameters()):
                p.mul_(scale)
        fast = V.importance_sampled_nll(f, g, x, samples=12, chunk=6, batch=2, eps=eps, compile=True)
        eager = V.importance_sampled_nll(f, g, x, samples=12, chunk=6, batch=2, eps=eps)
        torch.testing.assert_close(fast, eager, rtol=1e-5, atol=1e-4)
    assert 'failed' not in capsys.readouterr().err


def test_compile_failure_falls_back_to_eager_with_a_message(monkeypatch, capsys):
    monkeypatch.setattr(torch, 'compile', broken_compile)
    f, g = tiny_vae(dtype=torch.float32)
    x = torch.bernoulli(torch.full((2, 1, 28, 28), 0.3), generator=torch.Generator().manual_seed(0))
    eps = torch.randn(2, 8, 49, generator=torch.Generator().manual_seed(1))
    fast = V.importance_sampled_nll(f, g, x, samples=8, chunk=4, batch=2, eps=eps, compile=True)
    assert torch.equal(fast, V.importance_sampled_nll(f, g, x, samples=8, chunk=4, batch=2, eps=eps))
    assert 'no C++ compiler' in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Active units

class FixedEncoder(torch.nn.Module):
    """An encoder of (B, 49) inputs in {0, 1} whose mean mu_d(x) = scale (x_d - 1/2) in the
    dimensions of `active` (variance scale^2 / 4 across images with p = 1/2) and still (x_d - 1/2)
    in the others (variance 0.0025 at still = 0.1, under the 0.01 threshold); logvar = log var_q.
    With flows (identity steps) the engine estimates E_q[z | x] from samples."""

    def __init__(self, active, flows=0, var_q=1.0, scale=1.0, still=0.1, layout='course'):
        super().__init__()  # layout: it stands in for this project's encoder, whose encode the engine calls
        self.active = torch.zeros(49, dtype=torch.bool)
        self.active[list(active)] = True
        self.flows = torch.nn.ModuleList([torch.nn.Identity() for _ in range(flows)])
        self.var_q, self.scale, self.still = var_q, scale, still

    def encode(self, x):
        mu = torch.where(self.active, self.scale * (x - 0.5), self.still * (x - 0.5))
        return None, mu, torch.full_like(mu, math.log(self.var_q))

    def reparameterize(self, h, mu, logvar, eps, per_dim=False):
        z = mu + torch.exp(0.5 * logvar) * eps
        terms = 0.5 * (logvar + eps.pow(2))
        return z, (terms if per_dim else terms.sum(1))


def coins(n, seed=0):
    return torch.bernoulli(torch.full((n, 49), 0.5), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize('active', [(), (3,), (0, 7, 8, 20, 48), tuple(range(0, 49, 2))])
def test_active_units_counts_the_dimensions_whose_mean_varies_across_images(active):
    au = V.active_units(FixedEncoder(active), coins(60), samples=3, seed=SEED, batch=25)
    assert au == dict(value=len(active), stderr=None, n_images=60)


def test_active_units_threshold_is_on_the_variance():
    x = coins(400)
    # variance at most 0.25 * 0.18^2 * 400/399 < 0.01 in the "active" dimensions too; about 0.25 * 0.22^2 > 0.01
    assert V.active_units(FixedEncoder((1, 2), scale=0.18), x, samples=3, seed=SEED)['value'] == 0
    assert V.active_units(FixedEncoder((1, 2), scale=0.22), x, samples=3, seed=SEED)['value'] == 2
    assert V.active_units(FixedEncoder((1, 2)), x, samples=3, seed=SEED, threshold=0.3)['value'] == 0


@pytest.mark.parametrize('samples,n', [(5, 20000), (10, 6000)])
def test_active_units_with_flows_does_not_count_collapsed_dimensions(samples, n):
    """With flows E_q[z_d | x] is a mean of S samples: in a collapsed dimension (q = the prior,
    mu = 0, var 1) its variance across images is 1/S, far over the threshold and all Monte-Carlo
    noise; the engine's correction removes it (to within about 0.002 at these n), and only the k used
    dimensions count."""
    active = (4, 5, 30)
    x = coins(n, seed=1)
    enc = FixedEncoder(active, flows=2, still=0.0)
    assert V.active_units(enc, x, samples=samples, seed=SEED, batch=5000)['value'] == len(active)
    sharp = FixedEncoder(active, flows=1, var_q=1e-8, still=0.0)  # q a point mass: no noise to correct
    assert V.active_units(sharp, x[:200], samples=samples, seed=SEED)['value'] == len(active)


def test_active_units_of_a_real_encoder_with_flows_is_seeded():
    f, _ = tiny_vae(flows=2, dtype=torch.float32)
    x = binary_images(30, dtype=torch.float32)
    a = V.active_units(f, x, samples=3, seed=SEED)
    assert a == V.active_units(f, x, samples=3, seed=SEED) and 0 <= a['value'] <= 49 and a['n_images'] == 30


# ---------------------------------------------------------------------------------------------
# The training objective: beta weighs the KL only; free bits

def smoke_nets(part, **overrides):
    cfg = C.config(part, 'smoke', **overrides)
    torch.manual_seed(0)
    nets = T.build(C.model_spec(cfg), 'cpu')
    if cfg['autoregress']:
        nets['decoder'].autoregress = True
    return cfg, nets


def batch_for(cfg, n=8):
    if cfg['data'] == 'mnist':
        return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    return binary_images(n, dtype=torch.float32)


@pytest.mark.parametrize('part', ['5b', '5c', '6b', '6e-baseline'])
def test_beta_weighs_the_kl_and_not_the_reconstruction(part):
    cfg, nets, x, eps = informative_setup(part)
    full, recon1, kl1 = O.objective(nets, cfg, x, eps)
    objective, recon, kl = O.objective(nets, cfg, x, eps, beta=0.3)
    assert recon.item() == pytest.approx(recon1.item(), rel=1e-6) and kl.item() == pytest.approx(kl1.item(), rel=1e-5)
    assert full.item() == pytest.approx(recon1.item() + kl1.item(), rel=1e-6)
    assert objective.item() == pytest.approx(recon.item() + 0.3 * kl.item(), rel=1e-6)
    assert kl.item() > 49.0  # a KL large enough for beta to show


@pytest.mark.parametrize('part', ['6e-baseline', '5b', '5c'])
def test_objective_terms_are_the_configured_loss_at_the_given_eps(part):
    cfg, nets = smoke_nets(part, sigma=0.5)
    x = batch_for(cfg)
    eps = torch.randn(8, 49, generator=torch.Generator().manual_seed(1))
    _, recon, kl = O.objective(nets, cfg, x, eps)
    with torch.no_grad():
        z, logqzx, mu, logvar = nets['encoder'](x, eps)
        if cfg['model'] == 'binary_vae':
            want = losses.discrete_output_elbo(nets['decoder'](z, x), x, z, logqzx)
        else:
            want = getattr(losses, cfg['loss'])(nets['decoder'](z), x, z, 0.5, mu, logvar)
    assert recon.item() == pytest.approx(want[0].item(), rel=1e-6)
    assert kl.item() == pytest.approx(want[1].item(), rel=1e-5, abs=1e-4)


def test_pixelcnn_objective_is_the_cross_entropy_with_no_kl():
    cfg, nets = smoke_nets('6a')
    x = batch_for(cfg)
    objective, recon, kl = O.objective(nets, cfg, x, None, beta=0.3)
    with torch.no_grad():
        want = losses.cross_entropy(nets['pixelcnn'](x), x)
    assert objective.item() == pytest.approx(want.item(), rel=1e-6) and recon.item() == objective.item()
    assert kl.item() == 0.0


def informative_encoder(nets):
    """Move every posterior mean to about 3 with a small variance: each dimension's KL is then
    clearly positive (a few nats), so a floor of 1e-9 never binds."""
    with torch.no_grad():
        nets['encoder'].mu.bias.fill_(3.0)
        nets['encoder'].var.bias.fill_(-2.0)


def informative_setup(part, **overrides):
    """A smoke part's networks with an informative encoder, a batch of 8 and its eps."""
    cfg, nets = smoke_nets(part, **overrides)
    informative_encoder(nets)
    return cfg, nets, batch_for(cfg), torch.randn(8, 49, generator=torch.Generator().manual_seed(1))


def per_dim_kl(nets, x, eps):
    """(49,): log q(z_d|x) - log r(z_d) at z = the encoder's sample from eps, batch mean."""
    with torch.no_grad():
        h, mu, logvar = nets['encoder'].encode(x)
        z, terms = nets['encoder'].reparameterize(h, mu, logvar, eps, per_dim=True)
    return (0.5 * z.pow(2) - terms).mean(0)


@pytest.mark.parametrize('part', ['6b', '6e-freebits'])
def test_free_bits_under_every_dimensions_kl_leaves_the_elbo(part):
    cfg, nets, x, eps = informative_setup(part, free_bits=1e-9)
    objective, recon, kl = O.objective(nets, cfg, x, eps)
    assert per_dim_kl(nets, x, eps).min() > 0.1
    assert objective.item() == pytest.approx(recon.item() + kl.item(), rel=1e-6)
    # with beta: the floored KL is weighed like the plain one
    objective, recon, kl = O.objective(nets, cfg, x, eps, beta=0.3)
    assert objective.item() == pytest.approx(recon.item() + 0.3 * kl.item(), rel=1e-6)


def test_free_bits_floor_applies_per_dimension_to_the_batch_mean_kl():
    """A floor at the median of the dimensions' batch-mean KLs: the dimensions above it pay their
    KL, the others the floor; a floor over every dimension costs 49 floors."""
    cfg, nets, x, eps = informative_setup('6e-freebits')
    per_dim = per_dim_kl(nets, x, eps)
    floor = per_dim.median().item()
    objective, recon, _ = O.objective(nets, dict(cfg, free_bits=floor), x, eps)
    assert objective.item() == pytest.approx(recon.item() + per_dim.clamp(min=floor).sum().item(), rel=1e-6)
    high = per_dim.max().item() + 1.0
    objective, recon, _ = O.objective(nets, dict(cfg, free_bits=high), x, eps)
    assert objective.item() == pytest.approx(recon.item() + 49 * high, rel=1e-6)


def test_a_floor_under_one_nat_binds_where_the_posterior_is_near_the_prior():
    """Free bits at lambda = 0.5 (under one nat, as in Kingma et al. 2016) on an untrained encoder,
    whose q(z|x) is close to the prior: the floor binds, and the objective is recon + sum_d max(lambda, KL_d)."""
    cfg, nets = smoke_nets('6e-freebits')
    x = batch_for(cfg)
    eps = torch.randn(8, 49, generator=torch.Generator().manual_seed(1))
    per_dim = per_dim_kl(nets, x, eps)
    assert (per_dim < 0.5).sum() > 10
    objective, recon, kl = O.objective(nets, dict(cfg, free_bits=0.5), x, eps)
    assert objective.item() == pytest.approx(recon.item() + per_dim.clamp(min=0.5).sum().item(), rel=1e-6)
    assert objective.item() > recon.item() + kl.item() + 1.0


# ---------------------------------------------------------------------------------------------
# KL warm-up and free bits

def test_kl_weight_rises_linearly_from_zero_to_one():
    betas = [O.kl_weight(step, 100) for step in range(301)]
    assert betas[0] == 0.0
    assert betas[:101] == pytest.approx([s / 100 for s in range(101)])
    assert all(b == 1.0 for b in betas[100:])
    assert O.kl_weight(7, 0) == 1.0                     # no warm-up: the plain ELBO
    assert O.kl_weight(19, 100, start_step=20) == 1.0   # before the warm-up starts: the plain ELBO
    assert O.kl_weight(20, 100, start_step=20) == 0.0
    assert O.kl_weight(70, 100, start_step=20) == 0.5
    assert O.kl_weight(120, 100, start_step=20) == 1.0


def test_free_bits_floor_has_no_gradient_below_it():
    kl = torch.tensor([[0.05, 1.0, 0.3], [0.15, 2.0, 0.1]], requires_grad=True)  # batch means 0.1, 1.5, 0.2
    total = O.free_bits_kl(kl, 0.25)
    assert total.item() == pytest.approx(0.25 + 1.5 + 0.25)
    total.backward()
    assert torch.equal(kl.grad[:, [0, 2]], torch.zeros(2, 2))  # under the floor: no gradient
    assert torch.equal(kl.grad[:, 1], torch.full((2,), 0.5))   # above it: d mean / d entry = 1 / B


def test_free_bits_objective_drops_the_kl_gradient_of_dimensions_under_the_floor():
    """With a floor above every dimension's KL, the training objective is recon + 49 lambda and its
    gradient is that of the reconstruction term alone."""
    f, g = tiny_vae(dtype=torch.float32)
    nets = dict(encoder=f, decoder=g)
    x = torch.bernoulli(torch.full((8, 1, 28, 28), 0.3, dtype=torch.float32),
                        generator=torch.Generator().manual_seed(0))
    eps = torch.randn(8, 49, generator=torch.Generator().manual_seed(1))
    cfg = dict(C.config('6e-freebits', 'smoke'), free_bits=1e3)
    objective, recon, kl = O.objective(nets, cfg, x, eps)
    assert objective.item() == pytest.approx(recon.item() + 49e3)
    params = [p for net in nets.values() for p in net.parameters()]
    grads = torch.autograd.grad(objective, params, retain_graph=True, allow_unused=True)
    recon_grads = torch.autograd.grad(recon, params, allow_unused=True)
    for a, b in zip(grads, recon_grads, strict=True):
        assert (a is None and b is None) or torch.allclose(a, b)


# ---------------------------------------------------------------------------------------------
# Smoke runs: autoregression, KL warm-up, learning-rate drop

TINY = dict(train_images=40, batch_size=10, monitor_images=10, test_images=10, is_images=2, is_samples=4,
            is_batch=2, is_chunk=4, n_samples=4, au_samples=2)  # 4 steps an epoch


class Run:
    """A finished smoke run: its metrics, history.json, model.pt and directory."""

    def __init__(self, results_dir, part, **overrides):
        self.metrics = E.run_part(part, profile='smoke', results_dir=str(results_dir), progress=False,
                                  **{**TINY, **overrides})
        self.out = results_dir / 'smoke' / part
        with open(self.out / 'history.json') as fh:
            self.history = json.load(fh)
        self.model = torch.load(self.out / 'model.pt', weights_only=True)


@pytest.fixture(scope='module')
def pixelvae_run(tmp_path_factory):
    return Run(tmp_path_factory.mktemp('pixelvae'), '6c', epochs=3, autoregress_epoch=2)


@pytest.fixture(scope='module')
def warmup_drop_run(tmp_path_factory):
    """6b, 2 epochs: beta rises over the first, lr drops in the second."""
    return Run(tmp_path_factory.mktemp('drop'), '6b', epochs=2, kl_warmup=1, kl_warmup_start=0, lr_drop_epoch=1)


@pytest.fixture(scope='module')
def late_warmup_run(tmp_path_factory):
    """6b, 2 epochs: beta rises over the second; lr 2e-3 throughout."""
    return Run(tmp_path_factory.mktemp('late'), '6b', epochs=2, kl_warmup=1, kl_warmup_start=1, lr=2e-3,
               lr_drop_epoch=None)


def test_pixelvae_switches_autoregression_on_at_its_epoch(pixelvae_run):
    run = pixelvae_run
    assert run.history['autoregress_step'] == 2 * 4 == run.metrics['autoregress_step']  # start of epoch 3
    assert run.model['autoregress'] is True
    # the PixelCNN is trained from then on: its output bias (0 at the start) has moved
    assert run.model['models']['decoder']['state_dict']['pixelcnn.bias'].abs().max() > 0
    # and evaluation used it: the test -ELBO differs from that of the same model without it
    nets = MF.load_models(run.model['models'], 'cpu', autoregress=False)
    cfg = run.model['config']
    x = T.load_data(cfg, train=False)[V.test_subset(10000, cfg['test_images'])]
    off = V.neg_elbo(nets, cfg, x, cfg['seed'] + 101)['test_elbo']['value']
    assert abs(off - run.metrics['values']['test_elbo']['value']) > 1e-3


def test_last_monitor_point_is_the_test_elbo_when_both_use_the_same_images(warmup_drop_run, pixelvae_run):
    for run in (warmup_drop_run, pixelvae_run):
        assert run.history['test_epoch'] == list(range(1, len(run.history['test_epoch']) + 1))
        assert run.history['test_step'] == [4 * e for e in run.history['test_epoch']]
        assert run.history['test_loss'][-1] == run.metrics['values']['test_elbo']['value']
        assert run.history['test_kl'][-1] == run.metrics['values']['kl']['value']


def test_binary_vae_never_switches_autoregression_on(warmup_drop_run):
    run = warmup_drop_run
    assert run.history['autoregress_step'] is None and run.metrics['autoregress_step'] is None
    assert run.model['autoregress'] is False


@pytest.mark.parametrize('which,betas', [('warmup_drop_run', [0, 0.25, 0.5, 0.75, 1, 1, 1, 1]),
                                         ('late_warmup_run', [1, 1, 1, 1, 0, 0.25, 0.5, 0.75])])
def test_kl_warmup_rises_per_step_over_its_epochs(request, which, betas):
    hist = request.getfixturevalue(which).history
    assert hist['step'] == list(range(8))
    assert hist['beta'] == pytest.approx(betas)
    # the objective is recon + beta KL, the recorded loss the plain negative ELBO
    for obj, recon, kl, beta, loss in zip(hist['objective'], hist['recon'], hist['kl'], hist['beta'], hist['loss'],
                                          strict=True):
        assert obj == pytest.approx(recon + beta * kl, rel=1e-5, abs=1e-3)
        assert loss == pytest.approx(recon + kl)


def lr_of_epochs(out):
    """The learning rate of each epoch's run.log line."""
    lines = [line for line in (out / 'run.log').read_text().splitlines() if re.search(r': epoch \d+/\d+, step', line)]
    return [float(re.search(r', lr ([0-9.e-]+),', line).group(1)) for line in lines]


@pytest.mark.parametrize('which,lrs', [('warmup_drop_run', [1e-3, 3e-4]),   # dropped from lr_drop_epoch = 1
                                       ('late_warmup_run', [2e-3, 2e-3])])  # no drop
def test_learning_rate_of_each_epoch_and_in_the_checkpoint(request, which, lrs):
    run = request.getfixturevalue(which)
    assert lr_of_epochs(run.out) == lrs
    ck = torch.load(run.out / 'checkpoint.pt', weights_only=True)
    assert [g['lr'] for g in ck['optimizer']['param_groups']] == lrs[-1:]


# ---------------------------------------------------------------------------------------------
# The training loop: resuming exactly, and stopping on bad checkpoints or non-finite values

def history(results_dir, part='6b'):
    """The history of a smoke run of `part` under results_dir."""
    with open(os.path.join(results_dir, 'smoke', part, 'history.json')) as fh:
        return json.load(fh)


def test_resume_continues_the_step_counter(tmp_path, capsys):
    one = E.run_part('6b', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=1)
    assert one['steps'] == 2 and one['epochs'] == 1
    two = E.run_part('6b', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=2)
    assert 'resuming from' in capsys.readouterr().out
    assert two['steps'] == 4 and two['epochs'] == 2
    assert [s['device'] for s in two['sittings']] == ['cpu', 'cpu']          # one a process
    assert sum(s['seconds'] for s in two['sittings']) == pytest.approx(two['train_seconds'], abs=0.15)
    h = history(tmp_path)
    assert h['step'] == [0, 1, 2, 3] and h['test_epoch'] == [1, 2]
    # the same numbers as two epochs in one go
    straight = E.run_part('6b', profile='smoke', results_dir=str(tmp_path / 'straight'), progress=False, epochs=2)
    assert history(tmp_path / 'straight')['loss'] == h['loss']
    assert straight['values'] == two['values']
    # run again: nothing to do
    again = E.run_part('6b', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=2)
    assert 'already done' in capsys.readouterr().out and again['values'] == two['values']


def test_resume_mid_epoch_after_an_interruption(tmp_path):
    """A run stopped after one step of the second epoch (a time limit already passed) resumes from
    its mid-epoch checkpoint to exactly the numbers of an unbroken run."""
    settings = dict(profile='smoke', device='cpu', progress=False, batch_size=50)  # 4 steps an epoch
    reference = E.run_part('6c', results_dir=str(tmp_path / 'reference'), **settings)
    E.run_part('6c', results_dir=str(tmp_path), epochs=1, **settings)
    os.remove(tmp_path / 'smoke' / '6c' / 'metrics.json')  # an unfinished run of 2 epochs, 1 done
    assert E.run_part('6c', results_dir=str(tmp_path), stop_at=0.0, **settings) is None  # one more step, then stop
    ck = torch.load(tmp_path / 'smoke' / '6c' / 'checkpoint.pt', weights_only=True)
    assert (ck['epoch'], ck['batch'], ck['step']) == (1, 1, 5) and ck['part'] == '6c'
    resumed = E.run_part('6c', results_dir=str(tmp_path), **settings)
    assert history(tmp_path, '6c')['step'] == list(range(8))
    assert history(tmp_path, '6c')['loss'] == history(tmp_path / 'reference', '6c')['loss']
    assert resumed['values'] == reference['values']


def test_a_run_killed_after_its_last_epoch_is_evaluated_without_training_again(tmp_path):
    """A kill between the last checkpoint and the metrics: the rerun loads the finished training
    and evaluates it, to the numbers of an unbroken run (a PixelVAE with its PixelCNN on, as trained)."""
    settings = dict(profile='smoke', results_dir=str(tmp_path), progress=False, epochs=2, autoregress_epoch=1)
    done = E.run_part('6c', **settings)
    os.remove(tmp_path / 'smoke' / '6c' / 'metrics.json')
    again = E.run_part('6c', **settings)
    assert again['values'] == done['values'] and history(tmp_path, '6c')['step'] == [0, 1, 2, 3]


def test_a_run_stopped_during_importance_sampling_resumes_it_to_the_numbers_of_an_unbroken_run(tmp_path):
    """Training done, then the time limit falls inside the importance sampling (10 images, batches of
    5): the run stops after the first batch with is_partial.pt saved; the rerun takes up the second
    and reports the numbers of an unbroken run, its evaluation time counting both sittings."""
    settings = dict(profile='smoke', progress=False, epochs=2, autoregress_epoch=1)
    done = E.run_part('6c', results_dir=str(tmp_path / 'unbroken'), **settings)
    E.run_part('6c', results_dir=str(tmp_path), **settings)
    out = tmp_path / 'smoke' / '6c'
    os.remove(out / 'metrics.json')
    assert E.run_part('6c', results_dir=str(tmp_path), stop_at=0.0, **settings) is None
    partial = torch.load(out / 'is_partial.pt', weights_only=True)
    assert len(partial['nll']) == 5 and not (out / 'metrics.json').exists()
    assert 'after 5 of 10 test images' in (out / 'run.log').read_text()
    again = E.run_part('6c', results_dir=str(tmp_path), **settings)
    assert again['values'] == done['values'] and not (out / 'is_partial.pt').exists()
    assert again['eval_seconds'] >= partial['seconds']
    assert history(tmp_path, '6c')['step'] == [0, 1, 2, 3]  # trained once
    assert (out / 'run.log').read_text().count(f', commit {E.git_commit()}; settings {{') == 3  # a line a sitting


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path):
    E.run_part('6a', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=1)
    path = tmp_path / 'smoke' / '6a' / 'checkpoint.pt'
    path.write_bytes(b'not a checkpoint')
    with pytest.raises(E.CheckpointError, match=r'(?s)checkpoint\.pt.*--fresh'):
        E.run_part('6a', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=2)
    fresh = E.run_part('6a', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=2, fresh=True)
    assert fresh['epochs'] == 2
    assert history(tmp_path, '6a')['test_kl'] == [0.0, 0.0]  # a PixelCNN has no KL term


def test_checkpoint_from_other_settings_is_refused(tmp_path):
    E.run_part('6b', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=1)
    for name in ('metrics.json', 'model.pt'):  # an unfinished run: only its checkpoint is there
        os.remove(tmp_path / 'smoke' / '6b' / name)
    with pytest.raises(E.CheckpointError, match='dec_depth'):
        E.run_part('6b', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=2, dec_depth=2)


def test_nan_gradient_stops_before_the_step_and_nothing_non_finite_is_saved(tmp_path, monkeypatch):
    """A finite loss whose gradient is NaN (in the resumed second epoch): the step is not taken,
    the checkpoint of epoch 1 is kept with finite weights, and the message, also in run.log, names it."""
    objective = O.objective

    def nan_gradient(nets, cfg, x, eps, beta=1.0):
        loss, recon, kl = objective(nets, cfg, x, eps, beta)
        p = next(nets['decoder'].parameters())
        return loss + 0.0 * torch.sqrt(p.sum() * 0.0), recon, kl  # value unchanged; d sqrt(0) = inf, times 0: NaN

    E.run_part('6b', profile='smoke', device='cpu', results_dir=str(tmp_path), progress=False, epochs=1)
    model = (tmp_path / 'smoke' / '6b' / 'model.pt').read_bytes()
    os.remove(tmp_path / 'smoke' / '6b' / 'metrics.json')
    monkeypatch.setattr(T, 'objective', nan_gradient)
    out = tmp_path / 'smoke' / '6b'
    kept = re.escape(f'the last good checkpoint, {out / "checkpoint.pt"}, holds epoch 1 + 0 batches')
    with pytest.raises(E.NonFiniteLossError, match=r'gradient norm is nan.*epoch 2, batch 0.*' + kept):
        E.run_part('6b', profile='smoke', device='cpu', results_dir=str(tmp_path), progress=False)
    ck = torch.load(out / 'checkpoint.pt', weights_only=True)
    assert (ck['epoch'], ck['step']) == (1, 2)
    assert all(torch.isfinite(v).all() for m in ck['models'].values() for v in m['state_dict'].values())
    assert 'gradient norm is nan' in (out / 'run.log').read_text()
    assert (out / 'model.pt').read_bytes() == model  # the model of epoch 1, not overwritten


def test_nan_loss_stops_the_part_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """A NaN training loss in the resumed second epoch: the run stops at its first step, names it,
    and keeps the checkpoint of epoch 1 with finite weights."""
    E.run_part('6b', profile='smoke', device='cpu', results_dir=str(tmp_path), progress=False, epochs=1)
    objective = O.objective
    monkeypatch.setattr(T, 'objective', lambda *a, **k: tuple(v * float('nan') for v in objective(*a, **k)))
    with pytest.raises(E.NonFiniteLossError, match=r'part 6b: the training loss is nan at epoch 2, batch 0 of the '
                                                    r'epoch, step 2') as err:
        E.run_part('6b', profile='smoke', device='cpu', results_dir=str(tmp_path), progress=False, epochs=2)
    assert 'holds epoch 1 + 0 batches' in str(err.value)
    ck = torch.load(tmp_path / 'smoke' / '6b' / 'checkpoint.pt', weights_only=True)
    assert (ck['epoch'], ck['step']) == (1, 2)
    assert all(torch.isfinite(v).all() for v in ck['models']['decoder']['state_dict'].values())


# ---------------------------------------------------------------------------------------------
# The optimiser, the output bias and bfloat16 training

def test_captured_training_objective_equals_eager(capsys):
    """The compiled objective (what compile_train=True trains with) gives eager's loss and gradients,
    and really is compiled (no fallback to eager)."""
    cfg = C.config('6e-freebits', 'smoke', compile_train=True)
    torch.manual_seed(0)
    nets = T.build(C.model_spec(cfg), 'cpu')
    nets['decoder'].autoregress = True
    x = T.load_data(cfg, train=True)[:8]
    eps = torch.randn(8, 49, generator=torch.Generator().manual_seed(1))
    params = [p for net in nets.values() for p in net.parameters()]
    results = []
    for fn in (O.objective, T.captured(O.objective, 'cpu')):
        loss, recon, kl = fn(nets, cfg, x, eps, 0.5)
        results.append((torch.stack([loss, recon, kl]).detach(), torch.autograd.grad(loss, params)))
    (a, ga), (b, gb) = results
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    for g1, g2 in zip(ga, gb, strict=True):
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-5)
    assert 'failed' not in capsys.readouterr().out


@pytest.mark.compiles
def test_captured_objective_follows_each_parts_settings_in_one_process():
    """Parts trained one after another in one process (`all`, a notebook) share torch.compile's cache
    of the objective: 6e-freebits after 6e-warmup, at another batch size, trains with its own lambda
    (each lambda its own eager value), not with one left from an earlier graph."""
    first = C.config('6e-warmup', 'smoke', batch_size=20, compile_train=True)
    torch.manual_seed(0)
    nets = T.build(C.model_spec(first), 'cpu')
    T.captured(O.objective, 'cpu')(nets, first, T.load_data(first, train=True)[:20], torch.randn(20, 49), 0.0)
    cfg = C.config('6e-freebits', 'smoke', compile_train=True)
    nets = T.build(C.model_spec(cfg), 'cpu')
    nets['decoder'].autoregress = True
    x = T.load_data(cfg, train=True)[:8]
    eps = torch.randn(8, 49, generator=torch.Generator().manual_seed(1))
    seen = []
    for free_bits in (0.5, 0.25, 0.75):
        part = dict(cfg, free_bits=free_bits)
        eager = O.objective(nets, part, x, eps, 1.0)[0]
        torch.testing.assert_close(T.captured(O.objective, 'cpu')(nets, part, x, eps, 1.0)[0].detach(), eager.detach(),
                                   rtol=1e-5, atol=1e-4)
        seen.append(eager.item())
    assert len(set(seen)) == 3                       # lambda changes the objective here


@pytest.mark.parametrize('compile_train', [False, True])
def test_compile_train_chooses_the_compiled_objective_and_falls_back_to_eager(tmp_path, monkeypatch, capsys,
                                                                              compile_train):
    """With compile_train the loop trains through torch.compile (here one that fails, as without a C++
    compiler: the run says so once and trains eagerly, to the numbers of an eager run)."""
    monkeypatch.setattr(torch, 'compile', broken_compile)
    done = E.run_part('6b', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=1,
                      compile_train=compile_train)
    said = capsys.readouterr().out.count('torch.compile of the training objective failed')
    assert said == (1 if compile_train else 0)
    eager = E.run_part('6b', profile='smoke', results_dir=str(tmp_path / 'eager'), progress=False, epochs=1)
    assert done['values'] == eager['values']
    cfg, nets = smoke_nets('6b')
    x, eps = batch_for(cfg), torch.randn(8, 49, generator=torch.Generator().manual_seed(1))
    fallback = T.captured(O.objective, 'cpu')(nets, cfg, x, eps, 0.5)  # the eager path keeps beta
    assert torch.equal(torch.stack(fallback), torch.stack(O.objective(nets, cfg, x, eps, 0.5)))


def smoke_training(tmp_path, part='6b', **overrides):
    cfg = C.config(part, 'smoke', **overrides)
    torch.manual_seed(0)
    return T.Training(part, cfg, T.build(C.model_spec(cfg), 'cpu'), str(tmp_path), 'cpu', progress=False)


def test_training_draws_the_data_order_and_eps_from_their_seeded_streams(tmp_path):
    """Batch b of an epoch is x[perm[b B:(b + 1) B]] with perm from a generator seeded seed + 1, and
    eps comes from one seeded seed + 2: the streams that make a resumed run equal an unbroken one."""
    training = smoke_training(tmp_path)
    cfg, seen = training.cfg, []

    def spy(nets, cfg, x, eps, beta):
        seen.append((x.clone(), eps.clone()))
        return O.objective(nets, cfg, x, eps, beta)
    training.objective = spy
    x_train = T.load_data(cfg, train=True)
    training.start_epoch(0, len(x_train))
    training.step(x_train, 0, 2)
    training.step(x_train, 1, 2)
    bs = cfg['batch_size']
    perm = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(cfg['seed'] + 1))
    noise = torch.Generator().manual_seed(cfg['seed'] + 2)
    for b, (x, e) in enumerate(seen):
        assert torch.equal(x, x_train[perm[b * bs:(b + 1) * bs]])
        assert torch.equal(e, torch.randn(bs, 49, generator=noise))  # one draw per step


def test_on_the_cpu_a_nan_gradient_stops_the_step_it_occurs_in(tmp_path):
    """The loss and gradient norm are read at every step on the CPU: the step that meets a NaN
    gradient raises before the optimiser moves any parameter."""
    def nan_gradient(nets, cfg, x, eps, beta):
        loss, recon, kl = O.objective(nets, cfg, x, eps, beta)
        p = next(nets['decoder'].parameters())
        return loss + 0.0 * torch.sqrt(p.sum() * 0.0), recon, kl
    training = smoke_training(tmp_path)
    x_train = T.load_data(training.cfg, train=True)
    training.start_epoch(0, len(x_train))
    for b in range(2):                                     # at the first step of the run, and at the second
        before = [p.detach().clone() for p in training.params]
        training.objective = nan_gradient
        with pytest.raises(T.NonFiniteLossError, match='gradient norm is nan'):
            training.step(x_train, b, 2)
        assert all(torch.equal(p, q) for p, q in zip(training.params, before, strict=True))
        training.objective = O.objective
        training.step(x_train, b, 2)


class NotATensor:
    """An object that only unrestricted unpickling could rebuild."""


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    """A file that is readable but not a checkpoint (no settings, models, optimiser, generators,
    epoch), or that holds more than tensors and plain containers, is refused with what to do."""
    training = smoke_training(tmp_path)
    torch.save({'epoch': 1}, training.path)
    with pytest.raises(MF.CheckpointError, match=r'is not a checkpoint of this project \(it lacks config, models, '
                                                r'optimizer, rng\); rerun with --fresh'):
        training.resume()
    torch.save({'epoch': 1, 'payload': NotATensor()}, training.path)
    with pytest.raises(MF.CheckpointError,
                       match=r'(?s)is corrupt or unreadable .*rerun with --fresh \(fresh=True\) or delete it'):
        training.resume()


@pytest.mark.parametrize('minutes,saved', [(0, [(0, 1), (0, 2), (0, 3), (1, 0)]),  # every step; at the end of the epoch
                                           (60, [(1, 0)])])                           # at the end of the epoch only
def test_checkpoints_are_written_every_checkpoint_minutes_and_at_each_epochs_end(tmp_path, monkeypatch, minutes, saved):
    written = []
    monkeypatch.setattr(T, 'atomic_save', lambda ck, path: written.append((ck['epoch'], ck['batch'])))
    training = smoke_training(tmp_path, batch_size=50, checkpoint_minutes=minutes, epochs=1)  # 4 steps an epoch
    assert training.run() is True
    assert written == saved


def test_recorded_training_time_is_part_of_the_wall_time(tmp_path):
    """train_seconds counts the time in training steps only: never more than the call took."""
    training = smoke_training(tmp_path)
    start = time.time()
    assert training.run(stop_at=0.0) is False  # one step, a checkpoint, then stop
    wall = time.time() - start
    assert training.state['step'] == 1 and 0 < training.state['train_seconds'] <= wall


def test_gradient_norm_is_that_of_all_gradients_together():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(2, 1)
    unused = torch.nn.Parameter(torch.ones(2))  # no gradient: skipped
    b(a(torch.randn(4, 3))).sum().backward()
    params = [unused, *a.parameters(), *b.parameters()]
    every = torch.cat([p.grad.flatten() for p in params if p.grad is not None])
    torch.testing.assert_close(T.total_grad_norm(params), every.norm())
    a.bias.grad[0] = float('nan')
    assert torch.isnan(T.total_grad_norm(params))


def test_run_log_lines_are_printed_and_time_stamped(tmp_path, capsys):
    import datetime
    T.say(str(tmp_path), 'first')
    T.say(str(tmp_path), 'second')
    assert capsys.readouterr().out == 'first\nsecond\n'
    lines = (tmp_path / 'run.log').read_text().splitlines()
    assert [line.split('  ', 1)[1] for line in lines] == ['first', 'second']
    for line in lines:
        stamp = datetime.datetime.strptime(line.split('  ', 1)[0], '%Y-%m-%d %H:%M:%S')
        assert abs((datetime.datetime.now() - stamp).total_seconds()) < 120


@pytest.mark.parametrize('part', ['6a', '5b', '6c'])
def test_a_model_record_rebuilds_each_kind_on_the_device_asked_for(part):
    """model_record then load_models: the same function of x, in eval mode, autoregression as asked,
    and every parameter on the device asked for ('meta' stands for a device other than the CPU)."""
    cfg = C.config(part, 'smoke')
    spec = C.model_spec(cfg)
    torch.manual_seed(0)
    nets = T.build(spec, 'cpu')
    record = MF.model_record(nets, spec)
    for autoregress in (False, True):
        back = MF.load_models(record, 'cpu', autoregress)
        assert set(back) == set(nets) and not any(net.training for net in back.values())
        if 'decoder' in back and hasattr(back['decoder'], 'autoregress'):
            assert back['decoder'].autoregress is autoregress
        for name, net in back.items():
            assert net.state_dict().keys() == nets[name].state_dict().keys()
            assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), nets[name].state_dict().values(),
                                                         strict=True))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # loading weights into meta tensors is a no-op, and torch says so
        far = MF.load_models(record, 'meta', False)
    assert {p.device.type for net in far.values() for p in net.parameters()} == {'meta'}


def test_fused_adam_takes_the_same_step_as_plain_adam():
    """experiments.adam (fused kernel) and torch.optim.Adam give the same parameters after a few steps."""
    torch.manual_seed(0)
    a = models.VAEEncoder(capacity=4, depth=1)
    b = models.VAEEncoder(capacity=4, depth=1)
    b.load_state_dict(a.state_dict())
    start = [p.detach().clone() for p in a.parameters()]
    opt_a, opt_b = T.adam(a.parameters(), 1e-2), torch.optim.Adam(b.parameters(), lr=1e-2)
    x = torch.rand(3, 1, 28, 28)
    eps = torch.randn(3, 1, 7, 7)
    for _ in range(3):
        for net, opt in ((a, opt_a), (b, opt_b)):
            z, logqzx, mu, logvar = net(x, eps)
            loss = (z.pow(2).sum(1) - logqzx).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    assert all(not torch.equal(p, p0) for p, p0 in zip(a.parameters(), start, strict=True))  # every parameter moved


def test_gaussian_decoder_starts_at_the_mean_digit():
    """The engine starts the Gaussian decoder's output bias at logit(mean training image): with the
    trunk's own contribution zeroed, g(z) is the (clamped) mean digit for any z; binary decoders
    keep their bias at 0."""
    cfg = C.config('5b', 'smoke', init_output_bias=True)
    nets = T.build(C.model_spec(cfg), 'cpu')
    T.init_output_bias(nets, cfg, 'cpu')
    g = nets['decoder']
    with torch.no_grad():
        g.image.weight.zero_()
        g.image.bias.zero_()
    mean = T.load_data(cfg, train=True).mean(0, keepdim=True).clamp(1e-3, 1 - 1e-3)
    torch.testing.assert_close(g(torch.randn(3, 49)), mean.expand(3, 1, 28, 28), atol=1e-6, rtol=1e-5)
    for cfg in (C.config('6b', 'smoke', init_output_bias=True), C.config('5b', 'full')):  # not binary; not full
        nets = T.build(C.model_spec(cfg), 'cpu')
        T.init_output_bias(nets, cfg, 'cpu')
        assert nets['decoder'].bias.abs().max() == 0


# ---------------------------------------------------------------------------------------------
# Opt-in bfloat16 training

@pytest.mark.parametrize('part', ['6a', '5b', '6e-baseline'])
def test_bf16_training_objective_is_close_to_float32_and_keeps_float32_parameters(part):
    """--precision bf16 runs the networks under autocast and the losses in float32: the objective
    stays within bfloat16 rounding of the float32 one, every gradient is float32, and fp32 is
    plain float32 (no autocast: identical to calling the networks directly)."""
    cfg, nets = smoke_nets(part)
    x = torch.bernoulli(torch.full((8, 1, 28, 28), 0.3), generator=torch.Generator().manual_seed(0))
    eps = torch.randn(8, 49, generator=torch.Generator().manual_seed(1))
    conv = next(m for net in nets.values() for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    seen = []
    conv.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    full = O.objective(nets, cfg, x, eps)
    low = O.objective(nets, dict(cfg, precision='bf16'), x, eps)
    assert seen == [torch.float32, torch.bfloat16]   # the objective really runs the networks in bfloat16
    for a, b in zip(low, full, strict=True):
        assert a.dtype == torch.float32
        assert a.item() == pytest.approx(b.item(), rel=2e-2, abs=0.5)
    params = [p for net in nets.values() for p in net.parameters()]
    grads = torch.autograd.grad(low[0], params, allow_unused=True)
    assert all(g is None or (g.dtype == torch.float32 and torch.isfinite(g).all()) for g in grads)
    if part == '6a':
        assert torch.equal(full[0], losses.cross_entropy(nets['pixelcnn'](x), x))


def test_precision_setting_is_checked_and_older_checkpoints_still_match():
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16, got 'fp8'"):
        C.config('6a', 'smoke', precision='fp8')
    cfg = C.config('6a', 'smoke')
    saved = {k: v for k, v in cfg.items() if k != 'precision'}  # a configuration saved before the setting existed
    assert C.settings_differ(saved, cfg) == []
    assert C.settings_differ(saved, dict(cfg, precision='bf16')) == ['precision']
    p, x = models.PixelCNN(capacity=4, depth=1), torch.zeros(2, 1, 28, 28)
    with O.low_precision('bf16', 'cpu'):
        assert p.embed(x).dtype == torch.bfloat16   # the convolutions really run in bfloat16
    with O.low_precision('fp32', 'cpu'):
        assert p.embed(x).dtype == torch.float32


def test_decoder_bias_is_finite_for_pixels_always_on_or_always_off(monkeypatch):
    """A pixel on in every training image (or in none) starts at logit(1 - 1e-3) (or logit(1e-3)),
    not at an infinite bias."""
    cfg = C.config('5b', 'smoke', init_output_bias=True)
    images = torch.zeros(4, 1, 28, 28)
    images[:, :, :14] = 1.0                                 # the top half always on, the bottom always off
    monkeypatch.setattr(T, 'load_data', lambda cfg, train: images)
    nets = T.build(C.model_spec(cfg), 'cpu')
    T.init_output_bias(nets, cfg, 'cpu')
    bias = nets['decoder'].bias.detach()                    # (28, 28)
    edge = math.log((1 - 1e-3) / 1e-3)
    torch.testing.assert_close(bias[:14], torch.full((14, 28), edge))
    torch.testing.assert_close(bias[14:], torch.full((14, 28), -edge))


class Clock:
    """engine/train.py's `time` module with a clock that moves only while a training step runs."""

    def __init__(self):
        self.now = 1000.0

    def time(self):
        return self.now

    def __getattr__(self, name):  # strftime and the rest: the real module's
        return getattr(time, name)


def clocked_training(tmp_path, monkeypatch, step_seconds=10.0, **overrides):
    """smoke_training of 6b on a Clock (returned with it) on which each training step takes step_seconds."""
    clock = Clock()
    monkeypatch.setattr(T, 'time', clock)
    training = smoke_training(tmp_path, **overrides)

    def timed(*args):
        clock.now += step_seconds
        return O.objective(*args)
    training.objective = timed
    return training, clock


def test_training_time_checkpoints_and_a_time_limit_follow_the_clock(tmp_path, monkeypatch):
    """Steps of 10 s, checkpoint_minutes 0.33 (19.8 s), a time limit after 65 s: checkpoints after
    the 2nd step of each epoch (20 s since the last) and at each epoch's end, a stop with a
    checkpoint at the first step past the limit; train_seconds counts every step once, across the
    checkpoints, the epochs and the resume."""
    written, save = [], T.atomic_save
    monkeypatch.setattr(T, 'atomic_save', lambda ck, path: written.append((ck['epoch'], ck['batch'])) or save(ck, path))
    training, clock = clocked_training(tmp_path, monkeypatch, batch_size=50, epochs=2, checkpoint_minutes=0.33)
    assert training.run(stop_at=clock.now + 65) is False    # 4 steps an epoch
    assert written == [(0, 2), (1, 0), (1, 2), (1, 3)] and training.state['step'] == 7
    assert training.state['train_seconds'] == 70.0
    again, clock = clocked_training(tmp_path, monkeypatch, batch_size=50, epochs=2, checkpoint_minutes=0.33)
    again.resume()
    assert again.state['train_seconds'] == 70.0 and again.run(stop_at=clock.now + 65) is True
    assert written[4:] == [(2, 0)] and again.state['step'] == 8 and again.state['train_seconds'] == 80.0


def test_each_sitting_records_its_device_hardware_and_seconds(tmp_path, monkeypatch):
    """A run stopped on one machine and resumed on another: the checkpoint carries each sitting's
    device, hardware and training seconds, which add up to train_seconds."""
    monkeypatch.setattr(T, 'describe_hardware', lambda device: 'first machine')
    training, clock = clocked_training(tmp_path, monkeypatch, batch_size=50, epochs=2)
    assert training.run(stop_at=clock.now + 25) is False   # 3 steps of 10 s
    monkeypatch.setattr(T, 'describe_hardware', lambda device: 'second machine')
    again, clock = clocked_training(tmp_path, monkeypatch, batch_size=50, epochs=2)
    again.resume()
    assert again.run() is True
    assert again.state['sittings'] == [dict(device='cpu', hardware='first machine', seconds=30.0),
                                       dict(device='cpu', hardware='second machine', seconds=50.0)]
    assert again.state['train_seconds'] == 80.0
    assert MF.load_file(again.path)['sittings'] == again.state['sittings']


@pytest.mark.parametrize('noise,device', [(torch.Generator().get_state(), 'cpu'),
                                          (torch.zeros(16, dtype=torch.uint8), 'cuda')])
def test_a_checkpoint_from_before_sittings_were_recorded_is_one_sitting_on_its_device(tmp_path, noise, device):
    """Its training seconds are one earlier sitting, on the device type of its noise generator's
    state, its hardware unrecorded; this process's seconds come after it."""
    training = smoke_training(tmp_path, epochs=2)
    assert training.run(stop_at=0.0) is False
    ck = MF.load_file(training.path)
    earlier = ck['train_seconds']
    del ck['sittings']
    ck['rng']['noise'] = noise
    torch.save(ck, training.path)
    again = smoke_training(tmp_path, epochs=2)
    again.resume()
    assert again.state['sittings'] == [dict(device=device, hardware=None, seconds=earlier)]
    assert again.run() is True
    assert [s['hardware'] for s in again.state['sittings']] == [None, C.describe_hardware('cpu')]


def test_a_time_limit_met_at_an_epochs_end_stops_there_unless_training_is_done(tmp_path, monkeypatch):
    """One step an epoch, the limit already past: each call trains one epoch and says whether
    training is complete."""
    training, clock = clocked_training(tmp_path, monkeypatch, batch_size=200, epochs=3)
    done = [training.run(stop_at=clock.now - 1) for _ in range(3)]
    assert done == [False, False, True] and training.state['epoch'] == 3 and training.state['step'] == 3


def test_the_switch_to_autoregression_is_recorded_once_at_its_step(tmp_path):
    training = smoke_training(tmp_path, part='6c', epochs=3, autoregress_epoch=1)
    hist, n = training.state['history'], len(T.load_data(training.cfg, train=True))
    training.start_epoch(0, n)
    assert hist['autoregress_step'] is None and not training.nets['decoder'].autoregress
    training.state['step'] = 4
    training.start_epoch(1, n)
    assert hist['autoregress_step'] == 4 and training.nets['decoder'].autoregress
    training.state['step'] = 8
    training.start_epoch(2, n)
    assert hist['autoregress_step'] == 4


@pytest.mark.parametrize('saved_first,kept', [
    (False, r'at epoch 1, batch 1 of the epoch, step 1.*no checkpoint had been written yet'),
    (True, r'at epoch 1, batch 2 of the epoch, step 2; .*holds epoch 0 \+ 1 batches and was not overwritten')])
def test_a_non_finite_parameter_is_never_saved_and_the_stop_names_what_was_kept(tmp_path, saved_first, kept):
    training = smoke_training(tmp_path)
    x_train = T.load_data(training.cfg, train=True)
    training.start_epoch(0, len(x_train))
    training.step(x_train, 0, 4)
    if saved_first:
        training.save()                                    # a good checkpoint at epoch 0 + 1 batch
        training.step(x_train, 1, 4)
    with torch.no_grad():
        training.params[0].view(-1)[0] = float('inf')
    with pytest.raises(T.NonFiniteLossError, match=r'part 6b: a parameter is not finite ' + kept):
        training.save()
    if saved_first:
        ck = MF.load_file(training.path)
        assert (ck['epoch'], ck['batch'], ck['step']) == (0, 1, 1)
    else:
        assert not os.path.exists(training.path)


def test_adam_takes_the_fused_kernel_where_torch_has_it_and_the_plain_one_elsewhere(monkeypatch):
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.zeros(2))]
    opt = T.adam(iter(params), 0.01)
    assert opt.param_groups[0]['params'] == params and opt.defaults['lr'] == 0.01
    if tuple(int(v) for v in torch.__version__.split('.')[:2]) >= (2, 4):  # fused Adam on the CPU
        assert opt.defaults['fused'] is True
    adam = torch.optim.Adam

    def no_fused(params, lr, fused=None):
        if fused:
            raise RuntimeError('fused=True requires all the params to be floating point Tensors of supported devices')
        return adam(params, lr=lr)
    monkeypatch.setattr(torch.optim, 'Adam', no_fused)
    opt = T.adam(iter(params), 0.01)
    assert opt.param_groups[0]['params'] == params and opt.defaults['lr'] == 0.01 and not opt.defaults['fused']


def test_kl_warm_up_of_one_step_starts_at_zero():
    assert [O.kl_weight(s, 1, 5) for s in (4, 5, 6, 7)] == [1.0, 0.0, 1.0, 1.0]
    assert [O.kl_weight(s, 0, 5) for s in (4, 5, 6)] == [1.0, 1.0, 1.0]  # no warm-up


def test_a_part_without_autoregression_never_records_it_on(tmp_path):
    training = smoke_training(tmp_path, epochs=1)
    assert training.run() is True
    assert training.state['autoregress'] is False and training.state['history']['autoregress_step'] is None


def test_each_part_trains_and_tests_on_its_own_mnist():
    """Gaussian parts read grayscale MNIST, binary ones the binarized set: the first train_images
    training images, and every test image; in any order of reading (the sets are cached)."""
    from engine import data
    for part, load in (('6b', data.load_binarized_mnist), ('5b', data.load_mnist), ('6b', data.load_binarized_mnist)):
        for cfg in (C.config(part, 'smoke'), C.config(part, 'full')):
            n = cfg['train_images']
            assert torch.equal(T.load_data(cfg, train=True), load(True)[:n])
            assert torch.equal(T.load_data(cfg, train=False), load(False))
    assert T.load_data(C.config('6b', 'smoke'), train=True).shape == (200, 1, 28, 28)
    assert T.load_data(C.config('6b', 'smoke'), train=False).shape == (10000, 1, 28, 28)


def test_fp16_trains_with_loss_scaling_and_resumes_exactly(tmp_path):
    """--precision fp16 at smoke size on the CPU (autocast to float16 runs there): its own results
    directory, finite numbers, the updates of overflowing steps skipped and the rest taken, the
    scaler's state in the checkpoint, and a run interrupted mid-epoch ends with the numbers of an
    unbroken one."""
    settings = dict(profile='smoke', device='cpu', progress=False, batch_size=20, precision='fp16')  # 10 steps an epoch
    reference = E.run_part('6b', results_dir=str(tmp_path / 'reference'), **settings)
    out = tmp_path / 'reference' / 'smoke-fp16' / '6b'
    hist = json.loads((out / 'history.json').read_text())
    assert reference['precision'] == 'fp16' and all(math.isfinite(v['value']) for v in reference['values'].values())
    assert 0 < len(hist['skipped']) < 20 and len(set(hist['loss'])) > 1  # the first steps overflow, later ones train
    assert 'steps skipped by loss scaling' in (out / 'run.log').read_text()
    scale = MF.load_file(out / 'checkpoint.pt')['scaler']['scale']
    assert scale == 2.0 ** 16 / 2 ** len(hist['skipped'])                 # halved at each skipped step
    E.run_part('6b', results_dir=str(tmp_path), epochs=1, **settings)
    os.remove(tmp_path / 'smoke-fp16' / '6b' / 'metrics.json')
    assert E.run_part('6b', results_dir=str(tmp_path), stop_at=0.0, **settings) is None
    ck = MF.load_file(tmp_path / 'smoke-fp16' / '6b' / 'checkpoint.pt')
    assert (ck['epoch'], ck['batch']) == (1, 1)
    training = T.Training('6b', ck['config'], T.build(C.model_spec(ck['config']), 'cpu'),
                          str(tmp_path / 'smoke-fp16' / '6b'), 'cpu', False)
    training.resume()
    assert training.scaler.state_dict() == ck['scaler']
    resumed = E.run_part('6b', results_dir=str(tmp_path), **settings)
    assert json.loads((tmp_path / 'smoke-fp16' / '6b' / 'history.json').read_text())['loss'] == hist['loss']
    assert resumed['values'] == reference['values']


def test_fp16_without_a_gradient_scaler_in_torch_is_refused_by_name(monkeypatch):
    monkeypatch.delattr(torch.amp, 'GradScaler')
    with pytest.raises(ValueError, match=r'precision fp16 on cpu needs torch >= 2.3 \(torch.amp.GradScaler\)'):
        T.loss_scaler('fp16', 'cpu')
    assert T.loss_scaler('fp32', 'cpu') is None and T.loss_scaler('bf16', 'cpu') is None


@pytest.mark.parametrize('device', ['cpu', 'cuda'])
def test_fp16_means_float16_on_every_device(device):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')                     # 'CUDA is not available ... Disabling autocast'
        ctx = O.low_precision('fp16', device)
    assert ctx.fast_dtype == torch.float16 and ctx.device == device


@pytest.mark.parametrize('device', ['cpu', 'cuda'])
def test_bf16_means_bfloat16_on_every_device(device):
    """CUDA's autocast defaults to float16, whose range overflows where bfloat16's does not: the
    engine names bfloat16 (the context is only built here, so no GPU is needed)."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')                     # 'CUDA is not available ... Disabling autocast'
        ctx = O.low_precision('bf16', device)
    assert ctx.fast_dtype == torch.bfloat16 and ctx.device == device


def test_the_hardware_of_a_cpu_run_names_the_cpu_model_where_the_system_gives_it(tmp_path, monkeypatch):
    """Two CPU models train at different rates: a sitting's hardware names the model (Linux
    cpuinfo's 'model name'), and only the architecture where no model is given."""
    info = tmp_path / 'cpuinfo'
    info.write_text('processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD  EPYC 7B13\nflags\t\t: fpu\n')
    assert C.cpu_model(str(info)) == 'AMD EPYC 7B13'
    info.write_text('processor\t: 0\nflags\t\t: fpu\n')
    assert C.cpu_model(str(info)) == ''
    monkeypatch.setattr(C, 'cpu_model', lambda: 'Some CPU 9000')
    assert C.describe_hardware('cpu') == f'CPU (Some CPU 9000, {C.platform.machine()}), {os.cpu_count()} cores'
    monkeypatch.setattr(C, 'cpu_model', lambda: '')
    assert C.describe_hardware('cpu') == f'CPU ({C.platform.machine()}), {os.cpu_count()} cores'
