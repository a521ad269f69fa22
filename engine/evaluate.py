"""Evaluation for CSE 599i Homework 2: the estimators of the handout, each beside its equation.

- neg_elbo: the negative ELBO per test image with one z ~ q(z|x) (Problems 5-6), and for the
  PixelCNN the exact NLL; for Gaussian VAEs both KL estimators on the same z (5b against 5c).
- importance_sampled_nll: log p(x) ~ logsumexp_i [log p(x|z_i) + log r(z_i) - log q(z_i|x)] - log M
  (Problem 2), and its compiled path on the CPU (Compiled).
- active_units: latent dimensions in use (Burda et al. 2016).
Every number is a mean over test images with its standard error; per-image values are kept for
paired comparisons. An evaluation over fewer images than the whole test set covers a seeded
uniform sample of them (test_subset), the same for every part, never a prefix; each value records
which (its 'subset'). Evaluation always runs in float32 (no TF32, deterministic cuDNN kernels).

References
- Importance-weighted log-likelihood estimate and active units: Burda, Grosse & Salakhutdinov 2016,
  "Importance Weighted Autoencoders".
"""
import contextlib
import functools
import hashlib
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from engine import files
import losses
from engine.config import is_quantity, quantities


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
# Which test images an evaluation covers

MNIST_TEST = 10000  # images in MNIST's test set
SUBSET_SEED = 599   # the seed of the uniform sample of test images that every part is evaluated on


@functools.lru_cache(maxsize=4)
def test_permutation(n_total, seed):
    """range(n_total) in a seeded uniformly random order: the indices sorted by sha256 of
    '<seed>:<index>', so the order is the same on every platform and every version of torch and
    Python (the numbers it selects are to be recomputed from committed model files for years)."""
    order = sorted(range(n_total), key=lambda i: hashlib.sha256(f'{seed}:{i}'.encode()).digest())
    return torch.tensor(order, dtype=torch.long)


def test_subset(n_total, n, seed=SUBSET_SEED):
    """The test images an evaluation over n of n_total covers: None for all of them, in test-set
    order (n None, or at least n_total); otherwise a uniform sample without replacement, an (n,)
    int64 tensor of indices into the test set in the order drawn. It is the first n of one seeded
    permutation (test_permutation), so the same n gives the same images in the same order for every
    part and model (paired comparisons pair), and samples are nested: the sample of n is the first n
    of the sample of any larger number."""
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f'a subset of the test images has a positive whole number of images, got {n!r}')
    return None if n >= n_total else test_permutation(n_total, seed)[:n].clone()


test_permutation.__test__ = test_subset.__test__ = False  # not tests, for pytest, where a test module imports them


def images_for(n_total, n, first=False):
    """(index, subset) of an evaluation over n of n_total test images: index as test_subset's (None:
    all), subset its name as metrics.json records it: 'all', 'uniform:<seed>', or with first=True
    'first:<n>' and index arange(n), the images a run recorded before subsets evaluated on."""
    index = test_subset(n_total, n)
    if index is None:
        return None, 'all'
    if first:
        return torch.arange(n), f'first:{n}'
    return index, f'uniform:{SUBSET_SEED}'


def subset_of(value, n_test=MNIST_TEST):
    """Which test images a value of metrics.json covers: its 'subset' ('all' or 'uniform:<seed>');
    for a value recorded before subsets (no 'subset'), 'all' if it covers the whole test set and
    'first:<n>' otherwise, the first n_images test images."""
    if value.get('subset') is not None:
        return value['subset']
    return 'all' if value['n_images'] >= n_test else f'first:{value["n_images"]}'


def subset_images(subset, n_images, n_test=MNIST_TEST):
    """The indices into the test set, in order, of the n_images images a subset names (subset_of's
    names): all n_test, the first n_images, or the uniform sample of n_images with the seed named."""
    kind, _, arg = subset.partition(':')
    if kind == 'all':
        return torch.arange(n_test)
    if kind == 'first':
        return torch.arange(n_images)
    if kind == 'uniform':
        index = test_subset(n_test, n_images, seed=int(arg))
        return torch.arange(n_test) if index is None else index
    raise ValueError(f'unknown subset of the test images {subset!r}; subsets are all, first:<n> and uniform:<seed>')


def index_key(quantity):
    """The key in per_image.pt (and in evaluate's keep) of the test-image indices of a quantity's
    per-image values; absent where they cover every test image in test-set order."""
    return f'{quantity}_index'


def kept_index(kept, quantity, value=None, n_test=MNIST_TEST):
    """The test-image indices of the per-image values kept[quantity] (per_image.pt, or evaluate's keep):
    those saved beside them (index_key); without them, those of the subset of the quantity's value
    in metrics.json (value), or with no value the first len(kept[quantity]) test images."""
    if index_key(quantity) in kept:
        return kept[index_key(quantity)].long()
    n = len(kept[quantity])
    return torch.arange(n) if value is None else subset_images(subset_of(value, n_test), n, n_test)


def pair_by_image(series):
    """Per-image values of several quantities, [(values, index)] with index the test images of each
    (kept_index), each restricted to the test images all of them cover, in the order of the first:
    [values], so that element i of each is the same image, for paired comparisons."""
    common = set.intersection(*(set(index.tolist()) for _, index in series))
    order = [i for i in series[0][1].tolist() if i in common]
    paired = []
    for values, index in series:
        position = {image: p for p, image in enumerate(index.tolist())}
        paired.append(values[torch.tensor([position[i] for i in order], dtype=torch.long)])
    return paired


def subset_words(subset):
    """A subset in words, for messages: 'the whole test set', 'the first 1000', 'a uniform sample, seed 599'."""
    kind, _, arg = subset.partition(':')
    return {'all': 'the whole test set', 'first': f'the first {arg}'}.get(kind, f'a uniform sample, seed {arg}')


# ---------------------------------------------------------------------------------------------
# The negative ELBO per test image, per model kind: {quantity: (B,) per-image values}

def pixelcnn_terms(nets, cfg, xb, gen):
    """-log p(x) = sum_i BCE(logit_i, x_i), exact (6a)."""
    return dict(test_nll=per_image(losses.cross_entropy, nets['pixelcnn'](xb), xb))


def posterior_sample(encoder, xb, gen):
    """z ~ q(z|x) by reparameterisation with seeded eps: z, logqzx (B, 49), (B,) and mu, logvar (B, 49)."""
    h, mu, logvar = encoder.encode(xb)
    z, logqzx = encoder.reparameterize(h, mu, logvar, noise(gen, mu.shape))
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


class EvaluationStopped(Exception):
    """Importance sampling stopped at the time limit; the PartialPass file holds the images done."""

    def __init__(self, path, done, total):
        super().__init__(f'importance sampling stopped at the time limit after {done} of {total} test images; '
                         f'{path} holds them: rerun the same command to resume')
        self.path, self.done, self.total = path, done, total


def fingerprint(*tensors):
    """sha256 of the tensors' dtypes, shapes and bytes, in order: which model, which test images.
    Read on the host as raw bytes, with no conversion on the device (MPS has no float64)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(f'{t.dtype}{tuple(t.shape)}'.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def partial_digest(record):
    """sha256 of what a PartialPass file holds (key, NLLs, seconds, the generator's state and device
    type): saved with it, so that a file changed after it was written is not taken up."""
    h = hashlib.sha256(json.dumps(record['key'], sort_keys=True).encode())
    h.update(fingerprint(record['nll']).encode())
    h.update(repr(float(record['seconds'])).encode())
    h.update(str(record.get('device')).encode())
    if record['generator'] is not None:
        h.update(fingerprint(record['generator']).encode())
    return h.hexdigest()


def copy_generator(generator):
    """A new generator on the same device in the same state."""
    copy = torch.Generator(generator.device)
    copy.set_state(generator.get_state())
    return copy


# How far an NLL computed again for one image, from the same draws, may be from the one its batch gave
# (other kernels for a batch of one, eager instead of compiled): far above float32 rounding (tests hold the
# compiled and the eager pass to 1e-4), far below any change worth making to a number.
SPOT_TOLERANCE = 1e-4

CPU_STATE = torch.Generator().get_state().shape  # a CPU generator's state (Mersenne Twister): 5056 bytes


def saved_device(saved):
    """The device type whose generator made the state in a PartialPass file: recorded in files with a
    digest; in earlier ones 'cpu' if the state has the CPU generator's size, None otherwise."""
    if 'device' in saved:
        return saved['device']
    state = saved.get('generator')
    return 'cpu' if isinstance(state, torch.Tensor) and state.shape == CPU_STATE else None


class PartialPass:
    """An importance-sampling pass saved after each batch of images (their NLLs, the generator's
    state, its device type, the seconds spent and a digest of them all), so that a pass stopped at a
    time limit, or killed, resumes at its next batch and ends with the numbers of an unbroken pass.
    path None: nothing is saved. log: where the messages below go (the run's log; stderr by default).

    A file is taken up only by the very pass that made it, and only if it holds what that pass
    could have saved; otherwise a message says why and the pass starts from the first image:
    - one that cannot be read, or made for another model, other test images or other settings (its
      key differs);
    - one whose generator state was saved on another device type (a CPU generator's state cannot be
      set on a CUDA one, nor the reverse, and the two draw different numbers from one seed), whose
      draws cannot be continued here;
    - one whose number of images is not a whole number of batches (or all of them), or more than the
      pass has; one holding an NLL that is not finite and positive (-log p(x) of a binary image is
      positive: an estimate p(x) >= 1 of a 784-pixel image is no model's);
    - one whose generator state is not where the draws of the images it holds leave the pass's
      generator: checked by making those draws again (replay), about 50 million normals per 1000
      images at M = 1000, a second or so on a CPU;
    - one whose NLL of the first or of the last image it holds is not what those draws give: the two
      are computed again (M samples each, relative tolerance SPOT_TOLERANCE);
    - one whose digest does not match its contents.
    Files written before the digest (key, nll, seconds and generator only: those of passes begun
    before it) are still taken up after every check but the last: a change to their NLLs that keeps
    their number, keeps them finite and positive and leaves the first and the last as they were is
    not detected."""

    def __init__(self, path, stop_at=None, log=None):
        self.path, self.stop_at = path, stop_at
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self.earlier = 0.0  # seconds spent in earlier sittings
        self.started = time.time()

    def resume(self, key, generator, replay=None):
        """The NLLs already computed ([] or [(n,)]) under key, with the generator moved on to where
        they stopped. generator: the pass's, in its state before the first draw (None: the draws are
        given, or torch's global generator's). replay(generator, n): makes the draws of the pass's
        first n images from generator and returns {position: NLL} of some of them computed again from
        those draws (None: neither the generator's state nor any NLL is checked)."""
        if self.path is None or not os.path.exists(self.path):
            return []
        try:
            saved = torch.load(self.path, map_location='cpu', weights_only=True)
            same = saved['key'] == key
        except Exception as err:  # a damaged file costs its compute, never the run
            self.log(f'{self.path} cannot be read ({type(err).__name__}); importance sampling starts from the first '
                     f'image')
            return []
        if not same and generator is not None and self.other_device(saved, key, generator):
            return []
        if not same:
            self.log(f'{self.path} holds importance sampling of another model, other test images or other settings; '
                     f'starting from the first image')
            return []
        try:
            fault = self.fault(saved, key, generator, replay)
        except Exception as err:  # a malformed entry: the same as a damaged file
            fault = f'it could not be checked ({type(err).__name__}: {str(err)[:200]})'
        if fault is not None:
            self.log(f'{self.path} is not taken up: {fault}; importance sampling starts from the first image')
            return []
        if generator is not None:
            try:
                generator.set_state(saved['generator'])
            except (RuntimeError, TypeError):  # a state of another device type's generator (or none)
                self.log(self.moved(saved, generator))
                return []
        self.earlier = saved['seconds']
        print(f'importance sampling resumes after {len(saved["nll"])} images ({self.path})', flush=True)
        return [saved['nll']]

    def moved(self, saved, generator, device=None):
        return (f'{self.path} was saved on another device type' + (f' ({device})' if device else '')
                + f', whose random draws cannot be continued on {generator.device.type}; importance sampling '
                f'restarts its draws from the first image (the {len(saved["nll"])} images done there are computed '
                f'again)')

    def other_device(self, saved, key, generator):
        """True, with the message said, if the file is of this very pass but for its draws, and its
        generator's state is of another device type: its key's draws, the fingerprint of the
        generator's first state, differ only because the device type does."""
        try:
            rest = {k: v for k, v in saved['key'].items() if k != 'draws'}
            device = saved_device(saved)
            elsewhere = (saved['key'].get('draws') is not None and saved.get('generator') is not None
                         and device != generator.device.type)
        except Exception:  # a key that is not a dict: another pass's file
            return False
        if elsewhere and rest == {k: v for k, v in key.items() if k != 'draws'}:
            self.log(self.moved(saved, generator, device))
            return True
        return False

    @staticmethod
    def fault(saved, key, generator, replay):
        """Why a file with the pass's key cannot be taken up (None: it can)."""
        nll, images, batch = saved['nll'], key['images'], key['batch']
        if not isinstance(nll, torch.Tensor) or nll.dim() != 1 or not nll.is_floating_point():
            return 'its NLLs are not a vector of numbers'
        done = len(nll)
        if not 0 < done <= images:
            return f'it holds {done} images, and this pass has {images}'
        if done % batch and done != images:
            return f'its {done} images are not a whole number of batches of {batch} images'
        if not bool((torch.isfinite(nll) & (nll > 0)).all()):
            return 'it holds NLLs that are not finite and positive'
        seconds = saved['seconds']
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < math.inf:
            return f'its seconds ({seconds!r}) are not a time spent'
        if 'digest' in saved and saved['digest'] != partial_digest(saved):
            return 'its contents do not match its digest (the file was changed after it was written)'
        if generator is None:
            return None
        state = saved['generator']
        if not isinstance(state, torch.Tensor) or state.shape != generator.get_state().shape:
            return 'its generator state is not one that this pass\'s generator can take'
        if replay is not None:
            probe = copy_generator(generator)
            again = replay(probe, done)
            if not torch.equal(probe.get_state(), state):
                return f'its generator state is not where the draws of its {done} images leave the generator'
            for k, value in sorted(again.items()):
                if not abs(value - nll[k].item()) <= SPOT_TOLERANCE * (1 + abs(value)):
                    return (f'the NLL it holds for image {k + 1} of the pass, {nll[k].item():.6f}, is not the '
                            f'{value:.6f} that the same draws give')
        return None

    def save(self, key, nll, generator, total):
        """Save the NLLs so far; past the time limit, with images left, raise EvaluationStopped."""
        if self.path is None:
            return
        done = torch.cat(nll).cpu()
        record = dict(key=key, nll=done, seconds=self.earlier + time.time() - self.started,
                      generator=None if generator is None else generator.get_state(),
                      device=None if generator is None else generator.device.type)
        files.atomic_save(dict(record, digest=partial_digest(record)), self.path)
        if self.stop_at is not None and time.time() > self.stop_at and len(done) < total:
            raise EvaluationStopped(self.path, len(done), total)

    def remove(self):
        if self.path is not None and os.path.exists(self.path):
            os.remove(self.path)


def draws_key(generator, eps):
    """What fixes the draws of a pass, for its PartialPass key: the given eps, or the generator's state
    before the first draw (its seed, and its device: CPU and CUDA streams differ); None: torch's global one."""
    if eps is not None:
        return fingerprint(eps)
    return None if generator is None else fingerprint(generator.get_state())


def latent_noise(generator, m, n, mu):
    """(m, n, d) standard normal draws for m samples of each of n images, mu (.., d) giving d, the
    dtype and the device."""
    return torch.randn(m, n, mu.shape[1], generator=generator, device=mu.device, dtype=mu.dtype)


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
    from if it holds part of this very pass (PartialPass says what is checked first).
    """
    fast = compile and x.device.type == 'cpu'
    reparameterize = Compiled(encoder.reparameterize, fast, 'the encoder\'s reparameterize')
    latent_logits = Compiled(decoder.latent_logits, fast, 'the decoder\'s latent_logits')
    partial = partial or PartialPass(None)
    key = dict(images=len(x), samples=samples, chunk=chunk, batch=batch, draws=draws_key(generator, eps),
               autoregress=bool(getattr(decoder, 'autoregress', False)),
               model=fingerprint(*encoder.state_dict().values(), *decoder.state_dict().values()), x=fingerprint(x))

    def replay(gen, done):
        """Make the draws of the first `done` images from gen, as the loop below does, and compute again
        from them the NLLs of the first and the last of those images: {position: NLL}."""
        _, mu, _ = encoder.encode(x[:1])
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

    nll = [t.to(x.device) for t in partial.resume(key, generator, replay)]
    starts = range(sum(map(len, nll)), len(x), batch)
    for i in bar(starts, progress, f'IS NLL, M={samples}'):  # pragma: no mutate (display only)
        xb = x[i:i + batch]                    # (B, 1, 28, 28)
        n = len(xb)
        h, mu, logvar = encoder.encode(xb)     # (B, C, 7, 7), (B, 49), (B, 49)
        pixel = decoder.pixel_logits(xb)       # (B, 1, 28, 28), or 0 without autoregression

        def draw(m, start):
            if eps is None:
                e = latent_noise(generator, m, n, mu)
            else:
                e = eps[i:i + n, start:start + m].transpose(0, 1).to(mu)  # (m, B, 49)
            z, logqzx = reparameterize(*(t.expand(m, *t.shape).flatten(0, 1) for t in (h, mu, logvar)),
                                       e.flatten(0, 1))
            return z.view(m, n, -1), logqzx.view(m, n)  # (m, B, 49), (m, B)

        def log_weight(draws):
            z, logqzx = draws
            m = z.shape[0]
            logits = latent_logits(z.flatten(0, 1)).view(m, n, 1, 28, 28) + pixel  # (m, B, 1, 28, 28)
            log_px_z = -per_image(losses.cross_entropy, logits.flatten(0, 1),
                                  xb.expand(m, *xb.shape).flatten(0, 1)).view(m, n)
            return log_px_z - 0.5 * z.pow(2).sum(-1) + logqzx  # (m, B)

        nll.append(-importance_sample(draw, log_weight, samples, chunk))
        partial.save(key, nll, generator, len(x))
    return torch.cat(nll)


@torch.no_grad()
def importance_sample_naive(encoder, decoder, x, eps, chunk=100):
    """Reference for tests: the course's loop, one image at a time, each chunk of eps (N, M, 49)
    through the full forward pass g(z, x) with x repeated."""
    nll = []
    for xi, ei in zip(x, eps):
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
        h, mu, logvar = encoder.encode(x[i:i + batch])
        if len(encoder.flows) == 0:
            means.append(mu)
            continue
        z = torch.stack([encoder.reparameterize(h, mu, logvar, noise(gen, mu.shape))[0]
                         for _ in range(samples)])  # (S, B, 49)
        means.append(z.mean(0))
        spreads.append(z.var(0))                    # s^2(x), unbiased over the S draws
    variance = torch.cat(means).var(0)  # (49,)
    if spreads:
        variance = variance - torch.cat(spreads).mean(0) / samples
    return dict(value=int((variance > threshold).sum()), stderr=None, n_images=len(x))


def with_index(values, index):
    """Per-image values {quantity: (n,)} with, where they cover a subset of the test images (index not
    None), the indices of those images beside each: {quantity: (n,), <quantity>_index: (n,) int64}."""
    if index is None:
        return dict(values)
    return {**values, **{index_key(k): index.clone() for k in values}}


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
