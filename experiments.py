"""The experiment engine of CSE 599i Homework 2: one training loop, one evaluation, one set of
figures for every part of the homework. Each part is a configuration (a dict of plain values).

    python experiments.py all                              # every part; profile chosen by the device
    python experiments.py all --profile cpu --parts 5b,6a  # some parts, a given profile
    python experiments.py run 6b [--fresh] [--epochs N]    # one part (resumes from its checkpoint)
    python experiments.py eval 6b --quantity test_nll_is1000  # recompute one number from results/6b/model.pt
    python experiments.py estimate --profile cpu           # measured throughput and expected time per part
    python experiments.py list [--profile cpu]             # the parts and their settings
    python experiments.py summary                          # rewrite results/summary.{md,json}
    python experiments.py notebooks                        # execute the notebooks in place with the results
    python experiments.py verify                           # rerun every reproduce command, compare

    from experiments import run_part, show                 # what the notebooks do
    metrics = run_part('6b', profile='auto'); show('6b')

Parts (handout numbering; the `full` profile is the course setting, batch 100, Adam):
    5b  Gaussian VAE, closed-form KL (losses.gaussian_elbo), encoder/decoder capacity 128 depth 51
    5c  the same with a one-sample Monte-Carlo KL (losses.mc_gaussian_elbo)
    6a  PixelCNN, binarized MNIST (losses.cross_entropy)
    6b  binary VAE (losses.discrete_output_elbo)
    6c  PixelVAE: 6b with a PixelCNN decoder switched on after AUTOREGRESS_EPOCH warm-up epochs
    6d  6b with 8 steps of IAF in the encoder
    6e-baseline, 6e-warmup, 6e-freebits, 6e-weak: PixelVAE + IAF encoder, plain and with a
        remedy for posterior collapse (KL warm-up, free bits, a weakened PixelCNN)

Profiles: `full` (the course settings above), `cpu` (sized for a 2-core CPU: see PROFILES, every
deviation from `full` is listed there with its reason), `smoke` (seconds per part; for tests).
`auto` is `full` on CUDA and `cpu` otherwise.

Units: nats per image. `test_elbo` is the NEGATIVE evidence lower bound, the training loss
(reconstruction + KL, lower is better); for the Gaussian VAE it omits the constant Gaussian
normaliser, as the handout's loss does. `test_nll` (6a) is the exact -log p(x);
`test_nll_is<M>` is -log p(x) estimated by importance sampling with M samples. Every value is a
mean over test images, reported with its standard error std / sqrt(n).

Files per part, in results/<part>/: checkpoint.pt (training state, rewritten atomically every
epoch and every `checkpoint_minutes`; a rerun resumes from it, --fresh starts over), model.pt
(the trained model, what `eval` loads), metrics.json, history.json (per-iteration curves), and
PNG figures. `all` also writes results/summary.md and results/summary.json.

References
- Importance-weighted log-likelihood estimate and active units: Burda, Grosse & Salakhutdinov 2016,
  "Importance Weighted Autoencoders".
- KL warm-up: Bowman et al. 2016, "Generating Sentences from a Continuous Space";
  Sønderby et al. 2016, "Ladder Variational Autoencoders".
- Free bits: Kingma et al. 2016, "Improved Variational Inference with Inverse Autoregressive Flow".
- Posterior collapse with autoregressive decoders: Chen et al. 2017, "Variational Lossy Autoencoder".
"""
import argparse
import contextlib
import json
import math
import os
import platform
import shlex
import sys
import time

import torch
import torch.nn.functional as F
import torchvision.utils as vutils
from matplotlib.figure import Figure
from tqdm.auto import tqdm

import data
import losses
import models

# ---------------------------------------------------------------------------------------------
# Configuration: DEFAULTS, then the part's settings (PARTS), then the profile's (PROFILES).

AUTOREGRESS_EPOCH = 10  # PixelVAE: epochs of warm-up before g.autoregress = True (course setting)

DEFAULTS = dict(
    model='binary_vae',        # 'gaussian_vae' | 'pixelcnn' | 'binary_vae'
    data='binarized',          # 'mnist': grey levels in [0, 1]; 'binarized': data.load_binarized_mnist
    loss='discrete_output_elbo',  # the function of losses.py that is trained and evaluated
    enc_capacity=32,           # models.VAEEncoder(capacity, depth, flows)
    enc_depth=9,
    flows=0,                   # IAF steps in the encoder (6d, 6e)
    dec_capacity=32,           # the decoder's latent trunk (capacity, depth)
    dec_depth=51,
    autoregress=False,         # PixelVAE: the decoder owns a PixelCNN, switched on at autoregress_epoch
    autoregress_epoch=AUTOREGRESS_EPOCH,
    pixelcnn_capacity=32,      # the PixelCNN of 6a, or of the PixelVAE decoder
    pixelcnn_depth=9,
    sigma=0.03,                # Gaussian VAE: p(x|z) = N(g(z), sigma^2 I)
    lr=1e-3,                   # Adam learning rate
    lr_drop_epoch=None,        # from this epoch on, lr = lr_late (None: never)
    lr_late=3e-4,
    epochs=60,
    batch_size=100,
    kl_warmup=0,               # epochs over which the KL weight beta rises 0 -> 1 (0: beta = 1)
    kl_warmup_start=0,         # epoch at which that rise starts (beta = 1 before it)
    free_bits=0.0,             # lambda: train on sum_d max(lambda, batch-mean KL_d) (0: off)
    train_images=None,         # train on the first n training images (None: all 60000)
    test_images=None,          # test ELBO / NLL / KL / active units on the first n (None: all 10000)
    monitor_images=None,       # test loss after each epoch on the first n test images (None: all)
    is_images=None,            # importance-sampled NLL on the first n test images (None: all)
    is_samples=1000,           # M, samples z_i ~ q(z|x) per image
    is_batch=100,              # images per encoder pass in importance sampling
    is_chunk=100,              # samples per image per decoder pass (is_batch * is_chunk latents)
    au_samples=10,             # draws of z averaged to estimate E_q[z_d] for active units (flows > 0)
    n_samples=49,              # images in the samples figure (a 7x7 grid)
    layout='course',           # models.py layout: 'course' (the framework's), 'v1' (the networks of the committed cpu runs)
    iaf_depth=9,               # masked residual blocks per IAF step (the framework's IAF(filters, depth=9))
    init_output_bias=False,    # Gaussian VAE: start the decoder's output bias at the logit of the mean image
    precision='fp32',          # 'bf16': training forward passes in bfloat16 (opt-in, see low_precision)
    compile=True,              # importance sampling through torch.compile on the CPU (see Compiled); False: eager
    seed=0,                    # torch.manual_seed at part start; shuffling, noise and eval seeds derive from it
    checkpoint_minutes=10,     # also checkpoint mid-epoch this often (always at the end of an epoch)
)

GAUSSIAN = dict(model='gaussian_vae', data='mnist', enc_capacity=128, enc_depth=51,
                dec_capacity=128, dec_depth=51, lr=3e-4, epochs=20)
PIXELVAE_IAF = dict(flows=8, autoregress=True, epochs=20)

PARTS = {  # the course settings (`full` profile), on top of DEFAULTS
    '5b': dict(GAUSSIAN, loss='gaussian_elbo'),
    '5c': dict(GAUSSIAN, loss='mc_gaussian_elbo'),
    '6a': dict(model='pixelcnn', loss='cross_entropy', epochs=40, lr_drop_epoch=30),
    '6b': dict(epochs=60, lr_drop_epoch=40),
    '6c': dict(autoregress=True, epochs=20),
    '6d': dict(flows=8, epochs=60, lr_drop_epoch=40),
    '6e-baseline': dict(PIXELVAE_IAF),
    # beta rises 0 -> 1 over 5 epochs from the epoch the PixelCNN is switched on
    '6e-warmup': dict(PIXELVAE_IAF, kl_warmup=5, kl_warmup_start=AUTOREGRESS_EPOCH),
    '6e-freebits': dict(PIXELVAE_IAF, free_bits=0.25),  # 0.25 nats per latent dimension, 12.25 in all
    '6e-weak': dict(PIXELVAE_IAF, pixelcnn_depth=1),     # one masked block: a receptive field of a few rows
}

TITLES = {
    '5b': 'Gaussian VAE, closed-form KL',
    '5c': 'Gaussian VAE, Monte-Carlo KL',
    '6a': 'PixelCNN',
    '6b': 'binary VAE',
    '6c': 'PixelVAE',
    '6d': 'binary VAE, IAF encoder',
    '6e-baseline': 'PixelVAE + IAF, no remedy',
    '6e-warmup': 'PixelVAE + IAF, KL warm-up',
    '6e-freebits': 'PixelVAE + IAF, free bits',
    '6e-weak': 'PixelVAE + IAF, weak PixelCNN',
}

CPU_6E = dict(dec_depth=11, pixelcnn_depth=5, epochs=4, autoregress_epoch=2, is_images=500)
PROFILES = {
    'full': {},
    # Every deviation from `full`, and why. Training images/s on a shared 2-core x86-64 CPU,
    # batch 100 (the same machine measured twice, an hour apart): Gaussian VAE capacity 128
    # depth 51: 3-6 (capacity 64 depth 5: 520-650); PixelCNN 32/9: 105-220; binary VAE with
    # decoder depth 51: 350 (depth 21: 520-560, importance sampling 2300-2800 samples/s); with 8
    # IAF steps: 290-340; PixelVAE (decoder depth 21 + PixelCNN 32/9): 97-120.
    # Sized so 5b, 5c, 6a, 6b, 6c, 6d take 1.5-2.2 h together on that CPU, evaluation included
    # (`python experiments.py estimate --profile cpu` measures this machine); 6e comes on top.
    'cpu': {
        '*': dict(
            layout='v1',            # the networks the committed cpu runs were trained with (see CPU_REASONS)
            init_output_bias=True,  # Gaussian VAE output bias at the logit of the mean image (see CPU_REASONS)
            monitor_images=1000,    # per-epoch test loss on 1000 test images (the final test ELBO uses all 10000)
            is_images=1000,         # IS NLL on the first 1000 test images, M = 1000 (full: all 10000)
            is_batch=20,            # 20 images x 100 samples per decoder pass
        ),
        # encoder and decoder capacity 64 depth 5 (full: 128, 51: ~5 images/s, 70 h); 6 epochs (full: 20)
        '5b': dict(enc_capacity=64, enc_depth=5, dec_capacity=64, dec_depth=5, epochs=6),
        '5c': dict(enc_capacity=64, enc_depth=5, dec_capacity=64, dec_depth=5, epochs=6),
        # the course PixelCNN; 4 epochs with lr 3e-4 in the last (full: 40, from epoch 30)
        '6a': dict(epochs=4, lr_drop_epoch=3),
        # decoder depth 21 (full: 51), 8 epochs, lr 3e-4 from epoch 6 (full: 60, from 40)
        '6b': dict(dec_depth=21, epochs=8, lr_drop_epoch=6),
        # decoder depth 21 + the course PixelCNN; 2 warm-up epochs + 2 autoregressive (full: 10 + 10)
        '6c': dict(dec_depth=21, epochs=4, autoregress_epoch=2),
        # decoder depth 21, 8 IAF steps; 4 epochs, lr 3e-4 in the last (full: 60, from 40)
        '6d': dict(dec_depth=21, epochs=4, lr_drop_epoch=3),
        # 6e, all alike: decoder depth 11, PixelCNN depth 5 (full: 51, 9), 2 warm-up epochs +
        # 2 autoregressive (full: 10 + 10), IS NLL on 500 test images
        '6e-baseline': dict(CPU_6E),
        '6e-warmup': dict(CPU_6E, kl_warmup=1, kl_warmup_start=2),
        '6e-freebits': dict(CPU_6E),
        '6e-weak': dict(CPU_6E, pixelcnn_depth=1),
    },
    # Seconds per part: tiny models, a few hundred images, a couple of iterations per epoch.
    'smoke': {
        '*': dict(enc_capacity=8, enc_depth=1, dec_capacity=8, dec_depth=1, pixelcnn_capacity=8,
                  pixelcnn_depth=1, epochs=2, autoregress_epoch=1, lr_drop_epoch=None,
                  train_images=200, test_images=100, monitor_images=50, is_images=10,
                  is_samples=16, is_batch=5, is_chunk=8, au_samples=2, n_samples=16, compile=False, iaf_depth=1),
        '6d': dict(flows=2),
        '6e-baseline': dict(flows=2),
        '6e-warmup': dict(flows=2, kl_warmup=1, kl_warmup_start=1),
        '6e-freebits': dict(flows=2),
        '6e-weak': dict(flows=2, pixelcnn_depth=0),
    },
}
# Settings added after some results were saved, and what a saved configuration without them meant.
SINCE = dict(layout='v1', init_output_bias=True)
# Why a profile departs from the course framework's networks and initialisation (`list` prints it).
CPU_REASONS = dict(
    layout="the committed cpu runs were trained with layout 'v1' of models.py (a ReLU before the output "
           "convolution instead of after the embedding, biased embeddings, PyTorch's default initialisation of "
           "the VAE networks, a one-block IAF with a joint m/s head); it is kept so that their model files "
           "load and every reported number reproduces",
    init_output_bias="Gaussian VAE: the decoder's output bias starts at the logit of the mean training image; "
                     "measured in this profile: without it the run stalled at the all-black image (test -ELBO "
                     "45,288 with KL -> 0 after 5 epochs), with it the test -ELBO was 3,229.8 after one epoch",
)
REASONS = dict(cpu=CPU_REASONS, smoke=dict(layout='see cpu'))
RESUMABLE = ('compile', 'epochs', 'test_images', 'monitor_images', 'is_images', 'is_samples', 'is_batch',
             'is_chunk', 'au_samples', 'n_samples', 'checkpoint_minutes')  # may change between runs


def config(part, profile='full', **overrides):
    """The settings of one part: DEFAULTS < PARTS[part] < PROFILES[profile] < overrides."""
    if part not in PARTS:
        raise ValueError(f'unknown part {part!r}; the parts are {", ".join(PARTS)}')
    if profile not in PROFILES:
        raise ValueError(f'unknown profile {profile!r}; the profiles are {", ".join(PROFILES)} and auto')
    cfg = dict(DEFAULTS)
    for layer in (PARTS[part], PROFILES[profile].get('*', {}), PROFILES[profile].get(part, {})):
        cfg.update(layer)
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise ValueError(f'unknown setting(s) {sorted(unknown)}; the settings are {sorted(cfg)}')
    cfg.update(overrides)
    check_precision(cfg['precision'])
    models._check_layout(cfg['layout'])
    cfg['epochs'] = as_int(cfg['epochs'], 'epochs', minimum=1)
    return cfg


def as_bool(value, name):
    """A parameter meant as a boolean: True/False, 1/0, or the strings true/false/1/0/yes/no (any case),
    as papermill's -p passes them; anything else is an error naming the parameter."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ('true', '1', 'yes', 'false', '0', 'no'):
        return value.strip().lower() in ('true', '1', 'yes')
    raise ValueError(f'{name} must be true or false (True/False, 1/0), got {value!r}')


def as_int(value, name, allowed=None, minimum=None):
    """A parameter meant as an integer (an int, or a string of digits); checked against the allowed values."""
    if isinstance(value, str) and value.strip().lstrip('+-').isdigit():
        value = int(value.strip())
    ok = isinstance(value, int) and not isinstance(value, bool)
    if ok and allowed is not None and value not in allowed:
        ok = False
    if ok and minimum is not None and value < minimum:
        ok = False
    if not ok:
        wanted = (f'one of {", ".join(map(str, allowed))}' if allowed is not None
                  else f'an integer >= {minimum}' if minimum is not None else 'an integer')
        raise ValueError(f'{name} must be {wanted}, got {value!r}')
    return value


REMEDIES = ('baseline', 'warmup', 'freebits', 'weak')


def part_for(autoregress=False, flows=0, remedy=None):
    """The part that binaryvae.ipynb's parameters select (strings from papermill's -p are parsed)."""
    autoregress, flows = as_bool(autoregress, 'autoregress'), as_int(flows, 'flows', allowed=(0, 8))
    if isinstance(remedy, str) and remedy.strip().lower() in ('', 'none'):
        remedy = None
    if remedy is not None:
        if remedy not in REMEDIES:
            raise ValueError(f'remedy must be None or one of {", ".join(REMEDIES)}, got {remedy!r}')
        return f'6e-{remedy}'
    return {(False, 0): '6b', (True, 0): '6c', (False, 8): '6d', (True, 8): '6e-baseline'}[(autoregress, flows)]


def run_dir(results_dir, profile, precision='fp32'):
    """Where a profile's results live: results_dir/<profile>, or results_dir/<profile>-<precision> when
    training was not float32; runs at different settings never share files."""
    check_precision(precision)
    return os.path.join(results_dir, profile if precision == 'fp32' else f'{profile}-{precision}')


def pick_device(device=None):
    """CUDA, else MPS, else CPU, unless a device is named."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device('cuda')
    if getattr(torch.backends, 'mps', None) is not None and torch.backends.mps.is_available():
        return torch.device('mps')
    return torch.device('cpu')


def describe_hardware(device):
    """The hardware a run used, in words: 'CPU (x86_64), 2 cores' or the GPU's name."""
    device = torch.device(device)
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    if device.type == 'mps':
        return 'Apple GPU (MPS)'
    return f'CPU ({platform.machine()}), {os.cpu_count()} cores'


def pick_profile(profile, device, quiet=False):
    """'auto' is the course's settings ('full') on CUDA and 'cpu' elsewhere."""
    if profile == 'auto':
        profile = 'full' if device.type == 'cuda' else 'cpu'
        if not quiet:
            print(f"profile 'auto' -> '{profile}' (device {device})", flush=True)
    if profile not in PROFILES:
        raise ValueError(f'unknown profile {profile!r}; the profiles are {", ".join(PROFILES)} and auto')
    return profile


# ---------------------------------------------------------------------------------------------
# Data and models

_DATA = {}


def load_data(cfg, train):
    """(N, 1, 28, 28) float32 images, cached per process; the first train_images / all test images."""
    key = (cfg['data'], train)
    if key not in _DATA:
        _DATA[key] = data.load_mnist(train) if cfg['data'] == 'mnist' else data.load_binarized_mnist(train)
    x = _DATA[key]
    return x[:cfg['train_images']] if train else x


def model_spec(cfg):
    """{name: (class name in models.py, constructor kwargs)}: what rebuilds the part's models."""
    layout = cfg['layout']
    if cfg['model'] == 'pixelcnn':
        return {'pixelcnn': ('PixelCNN', dict(capacity=cfg['pixelcnn_capacity'], depth=cfg['pixelcnn_depth'],
                                              layout=layout))}
    encoder = ('VAEEncoder', dict(capacity=cfg['enc_capacity'], depth=cfg['enc_depth'], flows=cfg['flows'],
                                  iaf_depth=cfg['iaf_depth'], layout=layout))
    if cfg['model'] == 'gaussian_vae':
        return {'encoder': encoder, 'decoder': ('GaussianVAEDecoder', dict(
            capacity=cfg['dec_capacity'], depth=cfg['dec_depth'], layout=layout))}
    return {'encoder': encoder,
            'decoder': ('DiscreteVAEDecoder', dict(
                capacity=cfg['dec_capacity'], depth=cfg['dec_depth'], autoregress=cfg['autoregress'],
                pixelcnn_capacity=cfg['pixelcnn_capacity'], pixelcnn_depth=cfg['pixelcnn_depth'], layout=layout))}


def adam(params, lr):
    """Adam; the fused kernel where it exists (CPU, CUDA): the same update in one pass over all
    parameters, instead of a dozen small tensor operations per parameter (on the CPU those are
    slow when a convolution returns its weight gradient in channels-last layout)."""
    params = list(params)
    fused = all(p.device.type in ('cpu', 'cuda') for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused)


def build(spec, device):
    return {name: getattr(models, cls)(**kwargs).to(device) for name, (cls, kwargs) in spec.items()}


def init_output_bias(nets, cfg, device):
    """Gaussian VAE: start the decoder's per-pixel output bias at the logit of the mean training
    image, so that g(z) starts at the mean digit. From a bias of 0 (every pixel 0.5), the
    reconstruction term ||x - g(z)||^2 / (2 sigma^2) at sigma = 0.03 drives most logits far
    below zero in the first steps, where the sigmoid's slope vanishes: the decoder then outputs
    black images and neither its pixels nor the latent recover (seen in training: test -ELBO stuck
    at the all-black level, KL falling to 0). Starting at the mean digit keeps every logit where
    its gradient is alive. Only the initial values change; a checkpoint's weights replace them."""
    if cfg['model'] != 'gaussian_vae' or not cfg['init_output_bias']:
        return
    mean = load_data(cfg, train=True).mean(0)[0].clamp(1e-3, 1 - 1e-3)  # (28, 28)
    with torch.no_grad():
        nets['decoder'].bias.copy_(torch.logit(mean).to(device))


def noise(generator, shape, device):
    return torch.randn(shape, generator=generator, device=device)


def per_image(loss, *args):
    """A losses.py function evaluated on each image on its own: its terms as (B,) tensors."""
    return torch.func.vmap(lambda *a: loss(*(t[None] for t in a)))(*args)


def mean_stderr(values):
    """{value, stderr, n_images} of a (n,) tensor of per-image values: stderr = std / sqrt(n)."""
    v = values.double().cpu()
    se = (v.std() / math.sqrt(len(v))).item() if len(v) > 1 else float('nan')
    return dict(value=round(v.mean().item(), 6), stderr=round(se, 6), n_images=len(v))


# ---------------------------------------------------------------------------------------------
# The objective

def kl_weight(step, warmup_steps, start_step=0):
    """beta(step): 1 before start_step, then 0 rising linearly to 1 over warmup_steps (KL warm-up)."""
    if warmup_steps <= 0 or step < start_step:
        return 1.0
    return min(1.0, (step - start_step) / warmup_steps)


def free_bits_kl(kl_terms, free_bits):
    """sum_d max(lambda, mean over the batch of KL_d), kl_terms (B, 49) (Kingma et al. 2016):
    a dimension whose KL is under the floor lambda costs lambda and gets no gradient from it."""
    return torch.clamp(kl_terms.mean(0), min=free_bits).sum()


PRECISIONS = ('fp32', 'bf16')


def check_precision(precision):
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {", ".join(PRECISIONS)}, got {precision!r}')


def low_precision(precision, device):
    """The context of the training forward passes. 'fp32' (the default): plain float32, the same
    arithmetic as evaluation. 'bf16' (opt-in): torch.autocast to bfloat16, so convolutions and
    matrix products round their inputs to 8-bit mantissas and run on the CPU's bfloat16 units
    (AMX, AVX512-BF16) or the GPU's tensor cores; parameters, gradients, Adam's state and the
    losses stay float32, and evaluation always runs in float32. It computes a different function
    (relative error ~1e-3 per layer), so it is never on by default: compare its test numbers with
    a float32 run before trusting it (README, Speed). On a CPU without bfloat16 units it need not
    be faster: `python bench.py --bf16-json` measures a machine."""
    check_precision(precision)
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == 'bf16')


def objective(nets, cfg, x, eps, beta=1.0):
    """(training objective, reconstruction, KL), batch means in nats; reconstruction + KL is the
    negative ELBO of the handout (for 6a the NLL, with KL = 0), whatever beta and free bits do.
    The networks run under low_precision(cfg['precision']); the losses always in float32."""
    loss = getattr(losses, cfg['loss'])
    with low_precision(cfg['precision'], x.device):
        if cfg['model'] == 'pixelcnn':
            logits = nets['pixelcnn'](x)
        else:
            f, g = nets['encoder'], nets['decoder']
            h, mu, logvar = f.encode(x)                                   # (B, C, 7, 7), (B, 49), (B, 49)
            z, terms = f.reparameterize(h, mu, logvar, eps, per_dim=True)  # (B, 49), (B, 49)
            out = g(z) if cfg['model'] == 'gaussian_vae' else g(z, x)     # (B, 1, 28, 28)
    if cfg['model'] == 'pixelcnn':
        nll = loss(logits.float(), x)
        return nll, nll, torch.zeros_like(nll)
    z, terms, mu, logvar, out = (t.float() for t in (z, terms, mu, logvar, out))
    if cfg['model'] == 'gaussian_vae':
        recon, kl = loss(out, x, z, cfg['sigma'], mu, logvar)
        return recon + beta * kl, recon, kl
    recon, kl = loss(out, x, z, terms.sum(1))
    if cfg['free_bits'] > 0:
        # per-dimension KL estimate log q(z_d|x) - log r(z_d) = z_d^2 / 2 - logqzx_d
        return recon + beta * free_bits_kl(0.5 * z.pow(2) - terms, cfg['free_bits']), recon, kl
    return recon + beta * kl, recon, kl


# ---------------------------------------------------------------------------------------------
# Evaluation

@torch.inference_mode()
def test_elbo(nets, cfg, x, seed, batch=500, progress=False):
    """Negative ELBO per test image, one z ~ q(z|x) each; {quantity: {value, stderr, n_images}}.
    Gaussian VAEs get both KL estimators on the same z: closed form (test_elbo) and Monte Carlo
    (test_elbo_mc), so 5b and 5c compare directly."""
    device = x.device
    gen = torch.Generator(device).manual_seed(seed)
    rows = {}
    for i in tqdm(range(0, len(x), batch), desc='test ELBO', leave=False, disable=not progress):
        xb = x[i:i + batch]
        if cfg['model'] == 'pixelcnn':
            parts = dict(test_nll=per_image(losses.cross_entropy, nets['pixelcnn'](xb), xb))
        else:
            f, g = nets['encoder'], nets['decoder']
            h, mu, logvar = f.encode(xb)
            z, logqzx = f.reparameterize(h, mu, logvar, noise(gen, mu.shape, device))
            if cfg['model'] == 'gaussian_vae':
                def with_sigma(loss):
                    return lambda x1, x2, z, mu, logvar: loss(x1, x2, z, cfg['sigma'], mu, logvar)
                terms = (g(z), xb, z, mu, logvar)
                recon, kl = per_image(with_sigma(losses.gaussian_elbo), *terms)
                _, kl_mc = per_image(with_sigma(losses.mc_gaussian_elbo), *terms)  # the same recon, same z
                parts = dict(test_elbo=recon + kl, test_elbo_mc=recon + kl_mc, test_recon=recon, kl=kl, kl_mc=kl_mc)
            else:
                recon, kl = per_image(losses.discrete_output_elbo, g(z, xb), xb, z, logqzx)
                parts = dict(test_elbo=recon + kl, test_recon=recon, kl=kl)
        for k, v in parts.items():
            rows.setdefault(k, []).append(v)
    return {k: mean_stderr(torch.cat(v)) for k, v in rows.items()}


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


@torch.inference_mode()
def importance_sampled_nll(encoder, decoder, x, samples, chunk, batch, generator=None, eps=None, progress=False,
                           compile=False):
    """-log p(x) per image (N,), estimated with M = samples importance samples from q(z|x):

        log p(x) ~ logsumexp_i [log p(x|z_i) + log r(z_i) - log q(z_i|x)] - log M,  z_i ~ q(.|x),

    where log r(z) - log q(z|x) = -|z|^2/2 + logqzx (the (49/2) log 2pi terms cancel). The encoder
    runs once per batch of images; the PixelCNN term pixel_logits(x) does not depend on z and is
    computed once per image; only latent_logits(z) runs per sample. eps (N, M, 49), if given,
    replaces the draws from `generator` (tests compare with importance_sample_naive on it).
    compile: run the per-sample passes (reparameterize, with its IAF steps, and latent_logits)
    through Compiled, on the CPU only (bench.py times it, compiling excluded, and prints how long
    the first call, which compiles, takes).
    """
    fast = compile and x.device.type == 'cpu'
    reparameterize = Compiled(encoder.reparameterize, fast, 'the encoder\'s reparameterize')
    latent_logits = Compiled(decoder.latent_logits, fast, 'the decoder\'s latent_logits')
    nll = []
    for i in tqdm(range(0, len(x), batch), desc=f'IS NLL, M={samples}', leave=False, disable=not progress):
        xb = x[i:i + batch]                    # (B, 1, 28, 28)
        n = len(xb)
        h, mu, logvar = encoder.encode(xb)     # (B, C, 7, 7), (B, 49), (B, 49)
        pixel = decoder.pixel_logits(xb)       # (B, 1, 28, 28), or 0 without autoregression

        def draw(m, start):
            if eps is None:
                e = torch.randn(m, n, mu.shape[1], generator=generator, device=x.device, dtype=mu.dtype)
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
    """Number of latent dimensions d with Var_x(E_q[z_d]) > threshold (Burda et al. 2016). E_q[z]
    is mu without flows, else the average of `samples` draws."""
    gen = torch.Generator(x.device).manual_seed(seed)
    means = []
    for i in range(0, len(x), batch):
        h, mu, logvar = encoder.encode(x[i:i + batch])
        if len(encoder.flows) == 0:
            means.append(mu)
            continue
        z = [encoder.reparameterize(h, mu, logvar, noise(gen, mu.shape, x.device))[0] for _ in range(samples)]
        means.append(torch.stack(z).mean(0))
    variance = torch.cat(means).var(0)  # (49,)
    return dict(value=int((variance > threshold).sum()), stderr=None, n_images=len(x))


def is_quantity(cfg):
    return f"test_nll_is{cfg['is_samples']}"


def evaluate(nets, cfg, test_x, only=None, progress=True):
    """Every reported number of a part: {quantity: {value, stderr, n_images[, M]}}. Each group has
    its own seeded generator, so `python experiments.py eval` recomputes the same numbers; on CUDA
    in full float32 (no TF32) with deterministic cuDNN kernels."""
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False):
        return _evaluate(nets, cfg, test_x, only, progress)


def _evaluate(nets, cfg, test_x, only, progress):
    seed = cfg['seed']
    x = test_x[:cfg['test_images']]
    out = {}
    if only is None or only in ('test_elbo', 'test_elbo_mc', 'test_recon', 'kl', 'kl_mc', 'test_nll'):
        out.update(test_elbo(nets, cfg, x, seed + 101, progress=progress))
    if cfg['model'] != 'pixelcnn' and (only is None or only == 'active_units'):
        out['active_units'] = active_units(nets['encoder'], x, cfg['au_samples'], seed + 303)
    if cfg['model'] == 'binary_vae' and (only is None or only == is_quantity(cfg)):
        gen = torch.Generator(x.device).manual_seed(seed + 202)
        nll = importance_sampled_nll(nets['encoder'], nets['decoder'], test_x[:cfg['is_images']], cfg['is_samples'],
                                     cfg['is_chunk'], cfg['is_batch'], generator=gen, progress=progress,
                                     compile=cfg['compile'])
        out[is_quantity(cfg)] = dict(mean_stderr(nll), M=cfg['is_samples'])
    if only is not None and only not in out:
        raise ValueError(f'part has no quantity {only!r}; it has {", ".join(quantities(cfg))}')
    return out


def quantities(cfg):
    """The numbers a part reports (summary.json); metrics.json holds a few more (test_recon, kl_mc)."""
    if cfg['model'] == 'pixelcnn':
        return ['test_nll']
    if cfg['model'] == 'gaussian_vae':
        return ['test_elbo', 'test_elbo_mc', 'kl', 'active_units']
    return ['test_elbo', is_quantity(cfg), 'kl', 'active_units']


# ---------------------------------------------------------------------------------------------
# Checkpoints

class CheckpointError(RuntimeError):
    """A checkpoint or model file that cannot be used."""


class NonFiniteLossError(FloatingPointError):
    """Training met a NaN or infinite loss."""


def atomic_save(obj, path):
    """torch.save through a temporary file and os.replace: readers see the old file or the new one,
    never half of one. On failure the temporary file is removed and the error names the path."""
    data.atomic_save(obj, path)


def load_file(path, advice='rerun with --fresh (fresh=True) or delete it'):
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise CheckpointError(f'{path} is corrupt or unreadable ({type(e).__name__}: {e}); '
                              + advice.replace('PATH', path).replace('PART', os.path.basename(os.path.dirname(path)))) from e


def model_record(nets, spec):
    """{name: {class, kwargs, state_dict}}: models.<class>(**kwargs) then load_state_dict rebuilds it."""
    return {name: dict(cls=spec[name][0], kwargs=spec[name][1], state_dict=net.state_dict())
            for name, net in nets.items()}


def model_kwargs(r):
    """The constructor arguments of a model record; one without a layout was written by layout v1."""
    return {'layout': 'v1', **r['kwargs']}


def model_state(r):
    """The state dict of a model record, under today's parameter names."""
    return r['state_dict'] if 'layout' in r['kwargs'] else models.upgrade_v1_state_dict(r['state_dict'])


def load_models(record, device, autoregress=False):
    nets = {}
    for name, r in record.items():
        nets[name] = getattr(models, r['cls'])(**model_kwargs(r)).to(device)
        nets[name].load_state_dict(model_state(r))
        nets[name].eval()
    if 'decoder' in nets and hasattr(nets['decoder'], 'autoregress'):
        nets['decoder'].autoregress = autoregress
    return nets


def say(out, message):
    """Print a line and append it, time-stamped, to out/run.log (the part's run log)."""
    print(message, flush=True)
    with open(os.path.join(out, 'run.log'), 'a') as fh:
        fh.write(f'{time.strftime("%Y-%m-%d %H:%M:%S")}  {message}\n')


def with_defaults(cfg):
    """A saved configuration, with the settings added since it was saved at what they meant then
    (SINCE), or else at their defaults."""
    return {**DEFAULTS, **SINCE, **cfg}


def total_grad_norm(params):
    """The Euclidean norm of every gradient together: NaN or inf as soon as one entry is."""
    grads = [p.grad for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).item() if grads else 0.0


def stop_message(part, state, path, saved, what):
    """Why a run stops on a non-finite number, where, and which checkpoint is kept."""
    where = f'epoch {state["epoch"] + 1}, batch {state["batch"]} of the epoch, step {state["step"]}'
    kept = (f'the last good checkpoint, {path}, holds epoch {saved["epoch"]} + {saved["batch"]} batches and was '
            f'not overwritten; rerunning resumes from it' if saved else
            f'no checkpoint had been written yet ({path} does not exist); a rerun starts from scratch')
    return (f'part {part}: {what} at {where}; training stopped, nothing non-finite was saved: {kept}. '
            f'A rerun with the same settings meets the same numbers: lower the learning rate (lr) or use '
            f'--precision fp32 if this was a bf16 run.')


def settings_differ(a, b):
    a, b = with_defaults(a), with_defaults(b)
    return sorted(k for k in set(a) | set(b) if k not in RESUMABLE and a.get(k) != b.get(k))


# ---------------------------------------------------------------------------------------------
# Training

def train(part, cfg, nets, out, device, progress=True):
    """Train the part's models, resuming from out/checkpoint.pt if present. Returns the state:
    {epoch, batch, step, train_seconds, history, autoregress, ...}."""
    path = os.path.join(out, 'checkpoint.pt')
    params = [p for net in nets.values() for p in net.parameters()]
    opt = adam(params, cfg['lr'])
    shuffle = torch.Generator().manual_seed(cfg['seed'] + 1)       # data order
    noise_gen = torch.Generator(device).manual_seed(cfg['seed'] + 2)  # eps of the reparameterisation
    state = dict(epoch=0, batch=0, step=0, train_seconds=0.0, perm=None, autoregress=False,
                 history=dict(step=[], loss=[], recon=[], kl=[], objective=[], beta=[],
                              test_epoch=[], test_step=[], test_loss=[], test_kl=[], autoregress_step=None))
    if os.path.exists(path):
        ck = load_file(path)
        missing = [k for k in ('config', 'models', 'optimizer', 'rng', 'epoch') if k not in ck]
        if missing:
            raise CheckpointError(f'{path} is not a checkpoint of this project (it lacks {", ".join(missing)}); '
                                  f'rerun with --fresh (fresh=True) or delete it')
        differ = settings_differ(ck['config'], cfg)
        if differ:
            changes = ', '.join(f'{k}: {ck["config"].get(k)!r} -> {cfg.get(k)!r}' for k in differ)
            raise CheckpointError(f'{path} was trained with other settings ({changes}); '
                                  f'rerun with --fresh (fresh=True), delete it, or use another --results-dir')
        for name, net in nets.items():
            net.load_state_dict(model_state(ck['models'][name]))
        opt.load_state_dict(ck['optimizer'])
        shuffle.set_state(ck['rng']['shuffle'])
        torch.set_rng_state(ck['rng']['torch'])
        try:
            noise_gen.set_state(ck['rng']['noise'])
        except RuntimeError:  # a generator state of another device type (e.g. saved on CUDA, resumed on CPU)
            say(out, f'{part}: the checkpoint comes from another device; eps draws restart from the seed')
        state = {k: ck[k] for k in state}
        say(out, f'{part}: resuming from {path} at epoch {state["epoch"]}, batch {state["batch"]}, '
                 f'step {state["step"]}')
        if state['epoch'] > cfg['epochs']:
            raise CheckpointError(f'{path} has trained {state["epoch"]} epochs, more than the {cfg["epochs"]} '
                                  f'asked for; ask for at least {state["epoch"]} epochs or rerun with --fresh')
    spec = model_spec(cfg)

    saved = dict(epoch=state['epoch'], batch=state['batch']) if os.path.exists(path) else None

    def save():
        if not all(torch.isfinite(p).all() for p in params):  # never write a non-finite model
            raise NonFiniteLossError(stop_message(part, state, path, saved, 'a parameter is not finite'))
        rng = dict(shuffle=shuffle.get_state(), noise=noise_gen.get_state(), torch=torch.get_rng_state())
        atomic_save(dict(part=part, config=cfg, models=model_record(nets, spec), optimizer=opt.state_dict(),
                         rng=rng, **state), path)
        return dict(epoch=state['epoch'], batch=state['batch'])

    decoder = nets.get('decoder')
    if cfg['autoregress']:
        decoder.autoregress = state['autoregress']
    if state['epoch'] >= cfg['epochs']:
        return state
    x_train = load_data(cfg, train=True).to(device)
    x_monitor = load_data(cfg, train=False)[:cfg['monitor_images']].to(device)
    n, bs = len(x_train), cfg['batch_size']
    steps_per_epoch = math.ceil(n / bs)
    hist = state['history']
    warmup_steps = cfg['kl_warmup'] * steps_per_epoch
    warmup_start = cfg['kl_warmup_start'] * steps_per_epoch
    epochs = tqdm(range(state['epoch'], cfg['epochs']), desc=part, initial=state['epoch'], total=cfg['epochs'],
                  disable=not progress)
    last_save = time.time()
    for epoch in epochs:
        late = cfg['lr_drop_epoch'] is not None and epoch >= cfg['lr_drop_epoch']
        for group in opt.param_groups:
            group['lr'] = cfg['lr_late'] if late else cfg['lr']
        if cfg['autoregress']:
            decoder.autoregress = state['autoregress'] = epoch >= cfg['autoregress_epoch']
            if decoder.autoregress and hist['autoregress_step'] is None:
                hist['autoregress_step'] = state['step']
        if state['batch'] == 0:
            state['perm'] = torch.randperm(n, generator=shuffle)
        for net in nets.values():
            net.train()
        t0 = time.time()
        batches = tqdm(range(state['batch'], steps_per_epoch), desc=f'epoch {epoch + 1}/{cfg["epochs"]}',
                       initial=state['batch'], total=steps_per_epoch, leave=False, disable=not progress)
        for b in batches:
            x = x_train[state['perm'][b * bs:(b + 1) * bs].to(device)]  # (B, 1, 28, 28)
            eps = noise(noise_gen, (len(x), models.LATENT ** 2), device) if cfg['model'] != 'pixelcnn' else None
            beta = kl_weight(state['step'], warmup_steps, warmup_start)
            loss, recon, kl = objective(nets, cfg, x, eps, beta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            value, grad_norm = loss.item(), total_grad_norm(params)
            if not (math.isfinite(value) and math.isfinite(grad_norm)):  # checked before the step can spread it
                what = (f'the training loss is {value}' if not math.isfinite(value)
                        else f'the gradient norm is {grad_norm} (the loss is {value})')
                message = stop_message(part, dict(state, epoch=epoch, batch=b), path, saved, what)
                say(out, message)
                raise NonFiniteLossError(message)
            opt.step()
            for k, v in (('step', state['step']), ('objective', value), ('recon', recon.item()),
                         ('kl', kl.item()), ('beta', beta)):
                hist[k].append(v)
            hist['loss'].append(hist['recon'][-1] + hist['kl'][-1])
            state['step'] += 1
            state['batch'] = b + 1
            batches.set_postfix(loss=f'{hist["loss"][-1]:.2f}', kl=f'{hist["kl"][-1]:.2f}')
            if time.time() - last_save > 60 * cfg['checkpoint_minutes'] and b + 1 < steps_per_epoch:
                state['train_seconds'] += time.time() - t0
                t0 = time.time()
                saved = save()
                last_save = time.time()
        batches.close()
        state['train_seconds'] += time.time() - t0
        for net in nets.values():
            net.eval()
        monitor = test_elbo(nets, cfg, x_monitor, cfg['seed'] + 101)
        key = 'test_nll' if cfg['model'] == 'pixelcnn' else 'test_elbo'
        hist['test_epoch'].append(epoch + 1)
        hist['test_step'].append(state['step'])
        hist['test_loss'].append(monitor[key]['value'])
        hist['test_kl'].append(monitor['kl']['value'] if 'kl' in monitor else 0.0)
        last = hist['loss'][-steps_per_epoch:]
        epochs.set_postfix(train=f'{sum(last) / len(last):.2f}', test=f'{hist["test_loss"][-1]:.2f}')
        say(out, f'{part}: epoch {epoch + 1}/{cfg["epochs"]}, step {state["step"]}: train {sum(last) / len(last):.2f} '
                 f'(mean of the epoch), test {hist["test_loss"][-1]:.2f} ({len(x_monitor)} images), '
                 f'KL {hist["test_kl"][-1]:.2f}, beta {hist["beta"][-1]:.2f}, lr {opt.param_groups[0]["lr"]:g}, '
                 f'{state["train_seconds"]:.0f} s of training')
        state['epoch'], state['batch'] = epoch + 1, 0
        saved = save()
        last_save = time.time()
    epochs.close()
    return state


# ---------------------------------------------------------------------------------------------
# Figures

def save_grid(images, path, nrow):
    vutils.save_image(vutils.make_grid(images.float().cpu(), nrow=nrow, padding=2, pad_value=0.5), path)
    return path


@torch.no_grad()
def decode(decoder, z, cfg, generator):
    """Images shown for latents z: the Gaussian decoder's means g(z); the binary decoder's
    Bernoulli means sigmoid(logits); with autoregression on, samples x ~ p(x|z) (pixel by pixel)."""
    if cfg['model'] == 'gaussian_vae':
        return decoder(z)
    if decoder.autoregress:
        uniforms = torch.rand(len(z), 1, 28, 28, generator=generator, device=z.device)
        return decoder.sample(z, uniforms=uniforms)
    return torch.sigmoid(decoder.latent_logits(z))


@torch.no_grad()
def sample_figures(nets, cfg, test_x, out):
    """samples.png (n_samples, z ~ N(0, I) or PixelCNN samples) and, for VAEs,
    reconstructions.png (top row: test images; bottom row: decoded from z = flows(mu), eps = 0)."""
    device = test_x.device
    gen = torch.Generator(device).manual_seed(cfg['seed'] + 404)
    n, nrow = cfg['n_samples'], int(math.ceil(math.sqrt(cfg['n_samples'])))
    if cfg['model'] == 'pixelcnn':
        uniforms = torch.rand(n, 1, 28, 28, generator=gen, device=device)
        samples = nets['pixelcnn'].sample(n, uniforms=uniforms)
        return dict(samples=save_grid(samples, os.path.join(out, 'samples.png'), nrow))
    f, g = nets['encoder'], nets['decoder']
    figs = dict(samples=save_grid(decode(g, noise(gen, (n, models.LATENT ** 2), device), cfg, gen),
                                  os.path.join(out, 'samples.png'), nrow))
    x = test_x[:10]
    h, mu, logvar = f.encode(x)
    z, _ = f.reparameterize(h, mu, logvar, torch.zeros_like(mu))
    figs['reconstructions'] = save_grid(torch.cat([x, decode(g, z, cfg, gen)]),  # (20, 1, 28, 28): two rows
                                        os.path.join(out, 'reconstructions.png'), 10)
    return figs


def smooth(values, width):
    """Moving average over `width` iterations (shorter at the start)."""
    v = torch.tensor(values, dtype=torch.float64)
    if len(v) == 0:
        return []
    c = torch.cat([torch.zeros(1, dtype=torch.float64), v.cumsum(0)])
    idx = torch.arange(1, len(v) + 1)
    return ((c[idx] - c[(idx - width).clamp(min=0)]) / (idx - (idx - width).clamp(min=0))).tolist()


def curve_figures(part, cfg, hist, out):
    """loss.png (train loss per iteration and test loss per epoch; reconstruction and KL for
    VAEs) and kl.png (the KL term against training iteration, autoregression switch marked)."""
    width = max(1, min(100, len(hist['step']) // 20))
    figs = {}
    vae = cfg['model'] != 'pixelcnn'
    fig = Figure(figsize=(12 if vae else 6, 4), tight_layout=True)
    axes = fig.subplots(1, 3 if vae else 1)
    axes = list(axes) if vae else [axes]
    name = 'NLL' if not vae else '-ELBO'
    panels = [(axes[0], 'loss', f'{name} (nats)', 'test_loss')]
    if vae:
        panels += [(axes[1], 'recon', 'reconstruction (nats)', None), (axes[2], 'kl', 'KL (nats)', 'test_kl')]
    for ax, key, label, test_key in panels:
        ax.plot(hist['step'], hist[key], color='C0', alpha=0.25, lw=0.5)
        ax.plot(hist['step'], smooth(hist[key], width), color='C0', label=f'train ({width}-step mean)')
        if test_key:
            ax.plot(hist['test_step'], hist[test_key], 'o-', color='C1', label='test (per epoch)')
        if hist['autoregress_step'] is not None:
            ax.axvline(hist['autoregress_step'], color='k', ls='--', lw=1, label='autoregression on')
        ax.set_xlabel('training iteration')
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
        if len(hist[key]) > 20:  # the first iterations dwarf the rest
            lo = min(hist[key])
            ax.set_ylim(lo - 0.05 * abs(lo) - 1e-3, sorted(hist[key])[int(0.98 * len(hist[key]))] * 1.05 + 1e-3)
    fig.suptitle(f'{part}: {TITLES[part]}')
    figs['loss'] = os.path.join(out, 'loss.png')
    fig.savefig(figs['loss'], dpi=100)
    if vae:
        fig = Figure(figsize=(7, 4), tight_layout=True)
        ax = fig.subplots()
        ax.plot(hist['step'], hist['kl'], color='C0', alpha=0.25, lw=0.5)
        ax.plot(hist['step'], smooth(hist['kl'], width), color='C0', label='KL(q(z|x) || r(z)), train batch')
        ax.plot(hist['test_step'], hist['test_kl'], 'o-', color='C1', label='KL, test (per epoch)')
        if hist['autoregress_step'] is not None:
            ax.axvline(hist['autoregress_step'], color='k', ls='--', lw=1, label='autoregression switched on')
        ax.set_ylim(bottom=min([0.0] + hist['kl'] + hist['test_kl']))
        ax.set_xlabel('training iteration')
        ax.set_ylabel('KL term of the ELBO (nats)')
        ax.set_title(f'{part}: {TITLES[part]}')
        ax.legend(fontsize=8)
        figs['kl'] = os.path.join(out, 'kl.png')
        fig.savefig(figs['kl'], dpi=100)
    return figs


# ---------------------------------------------------------------------------------------------
# One part

class RunLockedError(RuntimeError):
    """Another process is running the same part in the same results directory."""


class ResultsExistError(RuntimeError):
    """A finished run with other settings is in the directory a run would write to."""


@contextlib.contextmanager
def part_lock(out):
    """out/run.lock holds the pid of the process running the part; a second run of the same part
    refuses while that process lives. A lock left by a process that is gone is cleared, and so are
    the temporary files of checkpoint writes it left half-way."""
    path = os.path.join(out, 'run.lock')
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                with open(path) as fh:
                    pid = int(fh.read().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and process_alive(pid):
                raise RunLockedError(f'{out} is in use by process {pid} ({path}); wait for it to finish, or stop '
                                     f'that process; a lock of a process that is gone is cleared by itself')
            os.remove(path)
    else:
        raise RunLockedError(f'could not take the lock {path}; remove it if no run of this part is going on')
    with os.fdopen(fd, 'w') as fh:
        fh.write(str(os.getpid()))
    for name in os.listdir(out):  # with the lock held, a temporary file here is a dead run's half-written file
        if name.endswith('.tmp'):
            os.remove(os.path.join(out, name))
            print(f'removed {os.path.join(out, name)}, left half-written by a run that was stopped', flush=True)
    try:
        yield
    finally:
        if os.path.exists(path):
            os.remove(path)


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_json(path):
    """A JSON file of the results (metrics.json, summary.json), with an error that names it."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError) as err:
        raise CheckpointError(f'{path} cannot be read ({type(err).__name__}: {err}); restore it with git '
                              f'(`git checkout -- {path}`) or delete the part\'s directory and rerun it') from err


FINISHED_IGNORES = ('compile', 'checkpoint_minutes')  # settings that cannot change a finished run's numbers


def finished_run(paths, cfg, out):
    """The metrics of the run finished in `out` with the settings cfg, or None if none has finished
    there (or if only more epochs are asked and its checkpoint is there to train on from); a finished
    run with other settings raises ResultsExistError: it is never trained over."""
    if not (os.path.exists(paths['metrics']) and os.path.exists(paths['model'])):
        return None
    done = read_json(paths['metrics'])
    saved = with_defaults(done.get('config') or {})
    differ = sorted(k for k in set(saved) | set(cfg) if k not in FINISHED_IGNORES and saved.get(k) != cfg.get(k))
    if differ == ['epochs'] and cfg['epochs'] > saved['epochs'] and os.path.exists(paths['checkpoint']):
        print(f'{out}: training the finished run on from its checkpoint, to {cfg["epochs"]} epochs', flush=True)
        return None
    if differ:
        changes = ', '.join(f'{k}: {saved.get(k)!r} there, {cfg.get(k)!r} asked' for k in differ)
        raise ResultsExistError(
            f'{out} holds a finished run with other settings ({changes}); it is kept as it is. To train this part '
            f'with the new settings, use another results directory (--results-dir, results_dir=...), or '
            f'rerun with --fresh (fresh=True), which deletes that run')
    return done


def run_part(part, profile='auto', device=None, fresh=False, results_dir='results', progress=True, **overrides):
    """Train (or resume) one part, evaluate it, save its figures and metrics; returns the metrics.
    The files go to run_dir(results_dir, profile, precision)/<part>. overrides: settings of
    `config`, e.g. epochs=1."""
    fresh = as_bool(fresh, 'fresh')
    device = pick_device(device)
    profile = pick_profile(profile, device)
    cfg = config(part, profile, **overrides)
    out = os.path.join(run_dir(results_dir, profile, cfg['precision']), part)
    os.makedirs(out, exist_ok=True)
    paths = {k: os.path.join(out, name) for k, name in (('checkpoint', 'checkpoint.pt'), ('model', 'model.pt'),
                                                              ('metrics', 'metrics.json'), ('history', 'history.json'))}
    with part_lock(out):
        if fresh:
            for p in list(paths.values()) + [os.path.join(out, 'run.log')]:
                if os.path.exists(p):
                    os.remove(p)
        done = finished_run(paths, cfg, out)
        if done is not None:
            print(f'{part}: already done ({paths["metrics"]}, trained on {done.get("hardware", done["device"])}); '
                  f'--fresh to redo it', flush=True)
            return done
        return train_and_evaluate(part, profile, cfg, device, out, paths, progress)


def train_and_evaluate(part, profile, cfg, device, out, paths, progress):
    say(out, f'{part}: {TITLES[part]}, {profile} profile on {device}, torch {torch.__version__}, '
             f'{torch.get_num_threads()} threads; settings ' + json.dumps(cfg, sort_keys=True))
    torch.manual_seed(cfg['seed'])
    spec = model_spec(cfg)
    nets = build(spec, device)
    init_output_bias(nets, cfg, device)
    state = train(part, cfg, nets, out, device, progress)
    autoregress = state['autoregress']
    atomic_save(dict(part=part, profile=profile, config=cfg, models=model_record(nets, spec),
                     autoregress=autoregress, epoch=state['epoch'], step=state['step']), paths['model'])
    for net in nets.values():
        net.eval()
    t0 = time.time()
    test_x = load_data(cfg, train=False).to(device)
    values = evaluate(nets, cfg, test_x, progress=progress)
    figures = sample_figures(nets, cfg, test_x, out)
    figures.update(curve_figures(part, cfg, state['history'], out))
    write_json(paths['history'], state['history'])
    metrics = dict(part=part, title=TITLES[part], profile=profile, device=str(device),
                   hardware=describe_hardware(device), precision=cfg['precision'], epochs=state['epoch'],
                   steps=state['step'], train_seconds=round(state['train_seconds'], 1),
                   eval_seconds=round(time.time() - t0, 1), model=paths['model'], commit=git_commit(),
                   autoregress_step=state['history']['autoregress_step'], values=values, figures=figures, config=cfg)
    write_json(paths['metrics'], metrics, indent=1)
    say(out, f'{part}: ' + ', '.join(f'{k} {v["value"]}' + (f' ± {v["stderr"]}' if v['stderr'] is not None else '')
                                     for k, v in values.items()) + f' (evaluation {metrics["eval_seconds"]:.0f} s)')
    return metrics


def write_json(path, obj, indent=None):
    """A JSON file written through a temporary file, so a reader never sees half of it."""
    tmp = f'{path}.{os.getpid()}.tmp'
    try:
        with open(tmp, 'w') as fh:
            json.dump(obj, fh, indent=indent)
        os.replace(tmp, path)
    except OSError as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise OSError(err.errno, f'could not write {path}: {err.strerror}'
                      + (' (the disk is full: free some space and rerun; the run resumes)' if err.errno == 28 else ''))


def git_commit():
    """The commit of the code that ran (None outside a git checkout)."""
    import subprocess
    try:
        run = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=os.path.dirname(os.path.abspath(__file__)),
                             capture_output=True, text=True)
        return run.stdout.strip() or None
    except OSError:
        return None


def part_metrics(results_dir, profile, part, precision='fp32'):
    """The metrics of a finished part (None if it has not finished); profile 'auto' is resolved
    from the device, as run_part does."""
    profile = pick_profile(profile, pick_device(None), quiet=True)
    path = os.path.join(run_dir(results_dir, profile, precision), part, 'metrics.json')
    return read_json(path) if os.path.exists(path) else None


def show(part, results_dir='results', profile='auto', precision='fp32'):
    """Display a part's metrics and figures in a notebook."""
    from IPython.display import Image, Markdown, display
    m = part_metrics(results_dir, profile, part, precision)
    if m is None:
        display(Markdown(f'{part} has not finished in the {profile} profile in `{results_dir}`.'))
        return
    display(Markdown(metrics_table([m])))
    for path in m['figures'].values():
        display(Image(filename=path))


def compare(parts, results_dir='results', profile='auto', precision='fp32'):
    """Display the metrics of several finished parts as one table in a notebook."""
    from IPython.display import Markdown, display
    done = [m for m in (part_metrics(results_dir, profile, p, precision) for p in parts) if m is not None]
    display(Markdown(metrics_table(done) if done else f'None of {", ".join(parts)} has finished.'))


def show_finished(parts, results_dir='results', profile='auto', figures=('samples', 'kl'), precision='fp32'):
    """Display one table of every part among `parts` that has finished, then the named figures of
    each; a part that has not run is named, not an error."""
    from IPython.display import Image, Markdown, display
    done = [m for m in (part_metrics(results_dir, profile, p, precision) for p in parts) if m is not None]
    missing = [p for p in parts if p not in {m['part'] for m in done}]
    if missing:
        display(Markdown(f'Not run yet in the {profile} profile in `{results_dir}`: {", ".join(missing)}.'))
    if not done:
        return
    display(Markdown(metrics_table(done)))
    for m in done:
        display(Markdown(f'**{m["part"]}: {m["title"]}** ({m["profile"]} profile, {m["epochs"]} epochs)'))
        for name in figures:
            if os.path.exists(m['figures'].get(name, '')):
                display(Image(filename=m['figures'][name]))


NOTEBOOKS = ('gaussian_vae.ipynb', 'pixelcnn.ipynb', 'binaryvae.ipynb')


def run_notebooks(profile='auto', results_dir='results', notebooks=NOTEBOOKS):
    """Execute the notebooks in place (papermill) with the given profile and results, so that
    they are saved with the outputs of those runs; a part not yet run is trained first."""
    import papermill
    root = os.path.dirname(os.path.abspath(__file__))
    for name in notebooks:
        path = os.path.join(root, name)
        print(f'executing {name} ({profile} profile, {results_dir})', flush=True)
        # the defaults of the parameters cell are not injected, so the saved notebook keeps profile = "auto"
        parameters = {k: v for k, v in (('profile', profile), ('results_dir', results_dir))
                      if v != {'profile': 'auto', 'results_dir': 'results'}[k]}
        papermill.execute_notebook(path, path, parameters=parameters or None, cwd=root,
                                   kernel_name='python3', progress_bar=False)


# ---------------------------------------------------------------------------------------------
# Summary and the command line

def reproduce_command(m, quantity, results_dir):
    """The command that recomputes one reported number from the part's model.pt."""
    precision = m['config'].get('precision', 'fp32')
    return (f'python experiments.py eval {m["part"]} --quantity {quantity} --profile {m["profile"]}'
            + (f' --precision {precision}' if precision != 'fp32' else '')
            + (f' --results-dir {shlex.quote(results_dir)}' if results_dir != 'results' else '')
            + f' --device {m["device"]}')


def summary_rows(metrics, results_dir):
    rows = []
    for m in metrics:
        for q in quantities(m['config']):
            v = m['values'][q]
            rows.append(dict(part=m['part'], quantity=q, value=v['value'], stderr=v['stderr'], n_images=v['n_images'],
                             M=v.get('M'), profile=m['profile'], precision=m['config'].get('precision', 'fp32'),
                             device=m['device'], hardware=m.get('hardware', m['device']), epochs=m['epochs'],
                             train_seconds=m['train_seconds'], model=m['model'],
                             reproduce=reproduce_command(m, q, results_dir)))
    return rows


def metrics_table(metrics, reported_only=False):
    lines = ['| part | what | quantity | value ± stderr | images | M | epochs | train time | profile, precision, hardware |',
             '|---|---|---|---|---|---|---|---|---|']
    for m in metrics:
        for q, v in m['values'].items():
            if reported_only and q not in quantities(m['config']):
                continue
            value = f'{v["value"]:.2f}' if isinstance(v['value'], float) else f'{v["value"]}'
            if v['stderr'] is not None:
                value += f' ± {v["stderr"]:.2f}'
            lines.append(f'| {m["part"]} | {m["title"]} | {q} | {value} | {v["n_images"]} | {v.get("M") or ""} | '
                         f'{m["epochs"]} | {m["train_seconds"] / 60:.1f} min | {m["profile"]}, '
                         f'{m["config"].get("precision", "fp32")}, {m.get("hardware", m["device"])} |')
    return '\n'.join(lines)


def run_dirs(results_dir):
    """The run directories under results_dir that hold a finished part: [(path, profile, precision)]."""
    found = []
    for name in sorted(os.listdir(results_dir)) if os.path.isdir(results_dir) else []:
        profile, _, precision = name.partition('-')
        if profile in PROFILES and (precision or 'fp32') in PRECISIONS and any(
                os.path.exists(os.path.join(results_dir, name, p, 'metrics.json')) for p in PARTS):
            found.append((os.path.join(results_dir, name), profile, precision or 'fp32'))
    return found


def write_summary(results_dir='results', profile=None, precision='fp32'):
    """<run dir>/summary.md (a table) and <run dir>/summary.json (one entry per reported number, with
    its reproduce command), for the run directory of (profile, precision), or for every one."""
    dirs = run_dirs(results_dir) if profile is None else [(run_dir(results_dir, profile, precision), profile, precision)]
    metrics = []
    for path, _, _ in dirs:
        these = [read_json(os.path.join(path, p, 'metrics.json')) for p in PARTS
                 if os.path.exists(os.path.join(path, p, 'metrics.json'))]
        with open(os.path.join(path, 'summary.md'), 'w') as fh:
            fh.write('# Results\n\nNats per image, mean over test images ± standard error. test_elbo is the negative '
                     'ELBO (the training loss; lower is better); test_nll is -log p(x), exact for the PixelCNN; '
                     'test_nll_is<M> is -log p(x) estimated by importance sampling with M samples; kl is the '
                     'KL term of the ELBO; active_units counts latent dimensions with Var_x E_q[z_d] > 0.01.\n\n')
            fh.write(metrics_table(these, reported_only=True) + '\n')
        write_json(os.path.join(path, 'summary.json'), summary_rows(these, results_dir), indent=1)
        metrics += these
    return metrics


def estimate(part, cfg, device, out=None):
    """Rough wall time of a part from a few timed training steps and one importance-sampling
    pass, scaled up (less what its checkpoint in `out` has done). Returns {seconds, train_images_s,
    autoregressive_images_s, is_samples_s}: images/s of training, and of training with the
    PixelCNN on; importance samples z_i per second."""
    torch.manual_seed(cfg['seed'])
    nets = build(model_spec(cfg), device)
    opt = adam([p for net in nets.values() for p in net.parameters()], cfg['lr'])
    x_train, x_test = load_data(cfg, train=True), load_data(cfg, train=False)
    x = x_train[:cfg['batch_size']].to(device)
    eps = torch.randn(len(x), models.LATENT ** 2, device=device)

    def images_per_second(autoregress):
        if cfg['autoregress']:
            nets['decoder'].autoregress = autoregress
        times = []
        for _ in range(5):  # the first step warms up
            t0 = time.time()
            loss = objective(nets, cfg, x, eps)[0]
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()
            times.append(time.time() - t0)
        return len(x) / sorted(times[1:])[1]  # the second fastest of four

    rate = dict(train_images_s=images_per_second(False), autoregressive_images_s=None, is_samples_s=None)
    ar_epochs = max(0, cfg['epochs'] - cfg['autoregress_epoch']) if cfg['autoregress'] else 0
    if ar_epochs:
        rate['autoregressive_images_s'] = images_per_second(True)
    n_train = len(x_train)
    seconds = n_train * ((cfg['epochs'] - ar_epochs) / rate['train_images_s']
                         + (ar_epochs / rate['autoregressive_images_s'] if ar_epochs else 0))
    ckpt = os.path.join(out, 'checkpoint.pt') if out else None
    if ckpt and os.path.exists(ckpt):
        try:
            done = torch.load(ckpt, map_location='cpu', weights_only=True, mmap=True)['step']
            seconds *= max(0.0, 1 - done / (math.ceil(n_train / cfg['batch_size']) * cfg['epochs']))
        except Exception:
            pass
    n_eval = len(x_test[:cfg['test_images']]) + cfg['epochs'] * len(x_test[:cfg['monitor_images']])
    seconds += n_eval / (3 * (rate['autoregressive_images_s'] or rate['train_images_s']))  # forward ~ 1/3 of a step
    if cfg['model'] == 'binary_vae':
        xb = x[:min(cfg['is_batch'], len(x))]
        t0 = time.time()
        importance_sampled_nll(nets['encoder'], nets['decoder'], xb, cfg['is_chunk'], cfg['is_chunk'], len(xb))
        rate['is_samples_s'] = len(xb) * cfg['is_chunk'] / (time.time() - t0)
        seconds += len(x_test[:cfg['is_images']]) * cfg['is_samples'] / rate['is_samples_s']
    return dict(seconds=seconds, **rate)


def fmt_time(seconds):
    seconds = int(seconds)
    if seconds >= 3600:
        return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'
    return f'{seconds // 60}m{seconds % 60:02d}s'


def check_parts(parts):
    """A list of part names, each known: checked before any work."""
    parts = [p.strip() for p in parts]
    if not parts or any(not p for p in parts):
        raise ValueError(f'--parts must name one or more parts, comma-separated; the parts are {", ".join(PARTS)}')
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f'unknown part(s) {", ".join(unknown)}; the parts are {", ".join(PARTS)}')
    return parts


def estimate_all(profile, parts, device, results_dir=None, fresh=False, precision='fp32'):
    """{part: estimate} for the parts, 0 s for those already done; prints a table."""
    parts = check_parts(parts)
    print(f'estimating the time of {len(parts)} parts on {device} ({profile} profile)...', flush=True)
    expected = {}
    for part in parts:
        out = os.path.join(run_dir(results_dir, profile, precision), part) if results_dir else None
        if out and not fresh and os.path.exists(os.path.join(out, 'metrics.json')):
            expected[part] = dict(seconds=0.0, train_images_s=None, autoregressive_images_s=None, is_samples_s=None)
        else:
            expected[part] = estimate(part, config(part, profile, precision=precision), device,
                                      None if fresh else out)
        e = expected[part]
        rates = ', '.join(f'{label} {e[k]:.0f}/s' for k, label in (
            ('train_images_s', 'training images'), ('autoregressive_images_s', 'with the PixelCNN on'),
            ('is_samples_s', 'importance samples')) if e[k])
        print(f'  {part:12s} ~{fmt_time(e["seconds"]):>7s}  {rates or "done"}', flush=True)
    print(f'  {"total":12s} ~{fmt_time(sum(e["seconds"] for e in expected.values())):>7s}', flush=True)
    return expected


def run_all(profile='auto', parts=None, device=None, fresh=False, results_dir='results', progress=True,
            precision='fp32'):
    """Every part (or the given ones) in one profile, with time estimates; then the summary."""
    fresh = as_bool(fresh, 'fresh')
    device = pick_device(device)
    profile = pick_profile(profile, device)
    parts = check_parts(parts) if parts is not None else list(PARTS)
    expected = {p: e['seconds'] for p, e in estimate_all(profile, parts, device, results_dir, fresh,
                                                         precision).items()}
    spent, predicted = 0.0, 0.0
    t_start = time.time()
    for i, part in enumerate(parts):
        ratio = spent / predicted if predicted > 0 else 1.0  # how far off the estimates have been so far
        print(f'\n[{i + 1}/{len(parts)}] {part}: {TITLES[part]} -- this part ~{fmt_time(ratio * expected[part])}, '
              f'all remaining parts ~{fmt_time(ratio * sum(expected[p] for p in parts[i:]))} '
              f'(elapsed {fmt_time(time.time() - t_start)})', flush=True)
        t0 = time.time()
        run_part(part, profile=profile, device=device, fresh=fresh, results_dir=results_dir, progress=progress,
                 precision=precision)
        if expected[part] > 0:
            spent += time.time() - t0
            predicted += expected[part]
    write_summary(results_dir, profile, precision)  # every part present, not only those run now
    summary = os.path.join(run_dir(results_dir, profile, precision), 'summary.md')
    print(f'\nall parts done in {fmt_time(time.time() - t_start)}; summary in {summary}', flush=True)


def eval_command(part, quantity, results_dir='results', device=None, profile='auto', precision='fp32'):
    """Recompute one reported number from <run dir>/<part>/model.pt; the last line printed is the value."""
    device = pick_device(device)
    profile = pick_profile(profile, device)
    path = os.path.join(run_dir(results_dir, profile, precision), part, 'model.pt')
    if not os.path.exists(path):
        raise CheckpointError(f'{path} does not exist; run `python experiments.py run {part} --profile {profile}'
                              + (f' --precision {precision}' if precision != 'fp32' else '') + '` first')
    record = load_file(path, advice='restore it with git (`git checkout -- PATH`) or retrain the part with '
                                    '`python experiments.py run PART --fresh`')
    missing = [k for k in ('config', 'models', 'autoregress') if k not in record]
    if missing:
        raise CheckpointError(f'{path} is not a model file of this project (it lacks {", ".join(missing)}); '
                              f'restore it with git or retrain the part with --fresh')
    cfg = with_defaults(record['config'])
    nets = load_models(record['models'], device, record['autoregress'])
    torch.manual_seed(cfg['seed'])
    test_x = load_data(cfg, train=False).to(device)
    v = evaluate(nets, cfg, test_x, only=quantity, progress=False)[quantity]
    print(f'{part} {quantity}: {v["value"]}' + (f' ± {v["stderr"]}' if v['stderr'] is not None else '')
          + f' over {v["n_images"]} test images' + (f', M = {v["M"]}' if 'M' in v else '')
          + f' ({record["profile"]} profile, {cfg["epochs"]} epochs, {device})')
    print(v['value'])
    return v['value']


def verify(results_dir='results', parts=None, out=None, profiles=None):
    """Run every `reproduce` command of the summary.json of each run directory (or those of `parts`,
    or of the run directories named in `profiles`, e.g. ['cpu', 'cpu-bf16']) as a user would, in a
    fresh process from the repository root, and compare the value it prints last with the reported
    one: agreement means within max(0.05, stderr) nats. Writes the outcome to `out` (default
    results_dir/verify.json, where earlier checks of other numbers are kept) and returns the rows
    checked now; failures are listed, not raised."""
    import subprocess
    root = os.path.dirname(os.path.abspath(__file__))
    rows = []
    for path, profile, precision in run_dirs(results_dir):
        name = os.path.basename(path)
        if (profiles is None or name in profiles) and os.path.exists(os.path.join(path, 'summary.json')):
            rows += [r for r in read_json(os.path.join(path, 'summary.json')) if parts is None or r['part'] in parts]
    commit = git_commit()  # the code that recomputed the numbers
    checked = []
    for r in rows:
        argv = shlex.split(r['reproduce'])
        t0 = time.time()
        run = subprocess.run([sys.executable if argv[0] == 'python' else argv[0]] + argv[1:], cwd=root,
                             capture_output=True, text=True)
        try:
            value = float(run.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            value = None
        tolerance = max(0.05, r['stderr'] or 0.0)
        ok = run.returncode == 0 and value is not None and abs(value - r['value']) <= tolerance
        checked.append(dict(part=r['part'], quantity=r['quantity'], profile=r['profile'],
                            precision=r.get('precision', 'fp32'), reported=r['value'], reproduced=value,
                            tolerance=tolerance, ok=ok, seconds=round(time.time() - t0, 1), command=r['reproduce'],
                            commit=commit, error=None if run.returncode == 0 else run.stderr.strip()[-500:]))
        print(f'{"ok  " if ok else "FAIL"} {r["part"]:12s} {r["quantity"]:16s} reported {r["value"]}, '
              f'reproduced {value} (tolerance {tolerance:g}), {time.time() - t0:.0f} s', flush=True)
    out = out or os.path.join(results_dir, 'verify.json')
    earlier = []
    if os.path.exists(out):  # keep the outcome of numbers not rechecked this time
        done = {c['command'] for c in checked}
        earlier = [c for c in read_json(out) if c['command'] not in done]
    write_json(out, earlier + checked, indent=1)
    failed = [c for c in checked if not c['ok']]
    print(f'{len(checked) - len(failed)} of {len(checked)} numbers reproduced; details in {out}', flush=True)
    return checked


def list_settings(profile):
    """Print each part's settings, what differs from the course's, and the profile's departures from
    the course framework with their reasons."""
    for part in PARTS:
        cfg, full = config(part, profile), config(part, 'full')
        changed = [f'{k}={v!r} (full: {full[k]!r})' for k, v in cfg.items() if v != full[k]]
        same = [f'{k}={v!r}' for k, v in PARTS[part].items() if cfg[k] == v]
        print(f'{part:12s} {TITLES[part]}: ' + ', '.join(same + changed))
    reasons = REASONS.get(profile, {})
    if not reasons:
        print(f'\n{profile} profile: no deviations from the course framework\'s networks and initialisation')
        return
    print(f'\n{profile} profile: deviations from the course framework\'s networks and initialisation')
    for key, why in reasons.items():
        print(f'  {key}: {why}')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].replace('\n', ' '))
    sub = parser.add_subparsers(dest='command', required=True)
    a = sub.add_parser('all', help='run every part (or --parts), then write the summary')
    r = sub.add_parser('run', help='run one part')
    r.add_argument('part', choices=list(PARTS))
    r.add_argument('--epochs', type=int, default=None, help="train this many epochs instead of the profile's")
    e = sub.add_parser('eval', help='recompute one number from <run dir>/<part>/model.pt; the last line is the value')
    e.add_argument('part', choices=list(PARTS))
    e.add_argument('--quantity', required=True, help='test_elbo, test_elbo_mc, test_nll, test_nll_is<M>, kl, active_units')
    es = sub.add_parser('estimate', help='measure throughput and estimate the time of each part')
    s = sub.add_parser('summary', help='rewrite summary.md and summary.json of every run directory')
    nb = sub.add_parser('notebooks', help='execute the three notebooks in place, saving the outputs of the runs')
    v = sub.add_parser('verify', help="run every summary.json `reproduce` command and compare with the reported value")
    v.add_argument('--parts', default=None, help='comma-separated parts (default: every part in the summaries)')
    v.add_argument('--runs', default=None, help='comma-separated run directories, e.g. cpu,cpu-bf16 (default: all)')
    ls = sub.add_parser('list', help='print the parts, their settings and the deviations from the course framework')
    ls.add_argument('--profile', default='full', choices=list(PROFILES))
    for p in (a, es):
        p.add_argument('--parts', default=None, help='comma-separated parts (default: all of them)')
    for p in (a, r, e, es, nb):
        p.add_argument('--profile', default='auto', choices=['auto', *PROFILES])
    for p in (a, r, e, es):
        p.add_argument('--precision', default='fp32', choices=PRECISIONS,
                       help='bf16: training forward passes in bfloat16 (evaluation stays float32); results go to '
                            '<results-dir>/<profile>-bf16')
    for p in (a, r):
        p.add_argument('--fresh', action='store_true', help='discard existing checkpoints and results of the part(s)')
        p.add_argument('--no-progress', action='store_true', help='no progress bars')
    for p in (a, r, e, s, nb, v):
        p.add_argument('--results-dir', default='results')
    for p in (a, r, e, es):
        p.add_argument('--device', default=None, help='cuda, mps or cpu (default: the first available)')
    args = parser.parse_args(argv)
    try:
        command(args)
    except (CheckpointError, NonFiniteLossError, ResultsExistError, RunLockedError, ValueError, OSError) as err:
        sys.exit(f'error: {err}')


def command(args):
    """Carry out one parsed command line."""
    if args.command == 'all':
        parts = args.parts.split(',') if args.parts is not None else None
        run_all(args.profile, parts, args.device, args.fresh, args.results_dir, not args.no_progress, args.precision)
    elif args.command == 'run':
        extra = {'epochs': args.epochs} if args.epochs is not None else {}
        run_part(args.part, args.profile, args.device, args.fresh, args.results_dir, not args.no_progress,
                 precision=args.precision, **extra)
    elif args.command == 'eval':
        eval_command(args.part, args.quantity, args.results_dir, args.device, args.profile, args.precision)
    elif args.command == 'estimate':
        device = pick_device(args.device)
        estimate_all(pick_profile(args.profile, device), args.parts.split(',') if args.parts is not None
                     else list(PARTS), device, precision=args.precision)
    elif args.command == 'summary':
        write_summary(args.results_dir)
    elif args.command == 'verify':
        checked = verify(args.results_dir, args.parts.split(',') if args.parts else None,
                         profiles=args.runs.split(',') if args.runs else None)
        if not all(c['ok'] for c in checked):
            sys.exit(1)
    elif args.command == 'notebooks':
        run_notebooks(args.profile, args.results_dir)
    elif args.command == 'list':
        list_settings(args.profile)


if __name__ == '__main__':
    main()
