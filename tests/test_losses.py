"""losses.py agrees with torch.distributions, and its Monte-Carlo KL with the closed form."""
import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

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


def test_gaussian_elbo_matches_distributions():
    x1, x2, z, mu, logvar, _ = batch()
    sigma = 0.03
    recon, div = losses.gaussian_elbo(x1, x2, z, sigma, mu, logvar)
    # -log N(x2; x1, sigma^2) without its normaliser (D/2) log(2 pi sigma^2), per image
    nll = -Normal(x1, sigma).log_prob(x2).flatten(1).sum(1) - 784 * 0.5 * math.log(2 * math.pi * sigma ** 2)
    torch.testing.assert_close(recon, nll.mean(), rtol=1e-5, atol=0)
    kl = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1).mean()
    torch.testing.assert_close(div, kl, rtol=1e-5, atol=0)


def test_mc_gaussian_elbo_matches_log_probs_and_closed_form():
    x1, x2, z, mu, logvar, _ = batch()
    recon, div = losses.mc_gaussian_elbo(x1, x2, z, 0.1, mu, logvar)
    assert recon == losses.gaussian_elbo(x1, x2, z, 0.1, mu, logvar)[0]
    q, r = Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)
    one_sample = (q.log_prob(z) - r.log_prob(z)).sum(1).mean()
    torch.testing.assert_close(div, one_sample, rtol=1e-5, atol=0)
    # averaged over many eps the estimate matches the closed form within 4 standard errors
    B, n = 4, 2000
    mu, logvar = mu[:B], logvar[:B]
    eps = torch.randn(n, B, 49, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z = mu + (0.5 * logvar).exp() * eps
    x = torch.zeros(B, 1, 28, 28, dtype=torch.float64)
    per_draw = torch.stack([losses.mc_gaussian_elbo(x, x, z[i], 1.0, mu, logvar)[1] for i in range(n)])
    closed = losses.gaussian_elbo(x, x, z[0], 1.0, mu, logvar)[1]
    stderr = per_draw.std() / math.sqrt(n)
    assert abs(per_draw.mean() - closed) < 4 * stderr
    assert stderr < 0.05 * closed  # the check has power: a wrong constant would be caught


def test_cross_entropy_matches_bernoulli():
    x1, _, _, _, _, _ = batch()
    logits = (x1 - 0.5) * 8
    x2 = torch.bernoulli(torch.sigmoid(logits))
    expected = -Bernoulli(logits=logits).log_prob(x2).flatten(1).sum(1).mean()
    torch.testing.assert_close(losses.cross_entropy(logits, x2), expected, rtol=1e-5, atol=0)


def test_discrete_output_elbo_kl_is_log_q_minus_log_r():
    x1, _, z, mu, logvar, eps = batch()
    x2 = torch.bernoulli(torch.full_like(x1, 0.3))
    logqzx = 0.5 * (logvar + eps.pow(2)).sum(1)  # the encoder's convention without flows
    recon, div = losses.discrete_output_elbo(x1, x2, z, logqzx)
    torch.testing.assert_close(recon, losses.cross_entropy(x1, x2))
    q, r = Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)
    torch.testing.assert_close(div, (q.log_prob(z) - r.log_prob(z)).sum(1).mean(), rtol=1e-5, atol=0)


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
