"""Losses for CSE 599i Homework 2, in nats per image.

Every function returns (reconstruction, divergence): two scalar tensors, each summed over pixels
(or latent dimensions) and averaged over the batch; their sum is the negative ELBO.
x1 is the model output, x2 the data, both floating-point (B, 1, 28, 28) with B >= 1. Sign conventions:
- mu, logvar (B, 49) parametrise q(z|x) = N(mu, diag(exp(logvar))); the prior is r(z) = N(0, I).
- logqzx (B,) is the encoder's -log q(z|x) - (49/2) log 2pi (models.VAEEncoder).

The inputs are checked before anything is computed, and a bad one raises ValueError naming it.
Checks on tensor values (the data range of cross_entropy, a tensor sigma) are skipped where the
values cannot steer Python control flow: inside torch.func.vmap and while torch.compile traces.
"""

import numbers

import torch
import torch.nn.functional as F

IMAGE_SHAPE = (1, 28, 28)  # one MNIST image, channels first


def _is_compiling():
    """True while torch.compile traces the caller (torch.compiler.is_compiling is newer than torch 2.2)."""
    check = getattr(torch.compiler, 'is_compiling', None) or torch._dynamo.is_compiling
    return check()


def _values_hidden(*tensors):
    """True where the tensors' values cannot be read in Python: during torch.compile tracing, or when
    one is a vmap BatchedTensor (losses are evaluated per image under torch.func.vmap)."""
    return _is_compiling() or any(
        isinstance(t, torch.Tensor) and torch._C._functorch.is_batchedtensor(t) for t in tensors)


def _holds(condition):
    """bool(condition) for a 0-dim bool tensor; True where vmap hides the value anyway (a BatchedTensor
    wrapped by another transform, e.g. vmap(grad(loss)), is not recognised by _values_hidden)."""
    try:
        return bool(condition)
    except RuntimeError as err:
        if str(err).startswith('vmap:'):
            return True
        raise


def _check_float(name, t):
    """t must be a floating-point tensor: integer or bool inputs would fail deep inside torch."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f'{name} must be a torch.Tensor, got {type(t).__name__}')
    if not t.is_floating_point():
        raise ValueError(f'{name} must be a floating-point tensor, got dtype {t.dtype}; '
                         f'convert it first, e.g. {name}.float()')


def _check_pair(x1, x2):
    """x1 (model output) and x2 (data): floating-point, the same shape (B, 1, 28, 28), B >= 1."""
    _check_float('x1', x1)
    _check_float('x2', x2)
    if x1.shape != x2.shape or x1.dim() != 4 or tuple(x1.shape[1:]) != IMAGE_SHAPE:
        raise ValueError(f'model output x1 and data x2 must have the same shape (B, 1, 28, 28); '
                         f'got x1 {tuple(x1.shape)} and x2 {tuple(x2.shape)}')
    if x1.shape[0] == 0:
        # a mean over no images is NaN
        raise ValueError(f'x1 and x2 are an empty batch (shape {tuple(x1.shape)}); pass at least one image')


def _check_latent(batch, **tensors):
    """Each tensor floating-point (batch, d), and all of them the same shape."""
    for name, t in tensors.items():
        _check_float(name, t)
        if t.dim() != 2 or t.shape[0] != batch:
            raise ValueError(f'{name} must have shape ({batch}, d) to match the batch of x, '
                             f'got {tuple(t.shape)}')
    (first, t0), *rest = tensors.items()
    for name, t in rest:
        if t.shape != t0.shape:
            raise ValueError(f'{first} and {name} must have the same shape (B, d), '
                             f'got {first} {tuple(t0.shape)} and {name} {tuple(t.shape)}')


def _check_sigma(sigma):
    """sigma, the decoder's standard deviation: a finite number > 0 (a real number or a 0-dim
    floating-point tensor). Zero gives inf, a negative value acts as |sigma|, NaN spreads."""
    if isinstance(sigma, torch.Tensor):
        _check_float('sigma', sigma)
        if sigma.dim() != 0:
            # a shaped sigma would broadcast the scalar loss into a tensor
            raise ValueError(f'sigma must be a number or a 0-dim tensor, got shape {tuple(sigma.shape)}')
        if _values_hidden(sigma) or _holds(torch.isfinite(sigma) & (sigma > 0)):
            return
        value = sigma.item()
    elif isinstance(sigma, numbers.Real) and not isinstance(sigma, bool):
        value = float(sigma)
        if value > 0 and value != float('inf'):  # False for NaN as well
            return
    else:
        raise TypeError(f'sigma must be a real number or a 0-dim floating-point tensor, got {type(sigma).__name__}')
    raise ValueError(f'sigma must be finite and > 0 (the standard deviation of p(x|z)), got {value}')


def _check_probabilities(x2):
    """Bernoulli targets must lie in [0, 1] (binary, or grey levels read as probabilities): raw
    0-255 pixels would give a negative NLL. One fused min/max pass over x2."""
    if _values_hidden(x2):
        return
    lo, hi = torch.aminmax(x2.detach())
    if _holds((lo >= 0) & (hi <= 1)):  # False for NaN as well
        return
    raise ValueError(f'data x2 must be binary or in [0, 1] for the Bernoulli cross-entropy, got values in '
                     f'[{lo.item():g}, {hi.item():g}]; scale raw 0-255 pixels by 1/255 (data.load_mnist) '
                     f'or binarize them (data.load_binarized_mnist)')


def gaussian_reconstruction(x1, x2, sigma):
    """E_q[ |x - g(z)|^2 / (2 sigma^2) ] (one sample), the handout's reconstruction term; the
    Gaussian normaliser (D/2) log(2 pi sigma^2) is a constant and is left out, as there."""
    _check_pair(x1, x2)
    _check_sigma(sigma)
    return (x2 - x1).pow(2).flatten(1).sum(1).mean() / (2 * sigma ** 2)


def gaussian_elbo(x1, x2, z, sigma, mu, logvar):
    """Negative ELBO with the closed-form KL of Problem 1:
    D(N(mu, diag sigma_q^2) || N(0, I)) = 1/2 sum_i (sigma_q,i^2 + mu_i^2 - 1 - log sigma_q,i^2)."""
    reconstruction = gaussian_reconstruction(x1, x2, sigma)
    _check_latent(x1.shape[0], mu=mu, logvar=logvar, z=z)
    divergence = 0.5 * (logvar.exp() + mu.pow(2) - 1 - logvar).sum(1).mean()
    return reconstruction, divergence


def mc_gaussian_elbo(x1, x2, z, sigma, mu, logvar):
    """Negative ELBO with a one-sample Monte-Carlo KL at the given z ~ q(z|x):
    D(q || r) ~ log q(z|x) - log r(z)
              = sum_i [-1/2 logvar_i - (z_i - mu_i)^2 / (2 exp(logvar_i)) + z_i^2 / 2]
    (the (1/2) log 2pi terms of q and r cancel)."""
    reconstruction = gaussian_reconstruction(x1, x2, sigma)
    _check_latent(x1.shape[0], mu=mu, logvar=logvar, z=z)
    log_q = -0.5 * (logvar + (z - mu).pow(2) / logvar.exp())
    log_r = -0.5 * z.pow(2)
    divergence = (log_q - log_r).sum(1).mean()
    return reconstruction, divergence


def cross_entropy(x1, x2):
    """-log p(x) for Bernoulli logits x1 and data x2 in [0, 1]: sum_i BCE(x1_i, x2_i), batch mean."""
    _check_pair(x1, x2)
    _check_probabilities(x2)
    return F.binary_cross_entropy_with_logits(x1, x2, reduction='sum') / x1.shape[0]


def discrete_output_elbo(x1, x2, z, logqzx):
    """Negative ELBO for binary data: E_q[-log p(x|z)] + D(q || r), one sample z ~ q(z|x), with
    log q(z|x) - log r(z) = (-logqzx - (d/2) log 2pi) - (-|z|^2/2 - (d/2) log 2pi) = |z|^2/2 - logqzx."""
    reconstruction = cross_entropy(x1, x2)
    _check_latent(x1.shape[0], z=z)
    _check_float('logqzx', logqzx)
    if logqzx.shape != (x1.shape[0],):
        raise ValueError(f'logqzx must have shape ({x1.shape[0]},), got {tuple(logqzx.shape)}')
    divergence = (0.5 * z.pow(2).sum(1) - logqzx).mean()
    return reconstruction, divergence
