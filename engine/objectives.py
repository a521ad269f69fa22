"""The training objective of each model kind for CSE 599i Homework 2: the negative ELBO of Problems 5
and 6 (for 6a the NLL), with the KL weight of a warm-up and free bits for 6e, computed under the
training precision with the losses of losses.py. engine/train.py minimises it.

    loss, recon, kl = objective(nets, cfg, x, eps, beta)   # batch means in nats

References
- KL warm-up: Bowman et al. 2016, "Generating Sentences from a Continuous Space";
  Sønderby et al. 2016, "Ladder Variational Autoencoders".
- Free bits: Kingma et al. 2016, "Improved Variational Inference with Inverse Autoregressive Flow".
"""
import contextlib

import torch

import losses
from engine import student

# Device types whose values the host reads without waiting for a queue of kernels: there the loss
# and its finiteness are read every step and losses.py checks its inputs at every call. Elsewhere
# (CUDA, MPS) a training step reads nothing on the host (see loss_on, and train.Stepping.step).
FREE_READS = ('cpu',)


def kl_weight(step, warmup_steps, start_step=0):
    """beta(step): 1 before start_step, then 0 rising linearly to 1 over warmup_steps (KL warm-up)."""
    if warmup_steps <= 0 or step < start_step:
        return 1.0
    return min(1.0, (step - start_step) / warmup_steps)


def free_bits_kl(kl_terms, free_bits):
    """sum_d max(lambda, mean over the batch of KL_d), kl_terms (B, 49) (Kingma et al. 2016):
    a dimension whose KL is under the floor lambda costs lambda and gets no gradient from it."""
    return torch.clamp(kl_terms.mean(0), min=free_bits).sum()


LOW_PRECISION = {'bf16': torch.bfloat16, 'fp16': torch.float16}


def low_precision(precision, device):
    """The context of the training forward passes. 'fp32' (the default): plain float32, no autocast
    at all (older torch does not accept autocast on every device). 'bf16': torch.autocast to
    bfloat16, so convolutions and matrix products round their inputs to 8-bit mantissas and run on
    the CPU's bfloat16 units (AMX, AVX512-BF16) or the GPU's tensor cores. 'fp16': autocast to
    float16 (10-bit mantissas, but a range that ends at 65504 and underflows below 6e-8), for GPUs
    whose tensor cores have no bfloat16; its gradients are scaled (loss_scaler). Parameters,
    gradients, Adam's state and the losses stay float32, and evaluation always runs in float32.
    Either computes a different function (relative error ~1e-3 per layer): the README sets bf16
    test numbers beside float32 runs, and `python -m tools.bench --bf16-json` measures its speed."""
    if precision == 'fp32':
        return contextlib.nullcontext()
    if precision not in LOW_PRECISION:
        raise ValueError(f'precision must be fp32, {" or ".join(LOW_PRECISION)}, got {precision!r}')
    return torch.autocast(torch.device(device).type, dtype=LOW_PRECISION[precision])


def loss_on(loss, device):
    """losses.py's `loss` as a training step calls it on `device`. Where reads are free (FREE_READS),
    the function itself. Elsewhere it is evaluated as a vmap over a batch of one batch: losses.py
    skips its checks of tensor values under vmap (cross_entropy's data in [0, 1] would otherwise be
    read at every step, stalling the GPU's queue), and check_training_data checks the data once
    instead. The same values; the gradients agree to rounding, not bit for bit, so the CPU, where
    the committed runs were trained, keeps the direct call."""
    if torch.device(device).type in FREE_READS:
        return loss

    def batched(*args):
        dims = tuple(0 if isinstance(a, torch.Tensor) else None for a in args)
        out = torch.func.vmap(loss, in_dims=dims)(*(a[None] if isinstance(a, torch.Tensor) else a for a in args))
        return out[0] if isinstance(out, torch.Tensor) else tuple(t[0] for t in out)
    return batched


def check_training_data(x, device):
    """The training images lie in [0, 1]: what losses.py checks at every call where reads are free,
    checked once per run elsewhere (loss_on)."""
    if torch.device(device).type in FREE_READS:
        return
    lo, hi = torch.aminmax(x)
    if not (lo >= 0 and hi <= 1):
        raise ValueError(f'the training images must lie in [0, 1], got values in [{lo.item():g}, {hi.item():g}]; '
                         f'load them with data.load_mnist or data.load_binarized_mnist')


# ---------------------------------------------------------------------------------------------
# The objective of each model kind: (training objective, reconstruction, KL), batch means in
# nats. Reconstruction + KL is the negative ELBO of the handout (for 6a the NLL, with KL = 0),
# whatever beta and free bits do to the objective.


def pixelcnn_objective(nets, cfg, x, eps, beta):
    """-log p(x) = sum_i BCE(logit_i, x_i) (6a)."""
    with low_precision(cfg['precision'], x.device):
        logits = nets['pixelcnn'](x)
    nll = loss_on(losses.cross_entropy, x.device)(logits.float(), x)
    return nll, nll, torch.zeros_like(nll)


def _encode(nets, cfg, x, eps, decode):
    """z ~ q(z|x) by reparameterisation and the decoder's output, under the training precision. The
    encoder's logqzx comes as its (B, 49) per-dimension terms where it gives them (this project's
    encoder: free bits needs them), else as (B,) (an encoder written to the course's API only)."""
    f = nets['encoder']
    with low_precision(cfg['precision'], x.device):
        z, terms, mu, logvar = student.posterior(f, x, eps, per_dim=student.is_projects(type(f)))
        out = decode(nets['decoder'], z, x)  # (B, 1, 28, 28)
    return tuple(t.float() for t in (z, terms, mu, logvar, out))


def gaussian_vae_objective(nets, cfg, x, eps, beta):
    """||x - g(z)||^2 / (2 sigma^2) + beta KL(q(z|x) || N(0, I)), the KL as losses.py computes it (5b, 5c)."""
    z, terms, mu, logvar, out = _encode(nets, cfg, x, eps, lambda g, z, x: g(z))
    recon, kl = loss_on(getattr(losses, cfg['loss']), x.device)(out, x, z, cfg['sigma'], mu, logvar)
    return recon + beta * kl, recon, kl


def binary_vae_objective(nets, cfg, x, eps, beta):
    """-log p(x|z) + beta (log q(z|x) - log r(z)), one z per image (6b-6e); with free bits the KL
    term is sum_d max(lambda, batch-mean KL_d) instead."""
    z, terms, mu, logvar, out = _encode(nets, cfg, x, eps, lambda g, z, x: g(z, x))
    recon, kl = loss_on(losses.discrete_output_elbo, x.device)(out, x, z, terms.sum(1) if terms.dim() == 2 else terms)
    if cfg['free_bits'] > 0:
        if terms.dim() != 2:
            raise student.NeedsExtrasError(f'free bits needs {student.PER_DIM}, which the encoder here does not give')
        # per-dimension KL estimate log q(z_d|x) - log r(z_d) = z_d^2 / 2 - logqzx_d
        return recon + beta * free_bits_kl(0.5 * z.pow(2) - terms, cfg['free_bits']), recon, kl
    return recon + beta * kl, recon, kl


OBJECTIVES = {'pixelcnn': pixelcnn_objective, 'gaussian_vae': gaussian_vae_objective,
              'binary_vae': binary_vae_objective}


def objective(nets, cfg, x, eps, beta=1.0):
    """The part's training objective, reconstruction and KL on the batch x (B, 1, 28, 28) with
    reparameterisation noise eps (B, 49) (None for the PixelCNN)."""
    return OBJECTIVES[cfg['model']](nets, cfg, x, eps, beta)
