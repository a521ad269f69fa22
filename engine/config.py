"""The settings of CSE 599i Homework 2: every part of the handout as a configuration of plain
values, the three profiles it runs at, the numbers each part reports, and where its files live.

Parts (handout numbering; the `full` profile is the course setting, batch 100, Adam):
    5b  Gaussian VAE, closed-form KL (losses.gaussian_elbo), encoder/decoder capacity 128 depth 51
    5c  the same with a one-sample Monte-Carlo KL (losses.mc_gaussian_elbo)
    6a  PixelCNN, binarized MNIST (losses.cross_entropy)
    6b  binary VAE (losses.discrete_output_elbo)
    6c  PixelVAE: 6b with a PixelCNN decoder switched on after AUTOREGRESS_EPOCH warm-up epochs
    6d  6b with 8 steps of IAF in the encoder
    6e-baseline, 6e-warmup, 6e-freebits, 6e-weak: PixelVAE + IAF encoder, plain and with a
        remedy for posterior collapse (KL warm-up, free bits, a weakened PixelCNN)

Profiles: `full` (the course settings above; no deviation from the course framework's networks),
`cpu` (sized for a 2-core CPU: every deviation from `full` is listed in PROFILES with its reason,
and CPU_REASONS gives the departures from the framework's networks), `smoke` (seconds per part;
for tests). `auto` is `full` on CUDA and `cpu` otherwise. Results go to
results/<profile>/<part>/, or results/<profile>-<precision>/<part>/ for bfloat16 or float16 training
(run_dir).

Units: nats per image. `test_elbo` is the NEGATIVE evidence lower bound, the training loss
(reconstruction + KL, lower is better); for the Gaussian VAE it omits the constant Gaussian
normaliser, as the handout's loss does. `test_nll` (6a) is the exact -log p(x);
`test_nll_is<M>` is -log p(x) estimated by importance sampling with M samples. Every value is a
mean over test images, reported with its standard error std / sqrt(n).
"""
import os
import platform
import subprocess
import sys

import torch

from engine import student

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
    test_images=None,          # test ELBO / NLL / KL / active units on a seeded uniform sample of n test images
                               # (subsets.test_subset; None: all 10000)
    monitor_images=None,       # test loss after each epoch on a uniform sample of n test images, nested in the final
                               # test ELBO's (None: all)
    is_images=None,            # importance-sampled NLL on a uniform sample of n test images (None: all)
    is_samples=1000,           # M, samples z_i ~ q(z|x) per image
    is_batch=100,              # images per encoder pass in importance sampling
    is_chunk=100,              # samples per image per decoder pass (is_batch * is_chunk latents)
    au_samples=10,             # draws of z averaged to estimate E_q[z_d] for active units (flows > 0)
    n_samples=49,              # images in the samples figure (a 7x7 grid)
    layout='course',           # models.py layout: 'course' (the framework's), 'v1' (the networks of the committed cpu
                               # runs)
    iaf_depth=9,               # masked residual blocks per IAF step (the framework's IAF(filters, depth=9))
    init_output_bias=False,    # Gaussian VAE: start the decoder's output bias at the logit of the mean image
    precision='fp32',          # 'bf16' / 'fp16': training forward passes in bfloat16 / float16
                               # (objectives.low_precision); run_part's 'auto' picks
    compile=True,              # importance sampling through torch.compile on the CPU (see Compiled); False: eager
    compile_train=False,       # the training objective through torch.compile (CUDA graphs on CUDA); eager fallback
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
    # 0.5 nats per latent dimension, a floor of 24.5 on the KL term the objective counts: over twice
    # what 6e-baseline keeps at these settings (results/full/6e-baseline), so that the run asks what
    # holding the KL term there costs in likelihood
    '6e-freebits': dict(PIXELVAE_IAF, free_bits=0.5),
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

CPU_6E = dict(dec_depth=11, pixelcnn_depth=5, epochs=4, autoregress_epoch=2, is_images=500,
              layout='course', iaf_depth=1)

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
            is_images=1000,         # IS NLL on a uniform sample of 1000 test images, M = 1000 (full: all 10000); the
                                    # committed cpu runs used the first 1000
            is_batch=20,            # 20 images x 100 samples per decoder pass
        ),
        # encoder and decoder capacity 64 depth 5 (full: 128, 51: ~5 images/s, 70 h); 6 epochs (full: 20)
        '5b': dict(enc_capacity=64, enc_depth=5, dec_capacity=64, dec_depth=5, epochs=6),
        '5c': dict(enc_capacity=64, enc_depth=5, dec_capacity=64, dec_depth=5, epochs=6),
        # the course PixelCNN; 4 epochs with lr 3e-4 in the last (full: 40, from epoch 30)
        '6a': dict(epochs=4, lr_drop_epoch=3),
        # decoder depth 21 (full: 51), 8 epochs, lr 3e-4 from epoch 6 (full: 60, from 40)
        '6b': dict(dec_depth=21, epochs=8, lr_drop_epoch=6, layout='course'),
        # decoder depth 21 + the course PixelCNN; 2 warm-up epochs + 2 autoregressive (full: 10 + 10)
        '6c': dict(dec_depth=21, epochs=4, autoregress_epoch=2),
        # decoder depth 21, 8 steps of the course IAF with one masked block each (full: 9, 2.8x
        # slower to train here); 4 epochs, lr 3e-4 in the last (full: 60, from 40)
        '6d': dict(dec_depth=21, epochs=4, lr_drop_epoch=3, layout='course', iaf_depth=1),
        # 6e, all alike: decoder depth 11, PixelCNN depth 5 (full: 51, 9), IAF steps of one masked
        # block (full: 9), 2 warm-up epochs + 2 autoregressive (full: 10 + 10), IS NLL on 500 test images
        '6e-baseline': dict(CPU_6E),
        '6e-warmup': dict(CPU_6E, kl_warmup=1, kl_warmup_start=2),
        '6e-freebits': dict(CPU_6E, free_bits=0.25),  # 12.25 nats in all (full: 0.5, 24.5), as the committed run
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
    layout="5b, 5c, 6a and 6c: layout 'v1' of models.py, with which their committed runs were trained (a ReLU before "
           "the output convolution instead of after the embedding, biased embeddings, PyTorch's default "
           "initialisation of the VAE networks); it is kept so that their model files load and every reported "
           "number reproduces. 6b, 6d and 6e use the course's networks and initialisation",
    init_output_bias="Gaussian VAE: the decoder's output bias starts at the logit of the mean training image; "
                     "measured in this profile: without it the run stalled at the all-black image (test -ELBO "
                     "45,288 with KL -> 0 after 5 epochs), with it the test -ELBO was 3,229.8 after one epoch",
)

REASONS = dict(cpu=CPU_REASONS, smoke=dict(layout='see cpu'))

RESUMABLE = ('compile', 'compile_train', 'epochs', 'test_images', 'monitor_images', 'is_images', 'is_samples',
             'is_batch', 'is_chunk', 'au_samples', 'n_samples', 'checkpoint_minutes')  # may change between runs

PRECISIONS = ('fp32', 'bf16', 'fp16')

# CUDA compute capability from which GPUs have bfloat16 tensor cores (Ampere). Below it (a T4, a
# V100) the tensor cores run float16 only: precision 'auto' trains there in float16 with loss
# scaling (gpu_precision), our choice for speed; float32 on every other GPU.
BF16_CAPABILITY = (8, 0)

# Parts whose test numbers trained in bfloat16 matched float32 in the cpu profile, where both runs
# are committed (results/cpu-bf16/<part>, results/cpu/<part>): in each likelihood bound or estimate
# the two share, bfloat16 is not measurably worse (its paired difference is below two standard
# errors; tests/test_report.py checks each against the committed runs). Precision 'auto' trains
# only these in bfloat16, in these profiles, and only on a CPU with bfloat16 units on which it
# measures faster (experiments.pick_precision); float32 everywhere else.
BF16_PARITY = ('6a', '6c')
AUTO_PROFILES = ('cpu', 'full')  # smoke's numbers show nothing, so tests train it as asked
BF16_FLAGS = ('amx_bf16', 'avx512_bf16', 'bf16')  # /proc/cpuinfo: x86 AMX and AVX-512, Arm's BF16

REMEDIES = ('baseline', 'warmup', 'freebits', 'weak')

LAYOUTS = ('course', 'v1')  # models.py's layouts: the framework's networks, and those of the committed cpu runs


# Every number a part can report: key -> (label, the model kinds whose summary reports it).
# 'test_nll_is' stands for test_nll_is<M>, M the part's is_samples; the others are in metrics.json only.
QUANTITIES = {
    'test_elbo': ('−ELBO', ('gaussian_vae', 'binary_vae')),
    'test_elbo_mc': ('−ELBO, Monte-Carlo KL', ('gaussian_vae',)),
    'test_nll': ('NLL (exact)', ('pixelcnn',)),
    'test_nll_is': ('NLL, importance sampling', ('binary_vae',)),
    'kl': ('KL term', ('gaussian_vae', 'binary_vae')),
    'active_units': ('active units', ('gaussian_vae', 'binary_vae')),
    'test_recon': ('reconstruction', ()),
    'kl_mc': ('KL term, Monte-Carlo', ()),
}


def is_quantity(cfg):
    """The key of the importance-sampled NLL of a part: test_nll_is<M>."""
    return f"test_nll_is{cfg['is_samples']}"


def quantities(cfg):
    """The numbers a part reports (summary.json), in the order of QUANTITIES."""
    return [is_quantity(cfg) if k == 'test_nll_is' else k for k, (_, kinds) in QUANTITIES.items()
            if cfg['model'] in kinds]


def quantity_label(q):
    """A quantity's name in words, e.g. 'NLL, importance sampling (M = 1000)'."""
    if q.startswith('test_nll_is'):
        return f'{QUANTITIES["test_nll_is"][0]} (M = {q[len("test_nll_is"):]})'
    return QUANTITIES.get(q, (q,))[0]


def check_precision(precision):
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {", ".join(PRECISIONS)}, got {precision!r}')

def gpu_precision(device):
    """Precision 'auto' on a device other than the CPU: 'fp16' on a CUDA device without bfloat16
    tensor cores (compute capability below BF16_CAPABILITY), 'fp32' otherwise."""
    device = torch.device(device)
    if device.type == 'cuda' and tuple(torch.cuda.get_device_capability(device)) < BF16_CAPABILITY:
        return 'fp16'
    return 'fp32'

def bf16_units(cpuinfo='/proc/cpuinfo'):
    """The CPU's bfloat16 instruction sets as the operating system reports them: the flags of
    BF16_FLAGS in Linux's cpuinfo, or FEAT_BF16 on macOS; () where none is reported."""
    if os.path.exists(cpuinfo):
        with open(cpuinfo) as fh:
            flags = set(fh.read().split())
        return tuple(f for f in BF16_FLAGS if f in flags)
    if platform.system() == 'Darwin':
        try:
            out = subprocess.run(['sysctl', '-n', 'hw.optional.arm.FEAT_BF16'], capture_output=True, text=True,
                                 timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ()
        return ('FEAT_BF16',) if out == '1' else ()
    return ()


STARTED_FILES = ('metrics.json', 'checkpoint.pt', os.path.join('checkpoint.pack', 'manifest.json'))


def precisions_started(results_dir, part, profile, files=STARTED_FILES, seed=0):
    """The precisions, float32 first, in which results_dir holds a run of the part: finished
    (metrics.json) or under way (checkpoint.pt, or one carried in checkpoint.pack: engine.transfer.carry)."""
    return [p for p in PRECISIONS
            if any(os.path.exists(os.path.join(part_dir(results_dir, part, profile, p, seed), f)) for f in files)]


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
    if cfg['layout'] not in LAYOUTS:
        raise ValueError(f'layout must be one of {", ".join(LAYOUTS)}, got {cfg["layout"]!r}')
    cfg['epochs'] = as_int(cfg['epochs'], 'epochs', minimum=1)
    cfg['compile_train'] = as_bool(cfg['compile_train'], 'compile_train')
    if cfg['is_images'] is not None:
        cfg['is_images'] = as_int(cfg['is_images'], 'is_images', minimum=1)
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
    """CUDA, else MPS, else CPU, unless a device is named (here, or by the environment variable
    HW2_DEVICE, e.g. HW2_DEVICE=cpu to keep a GPU machine's runs on its CPU)."""
    device = device if device is not None else os.environ.get('HW2_DEVICE') or None
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device('cuda')
    if getattr(torch.backends, 'mps', None) is not None and torch.backends.mps.is_available():
        return torch.device('mps')
    return torch.device('cpu')

def describe_hardware(device):
    """The hardware a run used, in words: 'CPU (AMD EPYC, x86_64), 2 cores' (the model where the
    system names it) or the GPU's name. Timings of one part on two CPU models are told apart by it."""
    device = torch.device(device)
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    if device.type == 'mps':
        return 'Apple GPU (MPS)'
    return f'CPU ({", ".join(filter(None, (cpu_model(), platform.machine())))}), {os.cpu_count()} cores'


def cpu_model(cpuinfo='/proc/cpuinfo'):
    """The CPU's model name as the system gives it (Linux: cpuinfo's 'model name'; macOS: sysctl),
    '' where it gives none."""
    try:
        with open(cpuinfo) as fh:
            for line in fh:
                key, _, value = line.partition(':')
                if key.strip().lower() in ('model name', 'cpu model') and value.strip():
                    return ' '.join(value.split())
    except OSError:
        pass
    if sys.platform == 'darwin':
        try:
            return subprocess.run(['sysctl', '-n', 'machdep.cpu.brand_string'], capture_output=True, text=True,
                                  timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return ''

def pick_profile(profile, device, quiet=False):
    """'auto' is the course's settings ('full') on CUDA and 'cpu' elsewhere."""
    if profile == 'auto':
        profile = 'full' if device.type == 'cuda' else 'cpu'
        if not quiet:
            print(f"profile 'auto' -> '{profile}' (device {device})", flush=True)
    if profile not in PROFILES:
        raise ValueError(f'unknown profile {profile!r}; the profiles are {", ".join(PROFILES)} and auto')
    return profile

def with_defaults(cfg):
    """A saved configuration, with the settings added since it was saved at what they meant then
    (SINCE), or else at their defaults."""
    return {**DEFAULTS, **SINCE, **cfg}


def changes(before, after, keys, words=('there', 'asked')):
    """'key: before-value there, after-value asked, ...' for the settings that differ."""
    return ', '.join(f'{k}: {before.get(k)!r} {words[0]}, {after.get(k)!r} {words[1]}' for k in keys)


def settings_differ(a, b):
    a, b = with_defaults(a), with_defaults(b)
    return sorted(k for k in set(a) | set(b) if k not in RESUMABLE and a.get(k) != b.get(k))


def _pixelcnn_spec(cfg):
    return {'pixelcnn': ('PixelCNN', dict(capacity=cfg['pixelcnn_capacity'], depth=cfg['pixelcnn_depth'],
                                          layout=cfg['layout']))}


def _encoder_spec(cfg):
    return ('VAEEncoder', dict(capacity=cfg['enc_capacity'], depth=cfg['enc_depth'], flows=cfg['flows'],
                               iaf_depth=cfg['iaf_depth'], layout=cfg['layout']))


def _gaussian_vae_spec(cfg):
    return {'encoder': _encoder_spec(cfg), 'decoder': ('GaussianVAEDecoder', dict(
        capacity=cfg['dec_capacity'], depth=cfg['dec_depth'], layout=cfg['layout']))}


def _binary_vae_spec(cfg):
    return {'encoder': _encoder_spec(cfg), 'decoder': ('DiscreteVAEDecoder', dict(
        capacity=cfg['dec_capacity'], depth=cfg['dec_depth'], autoregress=cfg['autoregress'],
        pixelcnn_capacity=cfg['pixelcnn_capacity'], pixelcnn_depth=cfg['pixelcnn_depth'], layout=cfg['layout']))}


# The model kinds: what models.py builds for each. objectives.OBJECTIVES, evaluate.TEST_TERMS and
# figures.DECODE hold the rest of what a kind does; a new kind is a row in each.
MODEL_SPECS = {'pixelcnn': _pixelcnn_spec, 'gaussian_vae': _gaussian_vae_spec, 'binary_vae': _binary_vae_spec}


def model_spec(cfg):
    """{name: (class name in models.py, constructor kwargs)}: what rebuilds the part's models."""
    return MODEL_SPECS[cfg['model']](cfg)


def check_extras(part, profile, cfg):
    """Refuse, in one sentence, a part whose settings need this project's extras that the models.py
    here has not (a file written to the course's API only: student.needed_extras); the other parts run."""
    need = student.needed_extras(model_spec(cfg), cfg)
    if not need:
        return
    full = [p for p in PARTS if not student.needed_extras(model_spec(config(p, 'full')), config(p, 'full'))]
    raise student.NeedsExtrasError(
        f'{part} needs {"; and ".join(need)}, in the {profile} profile: these are this project\'s extras, not the '
        f'course\'s API, so your models.py cannot train {part} here, and every part that needs none of them runs'
        + (f' (in the full profile, the course\'s settings: {", ".join(full)})' if full and profile != 'full' else ''))


def part_dir(results_dir, part, profile, precision='fp32', seed=0):
    """results_dir/<profile>[-<precision>]/<part>: where one part's files live; a training seed other
    than 0 (the seed of every run the answers quote) in <part>-seed<k> beside it, a run of its own that
    no reader takes for the part's (seed_dirs finds them, to measure the spread between seeds)."""
    return os.path.join(run_dir(results_dir, profile, precision), part if not seed else f'{part}-seed{seed}')


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


def run_dirs(results_dir):
    """The run directories under results_dir that hold a finished part: [(path, profile, precision)].
    results_dir/mine (a student's runs, engine/student.py) is none of them."""
    found = []
    for name in sorted(os.listdir(results_dir)) if os.path.isdir(results_dir) else []:
        profile, _, precision = name.partition('-')
        if name != student.MINE and profile in PROFILES and (precision or 'fp32') in PRECISIONS and any(
                os.path.exists(os.path.join(results_dir, name, p, 'metrics.json')) for p in PARTS):
            found.append((os.path.join(results_dir, name), profile, precision or 'fp32'))
    return found
