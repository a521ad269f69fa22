"""losses.py agrees with torch.distributions, and its Monte-Carlo KL with the closed form.

Tests marked course_api call the losses with the course framework's signatures only, so they also
run against any course-compatible losses.py: HW2_LOSSES=path/to/losses.py pytest -m course_api.
"""
import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

import course
import losses


def batch(B=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.rand(B, 1, 28, 28, generator=g, dtype=torch.float64)
    x2 = torch.rand(B, 1, 28, 28, generator=g, dtype=torch.float64)
    mu = torch.randn(B, 49, generator=g, dtype=torch.float64)
    logvar = torch.randn(B, 49, generator=g, dtype=torch.float64) * 0.5
    eps = torch.randn(B, 49, generator=g, dtype=torch.float64)
    z = mu + (0.5 * logvar).exp() * eps
    return x1, x2, z, mu, logvar, eps


GAUSSIAN = 'losses.gaussian_elbo(x1, x2, z, sigma, mu, logvar)'
MC = 'losses.mc_gaussian_elbo(x1, x2, z, sigma, mu, logvar)'
DISCRETE = 'losses.discrete_output_elbo(x1, x2, z, logqzx)'
CROSS_ENTROPY = 'losses.cross_entropy(x1, x2)'


def two_scalars(what, fn, *args):
    """(reconstruction, divergence) of a loss call: two 0-dim tensors, checked."""
    return course.tensors(what, course.call(what, fn, *args), (), ())


@pytest.mark.course_api
def test_gaussian_elbo_matches_distributions():
    x1, x2, z, mu, logvar, _ = batch()
    sigma = 0.03
    recon, div = two_scalars(GAUSSIAN, losses.gaussian_elbo, x1, x2, z, sigma, mu, logvar)
    # -log N(x2; x1, sigma^2) without its normaliser (D/2) log(2 pi sigma^2), per image
    nll = -Normal(x1, sigma).log_prob(x2).flatten(1).sum(1) - 784 * 0.5 * math.log(2 * math.pi * sigma ** 2)
    course.close(GAUSSIAN + '[0]', recon, nll.mean(), 'the batch mean of ||x1 - x2||^2 / (2 sigma^2)', 1e-5, 0,
                 called='||x1 - x2||^2 / (2 sigma^2)', batch=len(x1))
    kl = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1).mean()
    course.close(GAUSSIAN + '[1]', div, kl, 'the batch mean of the closed-form KL(N(mu, exp(logvar)) || N(0, I))',
                 1e-5, 0, called='the closed form', batch=len(x1),
                 note='Problem 1: KL = 1/2 sum_i (exp(logvar_i) + mu_i^2 - 1 - logvar_i), per image')


@pytest.mark.course_api
def test_mc_gaussian_elbo_matches_log_probs_and_closed_form():
    x1, x2, z, mu, logvar, _ = batch()
    recon, div = two_scalars(MC, losses.mc_gaussian_elbo, x1, x2, z, 0.1, mu, logvar)
    theirs = two_scalars(GAUSSIAN, losses.gaussian_elbo, x1, x2, z, 0.1, mu, logvar)[0]
    truth = (x1 - x2).pow(2).flatten(1).sum(1).mean() / (2 * 0.1 ** 2)
    course.close(MC + '[0]', recon, theirs, "gaussian_elbo's reconstruction term", 1e-12, 0,
                 note=course.elsewhere(course.near(recon, truth), theirs, truth, 'losses.gaussian_elbo', 'losses.'
                                       'mc_gaussian_elbo', 'reconstruction term ||x1 - x2||^2 / (2 sigma^2)',
                                       'the reconstruction term'))
    q, r = Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)
    one_sample = (q.log_prob(z) - r.log_prob(z)).sum(1).mean()
    course.close(MC + '[1]', div, one_sample, 'the batch mean of log q(z|x) - log r(z) at the given z', 1e-5, 0,
                 called='log q(z|x) - log r(z)', batch=len(x1))
    # Over n draws of eps per image the estimate matches the closed form within 4 standard errors.
    # One call on the n * B images: its batch mean is the mean of the n per-draw estimates, and the
    # one-sample check above makes the reference's spread the loss's spread.
    B, n = 4, 2000
    mu, logvar = mu[:B].repeat(n, 1), logvar[:B].repeat(n, 1)
    eps = torch.randn(n * B, 49, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z = mu + (0.5 * logvar).exp() * eps
    x = torch.zeros(n * B, 1, 28, 28, dtype=torch.float64)
    estimate = two_scalars(MC, losses.mc_gaussian_elbo, x, x, z, 1.0, mu, logvar)[1]
    closed = two_scalars(GAUSSIAN, losses.gaussian_elbo, x, x, z, 1.0, mu, logvar)[1]
    q = Normal(mu, (0.5 * logvar).exp())
    per_draw = (q.log_prob(z) - r.log_prob(z)).sum(1).view(n, B).mean(1)
    stderr = per_draw.std() / math.sqrt(n)
    truth = kl_divergence(q, r).sum(1).mean()  # the true closed form, to tell which of the two is off
    course.check(abs(estimate - closed) < 4 * stderr, MC + '[1] over 2000 draws of z per image',
                 f'the closed-form KL of {GAUSSIAN}[1], {closed.item():.4f}, within 4 standard errors '
                 f'({4 * stderr.item():.4f})', f'{estimate.item():.4f}',
                 note=course.elsewhere(abs(estimate - truth) < 4 * stderr, closed, truth, 'losses.gaussian_elbo',
                                       'losses.mc_gaussian_elbo', 'closed-form KL', 'the closed form'))
    assert stderr < 0.05 * closed  # the check has power: a wrong constant would be caught


@pytest.mark.course_api
def test_cross_entropy_matches_bernoulli():
    x1, _, _, _, _, _ = batch()
    logits = (x1 - 0.5) * 8
    x2 = torch.bernoulli(torch.sigmoid(logits))
    expected = -Bernoulli(logits=logits).log_prob(x2).flatten(1).sum(1).mean()
    got = course.tensor(CROSS_ENTROPY, course.call(CROSS_ENTROPY, losses.cross_entropy, logits, x2), ())
    course.close(CROSS_ENTROPY, got, expected, 'the batch mean of -log Bernoulli(x2; sigmoid(x1)) summed over pixels '
                 '(x1: logits)', 1e-5, 0, called='the Bernoulli NLL', batch=len(x1))


@pytest.mark.course_api
def test_discrete_output_elbo_kl_is_log_q_minus_log_r():
    x1, _, z, mu, logvar, eps = batch()
    x2 = torch.bernoulli(torch.full_like(x1, 0.3))
    logqzx = 0.5 * (logvar + eps.pow(2)).sum(1)  # the encoder's convention without flows
    recon, div = two_scalars(DISCRETE, losses.discrete_output_elbo, x1, x2, z, logqzx)
    expected = course.tensor(CROSS_ENTROPY, course.call(CROSS_ENTROPY, losses.cross_entropy, x1, x2), ())
    truth = -Bernoulli(logits=x1).log_prob(x2).flatten(1).sum(1).mean()
    course.close(DISCRETE + '[0]', recon, expected, 'cross_entropy(x1, x2)', None, None,
                 note=course.elsewhere(course.near(recon, truth), expected, truth, 'losses.cross_entropy',
                                       'losses.discrete_output_elbo', 'Bernoulli NLL', 'the Bernoulli NLL'))
    q, r = Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)
    course.close(DISCRETE + '[1]', div, (q.log_prob(z) - r.log_prob(z)).sum(1).mean(),
                 'the batch mean of log q(z|x) - log r(z), with logqzx = -log q(z|x) - (49/2) log 2pi', 1e-5, 0,
                 called='log q(z|x) - log r(z)', batch=len(x1))


@pytest.mark.course_api
def test_losses_return_two_scalars():
    """Each loss returns (reconstruction, divergence), two 0-dim tensors: batch means of per-image sums."""
    x1, x2, z, mu, logvar, eps = batch()
    x2 = torch.bernoulli(x2)
    logqzx = 0.5 * (logvar + eps.pow(2)).sum(1)
    two_scalars(GAUSSIAN, losses.gaussian_elbo, x1, x2, z, 0.1, mu, logvar)
    two_scalars(MC, losses.mc_gaussian_elbo, x1, x2, z, 0.1, mu, logvar)
    two_scalars(DISCRETE, losses.discrete_output_elbo, x1, x2, z, logqzx)
    course.tensor(CROSS_ENTROPY, course.call(CROSS_ENTROPY, losses.cross_entropy, x1, x2), ())
    # batch means: the loss of a batch is the mean of its images' losses
    halves = [two_scalars(DISCRETE, losses.discrete_output_elbo, x1[i:i + 3], x2[i:i + 3], z[i:i + 3], logqzx[i:i + 3])
              for i in (0, 3)]
    for k, whole in enumerate(two_scalars(DISCRETE, losses.discrete_output_elbo, x1, x2, z, logqzx)):
        summed = course.near(whole, halves[0][k] + halves[1][k])
        course.close(f'{DISCRETE}[{k}] on 6 images', whole, (halves[0][k] + halves[1][k]) / 2,
                     'the mean of its values on the first and the last 3 (a batch mean, not a sum)', None, None,
                     hint=False, note='it is their sum: a sum over the batch where the course takes the mean?'
                     if summed else None)


def test_bad_shapes_raise_value_errors_naming_shapes():
    x1, x2, z, mu, logvar, _ = batch()
    with pytest.raises(ValueError, match=r'x1 \(6, 1, 28, 28\) and x2 \(5, 1, 28, 28\)'):
        losses.cross_entropy(x1, x2[:5])
    with pytest.raises(ValueError, match=r'mu must have shape \(6, d\)'):
        losses.gaussian_elbo(x1, x2, z, 0.1, mu[:3], logvar)
    with pytest.raises(ValueError, match=r'logqzx must have shape \(6,\)'):
        losses.discrete_output_elbo(x1, x2, z, torch.zeros(6, 1))
    with pytest.raises(ValueError, match='z must have shape'):
        losses.mc_gaussian_elbo(x1, x2, z[:, :, None], 0.1, mu, logvar)


# ---------------------------------------------------------------------------
# Bad inputs are refused with a message naming them


def per_image(loss, *args):
    """As experiments.per_image: each image on its own under torch.func.vmap."""
    return torch.func.vmap(lambda *a: loss(*(t[None] for t in a)))(*args)


def float32_batch(B=6):
    x1, x2, z, mu, logvar, eps = (t.float() for t in batch(B))
    return x1, torch.bernoulli(x2), z, mu, logvar, eps


def test_results_are_the_same_arithmetic_as_before():
    """The checks change no number: each loss is exactly its formula."""
    x1, x2, z, mu, logvar, _ = float32_batch()
    logqzx = -0.5 * logvar.sum(1)
    sigma = 0.03
    recon = (x2 - x1).pow(2).flatten(1).sum(1).mean() / (2 * sigma ** 2)
    kl = 0.5 * (logvar.exp() + mu.pow(2) - 1 - logvar).sum(1).mean()
    kl_mc = (-0.5 * (logvar + (z - mu).pow(2) / logvar.exp()) + 0.5 * z.pow(2)).sum(1).mean()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(x1, x2, reduction='sum') / 6
    for got, want in ((losses.gaussian_elbo(x1, x2, z, sigma, mu, logvar), (recon, kl)),
                      (losses.mc_gaussian_elbo(x1, x2, z, sigma, mu, logvar), (recon, kl_mc)),
                      (losses.discrete_output_elbo(x1, x2, z, logqzx), (bce, (0.5 * z.pow(2).sum(1) - logqzx).mean())),
                      ((losses.cross_entropy(x1, x2), bce), (bce, bce))):
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    torch.testing.assert_close(losses.gaussian_elbo(x1, x2, z, torch.tensor(sigma), mu, logvar)[0], recon)


def test_cross_entropy_data_must_be_in_unit_interval():
    x1, x2, z, _, _, _ = float32_batch()
    grey = torch.rand_like(x2)
    losses.cross_entropy(x1, grey)  # grey levels in [0, 1] are probabilities: allowed
    for bad, shown in ((x2 * 255, '[0, 255]'), (x2 - 1, '[-1, 0]')):
        with pytest.raises(ValueError, match=r'x2 must be binary or in \[0, 1\].*' + shown.replace('[', r'\[')):
            losses.cross_entropy(x1, bad)
    nan = x2.clone()
    nan[0, 0, 0, 0] = float('nan')
    with pytest.raises(ValueError, match=r'binary or in \[0, 1\]'):
        losses.cross_entropy(x1, nan)
    with pytest.raises(ValueError, match=r'binary or in \[0, 1\]'):
        losses.discrete_output_elbo(x1, x2 * 255, z, torch.zeros(6))


@pytest.mark.parametrize('sigma', [0.0, -0.03, float('nan'), float('inf'), torch.tensor(0.0),
                                   torch.tensor(-1.0), torch.tensor(float('nan'))])
@pytest.mark.parametrize('loss', ['gaussian_elbo', 'mc_gaussian_elbo'])
def test_sigma_must_be_finite_and_positive(loss, sigma):
    x1, x2, z, mu, logvar, _ = float32_batch()
    with pytest.raises(ValueError, match=r'sigma must be finite and > 0'):
        getattr(losses, loss)(x1, x2, z, sigma, mu, logvar)


def test_sigma_of_the_wrong_kind():
    x1, x2, z, mu, logvar, _ = float32_batch()
    with pytest.raises(TypeError, match='sigma must be a real number'):
        losses.gaussian_elbo(x1, x2, z, True, mu, logvar)
    with pytest.raises(TypeError, match='sigma must be a real number'):
        losses.gaussian_elbo(x1, x2, z, '0.03', mu, logvar)
    with pytest.raises(ValueError, match='sigma must be a floating-point tensor'):
        losses.gaussian_elbo(x1, x2, z, torch.tensor(1), mu, logvar)
    with pytest.raises(ValueError, match=r'sigma must be a number or a 0-dim tensor, got shape \(1,\)'):
        losses.gaussian_elbo(x1, x2, z, torch.tensor([0.03]), mu, logvar)
    assert losses.gaussian_reconstruction(x1, x2, 1) == losses.gaussian_reconstruction(x1, x2, 1.0)


def test_empty_batch_is_refused():
    x = torch.zeros(0, 1, 28, 28)
    for call in (lambda: losses.cross_entropy(x, x),
                 lambda: losses.gaussian_elbo(x, x, torch.zeros(0, 49), 0.1, torch.zeros(0, 49), torch.zeros(0, 49)),
                 lambda: losses.discrete_output_elbo(x, x, torch.zeros(0, 49), torch.zeros(0))):
        with pytest.raises(ValueError, match=r'x1 and x2 are an empty batch \(shape \(0, 1, 28, 28\)\)'):
            call()


def test_integer_and_bool_inputs_are_refused():
    x1, x2, z, mu, logvar, _ = float32_batch()
    logqzx = torch.zeros(6)
    cases = [
        ('x2', lambda: losses.cross_entropy(x1, x2.to(torch.uint8))),
        ('x2', lambda: losses.cross_entropy(x1, x2.bool())),
        ('x1', lambda: losses.gaussian_elbo(x1.long(), x2, z, 0.1, mu, logvar)),
        ('mu', lambda: losses.gaussian_elbo(x1, x2, z, 0.1, mu.long(), logvar)),
        ('logvar', lambda: losses.mc_gaussian_elbo(x1, x2, z, 0.1, mu, logvar.int())),
        ('z', lambda: losses.mc_gaussian_elbo(x1, x2, z.long(), 0.1, mu, logvar)),
        ('z', lambda: losses.discrete_output_elbo(x1, x2, z.int(), logqzx)),
        ('logqzx', lambda: losses.discrete_output_elbo(x1, x2, z, logqzx.long())),
    ]
    for name, call in cases:
        with pytest.raises(ValueError, match=f'{name} must be a floating-point tensor, got dtype torch.'):
            call()


def test_image_and_latent_shapes_are_enforced():
    x1, x2, z, mu, logvar, _ = float32_batch()
    flat1, flat2 = x1.flatten(1), x2.flatten(1)
    with pytest.raises(ValueError, match=r'same shape \(B, 1, 28, 28\); got x1 \(6, 784\) and x2 \(6, 784\)'):
        losses.cross_entropy(flat1, flat2)
    with pytest.raises(ValueError, match=r'got x1 \(6, 3, 28, 28\)'):
        losses.gaussian_reconstruction(x1.expand(6, 3, 28, 28), x2.expand(6, 3, 28, 28), 0.1)
    with pytest.raises(ValueError, match=r'mu and logvar must have the same shape \(B, d\), '
                                         r'got mu \(6, 48\) and logvar \(6, 49\)'):
        losses.gaussian_elbo(x1, x2, z, 0.1, mu[:, :48], logvar)
    with pytest.raises(ValueError, match=r'mu and z must have the same shape'):
        losses.mc_gaussian_elbo(x1, x2, z[:, :48], 0.1, mu, logvar)


def test_per_image_evaluation_under_vmap():
    """The losses run under torch.func.vmap (value checks skipped, shape checks kept), with the same
    numbers as plain calls."""
    x1, x2, z, mu, logvar, eps = float32_batch()
    logqzx = 0.5 * (logvar + eps.pow(2)).sum(1)
    recon, kl = per_image(losses.discrete_output_elbo, x1, x2, z, logqzx)
    for i in range(6):
        r, k = losses.discrete_output_elbo(x1[i:i + 1], x2[i:i + 1], z[i:i + 1], logqzx[i:i + 1])
        torch.testing.assert_close(recon[i], r)
        torch.testing.assert_close(kl[i], k)
    recon, kl = per_image(lambda *a: losses.gaussian_elbo(a[0], a[1], a[2], 0.03, a[3], a[4]), x1, x2, z, mu, logvar)
    assert recon.shape == kl.shape == (6,)
    grads = torch.func.vmap(torch.func.grad(lambda a, b: losses.cross_entropy(a[None], b[None])))(x1, x2)
    torch.testing.assert_close(grads, (torch.sigmoid(x1) - x2))
    with pytest.raises(ValueError, match='mu and logvar must have the same shape'):
        per_image(lambda *a: losses.gaussian_elbo(a[0], a[1], a[2], 0.03, a[3], a[4]),
                  x1, x2, z, mu[:, :48], logvar)


@pytest.mark.compiles
def test_losses_compile_in_one_graph_without_the_input_checks():
    """Under torch.compile the value checks are skipped, so the loss is one graph with no breaks."""
    x1, x2, _, _, _, _ = float32_batch()
    compiled = torch.compile(losses.cross_entropy, fullgraph=True, backend='eager')
    assert torch.equal(compiled(x1, x2), losses.cross_entropy(x1, x2))
