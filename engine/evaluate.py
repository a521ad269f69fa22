"""Evaluation for CSE 599i Homework 2: the estimators of the handout, each beside its equation.

- neg_elbo: the negative ELBO per test image with one z ~ q(z|x) (Problems 5-6), and for the
  PixelCNN the exact NLL; for Gaussian VAEs both KL estimators on the same z (5b against 5c).
- importance_sampled_nll: log p(x) ~ logsumexp_i [log p(x|z_i) + log r(z_i) - log q(z_i|x)] - log M
  (Problem 2), and its compiled path on the CPU (Compiled).
- active_units: latent dimensions in use (Burda et al. 2016).
Every number is a mean over test images with its standard error; per-image values are kept for
paired comparisons. An evaluation over fewer images than the whole test set covers a seeded
uniform sample of them (engine/subsets.py), the same for every part, never a prefix; each value
records which (its 'subset'). An importance-sampling pass can be stopped and resumed
(engine/partial.py). Evaluation always runs in float32 (no TF32, deterministic cuDNN kernels).

References
- Importance-weighted log-likelihood estimate and active units: Burda, Grosse & Salakhutdinov 2016,
  "Importance Weighted Autoencoders".
"""
import contextlib
import functools
import math
import sys

import torch
import torch.nn.functional as F

import losses
from engine import student
from engine.config import is_quantity, quantities
from engine.partial import PartialPass, draws_key, fingerprint
from engine.subsets import images_for, with_index
# Re-exported: the importance-sampling file and the test-image samples were parts of this module, and
# the training loop, the tests and the docs still name them as evaluate's.
from engine.partial import EvaluationStopped, partial_digest  # noqa: F401
from engine.subsets import (MNIST_TEST, SUBSET_SEED, index_key, kept_index, pair_by_image,  # noqa: F401
                            subset_images, subset_of, subset_words, test_subset)


def bar(items, show, desc, **options):
    """items, drawn as a progress bar on stderr while they are iterated (nothing drawn if not show);
    options: tqdm's, e.g. initial and total. Without a bar, tqdm is not needed (a bare GPU machine)."""
    if not show:
        return items
    from tqdm.auto import tqdm
    return tqdm(items, desc=desc, leave=False, **options)  # pragma: no mutate (display only)


def noise(generator, shape):
    """Standard normal draws of the given shape from a seeded generator, on its device."""
    return torch.randn(shape, generator=generator, device=generator.device)


def per_image(loss, *args):
    """A losses.py function evaluated on each image on its own: its terms as (B,) tensors."""
    return torch.func.vmap(lambda *a: loss(*(t[None] for t in a)))(*args)


def to_host64(values):
    """Per-image values as a float64 tensor on the CPU: float64 never runs on the compute device
    (MPS has none)."""
    return values.detach().cpu().double()


def mean_stderr(values):
    """{value, stderr, n_images} of a (n,) tensor of per-image values: stderr = std / sqrt(n)."""
    v = to_host64(values)
    se = (v.std() / math.sqrt(len(v))).item() if len(v) > 1 else float('nan')
    return dict(value=round(v.mean().item(), 6), stderr=round(se, 6), n_images=len(v))


def new_tf32_api():
    """True where torch sets TF32 per operation (torch.backends.cudnn.conv.fp32_precision and
    torch.backends.cuda.matmul.fp32_precision, torch 2.9 on); older torch has only allow_tf32."""
    return hasattr(torch.backends.cudnn, 'conv') and hasattr(torch.backends.cuda.matmul, 'fp32_precision')


@contextlib.contextmanager
def cuda_numerics(tf32):
    """cuDNN on, deterministic and without benchmark mode (benchmarking picks kernels by timing,
    so a resumed process could pick others: deterministic alone assures the same numbers), and TF32
    in convolutions and matrix products on or off; every flag restored on exit. TF32 is set through
    the per-operation fp32_precision API where torch has it and through the legacy allow_tf32 flags
    only where it has not: torch raises on a mix of the two, and its cudnn.flags() touches the
    legacy flag, so it is used only with the legacy API. The flags act on CUDA only."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    if not new_tf32_api():
        saved = matmul.allow_tf32
        matmul.allow_tf32 = tf32
        try:
            with cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=tf32):
                yield
        finally:
            matmul.allow_tf32 = saved
        return
    precision = 'tf32' if tf32 else 'ieee'
    saved = (cudnn.enabled, cudnn.benchmark, cudnn.deterministic, cudnn.conv.fp32_precision, matmul.fp32_precision)
    try:
        cudnn.enabled, cudnn.benchmark, cudnn.deterministic = True, False, True
        cudnn.conv.fp32_precision = matmul.fp32_precision = precision
        yield
    finally:
        cudnn.enabled, cudnn.benchmark, cudnn.deterministic = saved[:3]
        cudnn.conv.fp32_precision, matmul.fp32_precision = saved[3:]


def float32_eval():
    """Full float32 on CUDA (no TF32 in convolutions or matrix products) and deterministic cuDNN
    kernels, so that `eval` recomputes the same numbers; a no-op elsewhere."""
    return cuda_numerics(tf32=False)


# ---------------------------------------------------------------------------------------------
# The negative ELBO per test image, per model kind: {quantity: (B,) per-image values}

def pixelcnn_terms(nets, cfg, xb, gen):
    """-log p(x) = sum_i BCE(logit_i, x_i), exact (6a)."""
    return dict(test_nll=per_image(losses.cross_entropy, nets['pixelcnn'](xb), xb))


def posterior_sample(encoder, xb, gen):
    """z ~ q(z|x) by reparameterisation with seeded eps: z, logqzx (B, 49), (B,) and mu, logvar (B, 49)."""
    h, mu, logvar = student.fast(encoder, 'encode')(xb)
    z, logqzx = student.fast(encoder, 'reparameterize')(h, mu, logvar, noise(gen, mu.shape))
    return z, logqzx, mu, logvar


def gaussian_vae_terms(nets, cfg, xb, gen):
    """Reconstruction and both KL estimators on the same z ~ q(z|x) (5b: closed form, 5c: one-sample Monte Carlo)."""
    g = nets['decoder']
    z, _, mu, logvar = posterior_sample(nets['encoder'], xb, gen)

    def with_sigma(loss):
        return lambda x1, x2, z, mu, logvar: loss(x1, x2, z, cfg['sigma'], mu, logvar)
    terms = (g(z), xb, z, mu, logvar)
    recon, kl = per_image(with_sigma(losses.gaussian_elbo), *terms)
    _, kl_mc = per_image(with_sigma(losses.mc_gaussian_elbo), *terms)  # the same recon, same z
    return dict(test_elbo=recon + kl, test_elbo_mc=recon + kl_mc, test_recon=recon, kl=kl, kl_mc=kl_mc)


def binary_vae_terms(nets, cfg, xb, gen):
    """-log p(x|z) + log q(z|x) - log r(z) at z ~ q(z|x) (6b-6e)."""
    z, logqzx, _, _ = posterior_sample(nets['encoder'], xb, gen)
    recon, kl = per_image(losses.discrete_output_elbo, nets['decoder'](z, xb), xb, z, logqzx)
    return dict(test_elbo=recon + kl, test_recon=recon, kl=kl)


TEST_TERMS = {'pixelcnn': pixelcnn_terms, 'gaussian_vae': gaussian_vae_terms, 'binary_vae': binary_vae_terms}


@torch.inference_mode()
def neg_elbo(nets, cfg, x, seed, batch=500, progress=False, keep=None):
    """Negative ELBO per test image, one z ~ q(z|x) each (the PixelCNN: exact NLL); returns
    {quantity: {value, stderr, n_images}}; keep, a dict, receives the per-image values."""
    gen = torch.Generator(x.device).manual_seed(seed)
    rows = {}
    with float32_eval():
        starts = range(0, len(x), batch)
        for i in bar(starts, progress, 'test ELBO'):  # pragma: no mutate (display only)
            for k, v in TEST_TERMS[cfg['model']](nets, cfg, x[i:i + batch], gen).items():
                rows.setdefault(k, []).append(v)
    values = {k: torch.cat(v) for k, v in rows.items()}
    if keep is not None:
        keep.update(values)
    return {k: mean_stderr(v) for k, v in values.items()}


# ---------------------------------------------------------------------------------------------
# Importance sampling (Problem 2)

def importance_sample(draw, log_weight, samples, chunk):
    """log (1/M) sum_i w_i with log w_i = log_weight(z_i), z_i ~ q, M = samples (handout,
    Problem 2), drawn `chunk` at a time: draw(m, start) -> m draws; log_weight(draws) -> (m, ...)."""
    log_w = torch.cat([log_weight(draw(min(chunk, samples - j), j)) for j in range(0, samples, chunk)])  # (M, ...)
    return torch.logsumexp(log_w, 0) - math.log(samples)


class Compiled:
    """fn through torch.compile with inductor's freezing, for inference on fixed weights: the
    weights become constants and, on the CPU, each convolution is fused with the ReLU or residual
    add that follows it (oneDNN post-ops), so those never make a separate pass over memory. Same
    function, same arithmetic per element (tests compare with eager). Falls back to calling fn
    itself, with a message, if compilation fails (no C++ compiler, unsupported platform). Compiled
    code is cached by torch between calls; a test checks that its results still follow the weights
    after they are updated in place."""

    def __init__(self, fn, enabled=True, name='function'):
        self.fn, self.name = fn, name
        self.fast = torch.compile(fn, dynamic=False, options={'freezing': True}) if enabled else None

    def __call__(self, *args):
        if self.fast is not None:
            try:
                return self.fast(*args)
            except Exception as err:  # any compiler failure: the eager function computes the same
                print(f'torch.compile of {self.name} failed ({type(err).__name__}: {str(err)[:200]}); '
                      f'running it eagerly', file=sys.stderr, flush=True)
                self.fast = None
        return self.fn(*args)


def latent_noise(generator, m, n, mu):
    """(m, n, d) standard normal draws for m samples of each of n images, mu (.., d) giving d, the
    dtype and the device."""
    return torch.randn(m, n, mu.shape[1], generator=generator, device=mu.device, dtype=mu.dtype)


def batch_noise(generator, eps, first, m, start, mu):
    """(m, B, d) standard normal draws for samples start..start+m of the B images from image `first` on,
    mu (B, d) giving B, d, the dtype and the device: from the generator, or the given eps (N, M, d)."""
    if eps is None:
        return latent_noise(generator, m, len(mu), mu)
    return eps[first:first + len(mu), start:start + m].transpose(0, 1).to(mu)


def batch_nll(encoder, decoder, xb, samples, chunk, noise_for, reparameterize, latent_logits):
    """-log p(x) (B,) of a batch of images xb (B, 1, 28, 28), M = samples draws each, chunk at a time;
    noise_for(m, start, mu) gives the eps of m of them (batch_noise)."""
    n = len(xb)
    h, mu, logvar = student.fast(encoder, 'encode')(xb)     # (B, C, 7, 7), (B, 49), (B, 49)
    pixel = student.fast(decoder, 'pixel_logits')(xb)       # (B, 1, 28, 28), or 0 without autoregression

    def draw(m, start):
        e = noise_for(m, start, mu)        # (m, B, 49)
        z, logqzx = reparameterize(*(t.expand(m, *t.shape).flatten(0, 1) for t in (h, mu, logvar)), e.flatten(0, 1))
        return z.view(m, n, -1), logqzx.view(m, n)  # (m, B, 49), (m, B)

    def log_weight(draws):
        z, logqzx = draws
        m = z.shape[0]
        logits = latent_logits(z.flatten(0, 1)).view(m, n, 1, 28, 28) + pixel  # (m, B, 1, 28, 28)
        log_px_z = -per_image(losses.cross_entropy, logits.flatten(0, 1),
                              xb.expand(m, *xb.shape).flatten(0, 1)).view(m, n)
        return log_px_z - 0.5 * z.pow(2).sum(-1) + logqzx  # (m, B)

    return -importance_sample(draw, log_weight, samples, chunk)


def replay_nll(encoder, decoder, x, samples, chunk, batch, gen, done):
    """Make the draws of the first `done` images from gen, as importance_sampled_nll does, and compute
    again from them the NLLs of the first and the last of those images: {position: NLL}
    (PartialPass's replay)."""
    _, mu, _ = student.fast(encoder, 'encode')(x[:1])
    check = {0: [], done - 1: []}
    for i in range(0, done, batch):
        n = min(batch, len(x) - i)
        for j in range(0, samples, chunk):
            e = latent_noise(gen, min(chunk, samples - j), n, mu)  # (m, n, d)
            for k, draws in check.items():
                if i <= k < i + n:
                    draws.append(e[:, k - i])
    return {k: importance_sampled_nll(encoder, decoder, x[k:k + 1], samples, chunk, 1,
                                      eps=torch.cat(draws)[None]).item() for k, draws in check.items()}


@torch.inference_mode()
def importance_sampled_nll(encoder, decoder, x, samples, chunk, batch, generator=None, eps=None, progress=False,
                           compile=False, partial=None):
    """-log p(x) per image (N,), estimated with M = samples importance samples from q(z|x):

        log p(x) ~ logsumexp_i [log p(x|z_i) + log r(z_i) - log q(z_i|x)] - log M,  z_i ~ q(.|x),

    where log r(z) - log q(z|x) = -|z|^2/2 + logqzx (the (49/2) log 2pi terms cancel). The encoder
    runs once per batch of images; the PixelCNN term pixel_logits(x) does not depend on z and is
    computed once per image; only latent_logits(z) runs per sample. eps (N, M, 49), if given,
    replaces the draws from `generator` (tests compare with importance_sample_naive on it).
    compile: run the per-sample passes (reparameterize, with its IAF steps, and latent_logits)
    through Compiled, on the CPU only (tools/bench.py times it, compiling excluded, and prints how long
    the first call, which compiles, takes). partial, a PartialPass: saved after each batch, resumed
    from if it holds part of this very pass (engine/partial.py says what is checked first).
    """
    fast = compile and x.device.type == 'cpu'
    reparameterize = Compiled(student.fast(encoder, 'reparameterize'), fast, 'the encoder\'s reparameterize')
    latent_logits = Compiled(student.fast(decoder, 'latent_logits'), fast, 'the decoder\'s latent_logits')
    partial = partial or PartialPass(None)
    key = dict(images=len(x), samples=samples, chunk=chunk, batch=batch, draws=draws_key(generator, eps),
               autoregress=bool(getattr(decoder, 'autoregress', False)),
               model=fingerprint(*encoder.state_dict().values(), *decoder.state_dict().values()), x=fingerprint(x))
    replay = functools.partial(replay_nll, encoder, decoder, x, samples, chunk, batch)
    nll = [t.to(x.device) for t in partial.resume(key, generator, replay)]
    starts = range(sum(map(len, nll)), len(x), batch)
    for i in bar(starts, progress, f'IS NLL, M={samples}'):  # pragma: no mutate (display only)
        noise_for = functools.partial(batch_noise, generator, eps, i)
        nll.append(batch_nll(encoder, decoder, x[i:i + batch], samples, chunk, noise_for, reparameterize,
                             latent_logits))
        partial.save(key, nll, generator, len(x))
    return torch.cat(nll)


@torch.no_grad()
def importance_sample_naive(encoder, decoder, x, eps, chunk=100):
    """Reference for tests: the course's loop, one image at a time, each chunk of eps (N, M, 49)
    through the full forward pass g(z, x) with x repeated."""
    nll = []
    for xi, ei in zip(x, eps, strict=True):
        log_w = []
        for j in range(0, len(ei), chunk):
            e = ei[j:j + chunk]
            xe = xi[None].expand(len(e), -1, -1, -1)
            z, logqzx, _, _ = encoder(xe, e)
            logits = decoder(z, xe)
            log_px_z = -F.binary_cross_entropy_with_logits(logits, xe, reduction='none').flatten(1).sum(1)
            log_w.append(log_px_z - 0.5 * z.pow(2).sum(1) + logqzx)
        nll.append(-(torch.logsumexp(torch.cat(log_w), 0) - math.log(len(ei))))
    return torch.stack(nll)


@torch.inference_mode()
def active_units(encoder, x, samples, seed, batch=500, threshold=0.01):
    """Number of latent dimensions d with Var_x(E_q[z_d | x]) > threshold (Burda et al. 2016).

    Without flows E_q[z | x] = mu(x). With flows it is estimated by the mean zbar(x) of S = samples
    draws, whose Monte-Carlo noise adds E_x[Var_q(z_d | x)] / S to the variance across images (about
    1/S for a collapsed dimension, where q = the prior: ten times the threshold at S = 10). That bias
    is removed with the within-image sample variance s_d^2(x), an unbiased estimate of Var_q(z_d | x):
        Var_x(E_q[z_d | x]) ~ Var_x(zbar_d) - mean_x(s_d^2) / S.
    """
    gen = torch.Generator(x.device).manual_seed(seed)
    means, spreads = [], []
    for i in range(0, len(x), batch):
        h, mu, logvar = student.fast(encoder, 'encode')(x[i:i + batch])
        if len(encoder.flows) == 0:
            means.append(mu)
            continue
        z = torch.stack([student.fast(encoder, 'reparameterize')(h, mu, logvar, noise(gen, mu.shape))[0]
                         for _ in range(samples)])  # (S, B, 49)
        means.append(z.mean(0))
        spreads.append(z.var(0))                    # s^2(x), unbiased over the S draws
    variance = torch.cat(means).var(0)  # (49,)
    if spreads:
        variance = variance - torch.cat(spreads).mean(0) / samples
    return dict(value=int((variance > threshold).sum()), stderr=None, n_images=len(x))


NEG_ELBO_QUANTITIES = ('test_elbo', 'test_elbo_mc', 'test_recon', 'kl', 'kl_mc', 'test_nll')


def evaluate(nets, cfg, test_x, only=None, progress=True, keep=None, partial=None, first=False):
    """Every reported number of a part: {quantity: {value, stderr, n_images[, M], subset}}, in
    float32. The test ELBO, its terms and the active units cover cfg['test_images'] test images, the
    importance-sampled NLL cfg['is_images']: all of them (None), or the uniform sample test_subset
    draws, the same for every part and nested (the NLL's sample is within the ELBO's where it is
    smaller). subset names which (images_for): 'all' or 'uniform:<seed>'; first=True takes the first
    n test images instead, 'first:<n>', as runs recorded before subsets did (only to recompute their
    numbers). Each group has its own seeded generator, so `python experiments.py eval` recomputes the
    same numbers. keep, a dict, receives the per-image values of each quantity that has them, and
    beside those over a subset, under index_key(quantity), the indices of their test images.
    partial, a PartialPass, makes the importance sampling resumable."""
    seed = cfg['seed']
    index, subset = images_for(len(test_x), cfg['test_images'], first)
    x = test_x if index is None else test_x[index.to(test_x.device)]
    keep = {} if keep is None else keep
    out = {}
    with float32_eval():
        if only is None or only in NEG_ELBO_QUANTITIES:
            values = {}
            out.update({k: dict(v, subset=subset)
                        for k, v in neg_elbo(nets, cfg, x, seed + 101, progress=progress, keep=values).items()})
            keep.update(with_index(values, index))
        if 'encoder' in nets and (only is None or only == 'active_units'):
            out['active_units'] = dict(active_units(nets['encoder'], x, cfg['au_samples'], seed + 303), subset=subset)
        if cfg['model'] == 'binary_vae' and (only is None or only == is_quantity(cfg)):
            is_index, is_subset = images_for(len(test_x), cfg['is_images'], first)
            gen = torch.Generator(x.device).manual_seed(seed + 202)
            nll = importance_sampled_nll(nets['encoder'], nets['decoder'],
                                         test_x if is_index is None else test_x[is_index.to(test_x.device)],
                                         cfg['is_samples'], cfg['is_chunk'], cfg['is_batch'], generator=gen,
                                         progress=progress, compile=cfg['compile'], partial=partial)
            keep.update(with_index({is_quantity(cfg): nll}, is_index))
            out[is_quantity(cfg)] = dict(mean_stderr(nll), M=cfg['is_samples'], subset=is_subset)
    if only is not None and only not in out:
        raise ValueError(f'part has no quantity {only!r}; it has {", ".join(quantities(cfg))}')
    return out
