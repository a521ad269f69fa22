"""Losses for CSE 599i Homework 2, in nats per image.

Every function returns (reconstruction, divergence): two scalar tensors, each summed over pixels
(or latent dimensions) and averaged over the batch; their sum is the negative ELBO.
x1 is the model output, x2 the data. Sign conventions:
- mu, logvar (B, 49) parametrise q(z|x) = N(mu, diag(exp(logvar))); the prior is r(z) = N(0, I).
- logqzx (B,) is the encoder's -log q(z|x) - (49/2) log 2pi (models.VAEEncoder).
"""

import torch
import torch.nn.functional as F


def _check_pair(x1, x2):
    if x1.shape != x2.shape:
        raise ValueError(f'model output x1 and data x2 must have the same shape (B, 1, 28, 28); '
                         f'got x1 {tuple(x1.shape)} and x2 {tuple(x2.shape)}')
    if x1.dim() < 2:
        raise ValueError(f'x1 and x2 need a batch dimension (B, ...), got shape {tuple(x1.shape)}')


def _check_latent(batch, **tensors):
    for name, t in tensors.items():
        if t.dim() != 2 or t.shape[0] != batch:
            raise ValueError(f'{name} must have shape ({batch}, d) to match the batch of x, '
                             f'got {tuple(t.shape)}')


def gaussian_reconstruction(x1, x2, sigma):
    """E_q[ |x - g(z)|^2 / (2 sigma^2) ] (one sample), the handout's reconstruction term; the
    Gaussian normaliser (D/2) log(2 pi sigma^2) is a constant and is left out, as there."""
    _check_pair(x1, x2)
    return (x2 - x1).pow(2).flatten(1).sum(1).mean() / (2 * sigma ** 2)


def gaussian_elbo(x1, x2, z, sigma, mu, logvar):
    """Negative ELBO with the closed-form KL of Problem 1:
    D(N(mu, diag sigma_q^2) || N(0, I)) = 1/2 sum_i (sigma_q,i^2 + mu_i^2 - 1 - log sigma_q,i^2)."""
    reconstruction = gaussian_reconstruction(x1, x2, sigma)
    _check_latent(x1.shape[0], z=z, mu=mu, logvar=logvar)
    divergence = 0.5 * (logvar.exp() + mu.pow(2) - 1 - logvar).sum(1).mean()
    return reconstruction, divergence


def mc_gaussian_elbo(x1, x2, z, sigma, mu, logvar):
    """Negative ELBO with a one-sample Monte-Carlo KL at the given z ~ q(z|x):
    D(q || r) ~ log q(z|x) - log r(z)
              = sum_i [-1/2 logvar_i - (z_i - mu_i)^2 / (2 exp(logvar_i)) + z_i^2 / 2]
    (the (1/2) log 2pi terms of q and r cancel)."""
    reconstruction = gaussian_reconstruction(x1, x2, sigma)
    _check_latent(x1.shape[0], z=z, mu=mu, logvar=logvar)
    log_q = -0.5 * (logvar + (z - mu).pow(2) / logvar.exp())
    log_r = -0.5 * z.pow(2)
    divergence = (log_q - log_r).sum(1).mean()
    return reconstruction, divergence


def cross_entropy(x1, x2):
    """-log p(x) for Bernoulli logits x1 and binary data x2: sum_i BCE(x1_i, x2_i), batch mean."""
    _check_pair(x1, x2)
    return F.binary_cross_entropy_with_logits(x1, x2, reduction='sum') / x1.shape[0]


def discrete_output_elbo(x1, x2, z, logqzx):
    """Negative ELBO for binary data: E_q[-log p(x|z)] + D(q || r), one sample z ~ q(z|x), with
    log q(z|x) - log r(z) = (-logqzx - (d/2) log 2pi) - (-|z|^2/2 - (d/2) log 2pi) = |z|^2/2 - logqzx."""
    reconstruction = cross_entropy(x1, x2)
    _check_latent(x1.shape[0], z=z)
    if logqzx.shape != (x1.shape[0],):
        raise ValueError(f'logqzx must have shape ({x1.shape[0]},), got {tuple(logqzx.shape)}')
    divergence = (0.5 * z.pow(2).sum(1) - logqzx).mean()
    return reconstruction, divergence
