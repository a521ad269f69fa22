"""Benchmark: training, sampling and importance-sampling speed at the course's default sizes, on
any device. It owns the schema of the files it writes (BENCH_ROWS, BESIDE, GOALS), from which
report.py makes the speed tables of docs/speed.md.

    python bench.py --json bench.json                 # this implementation, then a straightforward one
    python bench.py --json bench.json --baseline-json plain.json
    python bench.py --json bench.json --no-baseline
    python bench.py --json bench.json --flops-json flops.json   # also FLOPs and the convolution ceiling
    python bench.py --json bench.json --bf16-json bf16.json     # also training in bfloat16 (opt-in mode)

Workloads: the networks of parts 6a (pixelcnn), 6b (binary_vae), 5b (gaussian_vae), 6c (pixelvae,
PixelCNN on) and 6d (iaf_vae) at the `full` profile. Training counts one Adam step at batch 100 of
the engine's objective (train.objective on what train.build makes of the part's configuration);
importance sampling, M = 1000 draws per image through evaluate.importance_sampled_nll as the
engine runs it (compiled on the CPU: the first call, which compiles, is printed, not counted).
The "straightforward" column is a plain solution written the common way at the same sizes, for
side-by-side timing only (straightforward.py): conv -> BatchNorm -> ReLU residual blocks, a mask multiplied into
every masked kernel on every call, the course's losses in a plain loop with torch.optim.Adam,
sampling by one full forward pass per pixel, importance sampling image by image (x expanded to
125 copies, 8 chunks of 125 draws, the full decoder g(z, x) each time).

This implementation is timed with the engine's own settings on the device: on CUDA, training under
its cuDNN settings (train.training_numerics); importance sampling with the batch of the profile the
engine runs there ('auto': on CUDA the full profile's 100 images x 100 draws = 10,000 latents a
decoder pass, on the CPU 20 x 100) and in float32 (evaluate.float32_eval, no TF32), as
evaluate.evaluate runs it. The straightforward solution runs with PyTorch's defaults.

Every tensor is made on the device and every timer waits for the device's queued work. Each
workload is warmed up, then timed several times, its variants in turns (a, b, a, b, ...) so that
drifts in the machine's load hit them alike; the median is reported. With --flops-json, FLOPs
per image (torch.utils.flop_counter) are set against the device's measured convolution rates:
a goal that needs more than them cannot be met without changing the math.
"""
import argparse
import contextlib
import json
import math
import os
import statistics
import time

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import models
from config import config, describe_hardware, model_spec, pick_device, pick_profile
from evaluate import float32_eval, importance_sampled_nll
from straightforward import PlainPixelCNN, plain_importance_sample, plain_training, plain_vae
from train import TRAINING_TF32, adam, build, load_data, load_file, objective, training_numerics

PROFILE = 'full'  # the networks' sizes (tests use 'smoke')
BATCH = 100       # training batch, as in the course notebooks
M = 1000          # importance samples per image
IS_CHUNK, IS_BATCH = 100, 20   # FLOP counts: 20 images x 100 draws per decoder pass (timing: engine_is_batch)
PLAIN_CHUNK = 125              # the course loop: x expanded to 125 copies, M / 125 chunks
SAMPLES = 49      # PixelCNN images drawn (the workload pixelcnn_49)
REPEATS = 5       # timed repetitions of each training step (after WARMUP)
WARMUP = 2
CEILING = (128, 28, 32)        # the reference convolution: channels, side, batch
WORKLOADS = {'pixelcnn': '6a', 'binary_vae': '6b', 'gaussian_vae': '5b', 'pixelvae': '6c', 'iaf_vae': '6d'}
OURS, PLAIN, BF16 = 'this implementation', 'straightforward', 'this implementation, bf16'


# ---------------------------------------------------------------- this implementation
def engine(name, device, precision='fp32'):
    """(cfg, nets): the part's configuration and the networks train.build makes of it."""
    cfg = config(WORKLOADS[name], PROFILE, precision=precision)
    nets = build(model_spec(cfg), device)
    if cfg['autoregress']:
        nets['decoder'].autoregress = True  # as after the warm-up epochs
    return cfg, nets


def engine_training(name, device, precision='fp32'):
    """(modules, loss of a batch): the engine's networks and objective, as train.py trains the part."""
    cfg, nets = engine(name, device, precision)

    def loss(x):
        eps = None if cfg['model'] == 'pixelcnn' else torch.randn(len(x), 49, device=x.device)
        return objective(nets, cfg, x, eps)[0]
    return list(nets.values()), loss


def engine_flags(device):
    """The numerics the engine trains with on CUDA (train.training_numerics); nothing elsewhere."""
    return training_numerics(device)


def engine_is_batch(name, device):
    """(images, draws per image) of one importance-sampling decoder pass as the engine runs it on the
    device: is_batch and is_chunk of the profile 'auto' picks there (CUDA: full; CPU: cpu)."""
    cfg = config(WORKLOADS[name], pick_profile('auto', torch.device(device), quiet=True))
    return cfg['is_batch'], cfg['is_chunk']


def engine_settings(device):
    """The engine's settings this run times, in words (written into the JSON file)."""
    images, draws = engine_is_batch('binary_vae', device)
    cudnn = (f'deterministic, benchmark off, TF32 {"on" if TRAINING_TF32 else "off"}'
             if torch.device(device).type == 'cuda' else 'not used')
    return (f'training: cuDNN {cudnn}; importance sampling: {images} images x {draws} draws = {images * draws} '
            f'latents a decoder pass, float32 (no TF32)')


TRAINING = {OURS: engine_training,
            PLAIN: lambda name, device: plain_training(config(WORKLOADS[name], PROFILE), device),
            BF16: lambda name, device: engine_training(name, device, 'bf16')}


# ---------------------------------------------------------------- timing
def synchronize(device):
    """Wait for the device's queued work, so that a timer measures it (CUDA and MPS run asynchronously)."""
    device = torch.device(device)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    elif device.type == 'mps':
        torch.mps.synchronize()


def clock(fn, device):
    """Seconds of one call of fn, the device's work included."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def timed(fn, device, repeats=5):
    """The second-fastest of repeats - 1 timed calls of fn after one warm-up call, in seconds."""
    times = [clock(fn, device) for _ in range(repeats)]
    return sorted(times[1:])[1]


def in_turns(calls, device, repeats=None, warmup=None):
    """{label: median seconds} of each zero-argument call, timed in turns (a, b, a, b, ...) after
    `warmup` untimed calls of each: the machine's load drifts over minutes, and timing the
    variants side by side makes their ratio robust to it."""
    repeats, warmup = REPEATS if repeats is None else repeats, WARMUP if warmup is None else warmup
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times = {label: [] for label in calls}
    for _ in range(repeats):
        for label, fn in calls.items():
            times[label].append(clock(fn, device))
    return {label: statistics.median(ts) for label, ts in times.items()}


def binary_batch(n, device, seed):
    """n random binary images (n, 1, 28, 28), drawn on the device."""
    generator = torch.Generator(device).manual_seed(seed)
    return (torch.rand(n, 1, 28, 28, generator=generator, device=device) < 0.5).float()


def train_step(modules, loss, x, fused=True, flags=contextlib.nullcontext):
    """One Adam step of the modules on the batch x, inside the context flags(); returns a closure."""
    params = [p for m in modules for p in m.parameters()]
    opt = adam(params, 1e-4) if fused else torch.optim.Adam(params, lr=1e-4)

    def step():
        with flags():
            opt.zero_grad(set_to_none=True)
            loss(x).backward()
            opt.step()
    return step


def bench_training(device, labels):
    """{label: {workload: images/s}}: one Adam step at batch 100 of each workload, the variants
    timed in turns."""
    x = binary_batch(BATCH, device, seed=0)
    out = {label: {} for label in labels}
    for name in WORKLOADS:
        steps = {label: train_step(*TRAINING[label](name, device), x, fused=label != PLAIN,
                                   flags=contextlib.nullcontext if label == PLAIN else lambda: engine_flags(device))
                 for label in labels}
        sec = in_turns(steps, device)
        for label in labels:
            out[label][name] = BATCH / sec[label]
        print(f'  train {name:13s} ' + ', '.join(f'{label} {BATCH / sec[label]:.1f}' for label in labels)
              + ' images/s', flush=True)
    return out


def bench_sampling(device, baseline):
    """{label: seconds} to sample 49 (SAMPLES) PixelCNN images."""
    cfg, nets = engine('pixelcnn', device)
    p = nets['pixelcnn'].eval()
    sec = {OURS: in_turns({OURS: lambda: p.sample(SAMPLES)}, device, repeats=3, warmup=1)[OURS]}
    if baseline:
        q = PlainPixelCNN(cfg['pixelcnn_capacity'], cfg['pixelcnn_depth']).to(device).eval()
        sec[PLAIN] = in_turns({PLAIN: lambda: q.sample(SAMPLES)}, device, repeats=1, warmup=0)[PLAIN]
    for label, s in sec.items():
        print(f'  [{label}] sample {SAMPLES} PixelCNN images {s:8.2f} s', flush=True)
    return sec


def importance_sampling_calls(name, x, baseline, device):
    """({label: call}, {label: images per call}) of importance sampling at M draws per image."""
    cfg, nets = engine(name, device)
    f, g = nets['encoder'].eval(), nets['decoder'].eval()
    batch, chunk = engine_is_batch(name, device)

    def ours(images):
        with float32_eval():
            return importance_sampled_nll(f, g, images, M, chunk, batch, compile=cfg['compile'])
    first = clock(lambda: ours(x[:1]), device)
    print(f'  [{OURS}] importance sampling {name}: first call (1 image, compiling where not cached) '
          f'{first:.1f} s', flush=True)
    calls, n = {OURS: lambda: ours(x)}, {OURS: len(x)}
    if baseline:
        pf, pg = (m.eval() for m in plain_vae(cfg, device))
        n[PLAIN] = min(len(x), 2 if cfg['autoregress'] else 4)
        calls[PLAIN] = lambda: plain_importance_sample(pf, pg, x[:n[PLAIN]], M, PLAIN_CHUNK)
    return calls, n


def bench_importance_sampling(device, is_images, baseline):
    """{label: {workload: images/s}} at M = 1000: this implementation on is_images images (None: one
    engine pass, engine_is_batch), the course loop on 4 (binary VAE) or 2 (PixelVAE), in turns."""
    out = {OURS: {}, PLAIN: {}}
    is_images = is_images or engine_is_batch('binary_vae', device)[0]
    x = binary_batch(is_images, device, seed=1)
    for name in ('binary_vae', 'pixelvae'):
        calls, n = importance_sampling_calls(name, x, baseline, device)
        sec = in_turns(calls, device, repeats=2, warmup=1)
        for label in calls:
            out[label][name] = n[label] / sec[label]
        print(f'  importance sampling M={M} {name:11s} ' + ', '.join(f'{label} {n[label] / sec[label]:.2f}'
                                                                  for label in calls) + ' images/s', flush=True)
    return out


# ---------------------------------------------------------------- FLOPs
def count_flops(fn):
    """Floating-point operations of one call of fn (convolutions and matrix products)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def conv_rate(device, channels, side, batch, backward=True):
    """GFLOP/s of one dense 3x3 convolution (channels -> channels, side x side, padding 1) in
    channels-last layout, forward and, if asked, backward: the device's rate on that layer."""
    x = torch.randn(batch, channels, side, side, device=device).contiguous(memory_format=torch.channels_last)
    conv = nn.Conv2d(channels, channels, 3, padding=1).to(device).to(memory_format=torch.channels_last)

    def step():
        if backward:
            conv(x.requires_grad_()).sum().backward()
        else:
            with torch.inference_mode():
                conv(x)
    return count_flops(step) / in_turns({0: step}, device)[0] / 1e9


def main_layer(name, training):
    """(channels, side, batch, backward) of the convolution that carries most of a workload's FLOPs:
    the PixelCNN's at 28x28, or the VAE trunk's at 7x7; importance sampling: forward only."""
    cfg = config(WORKLOADS[name], PROFILE)
    channels, side = (cfg['pixelcnn_capacity'], 28) if name in ('pixelcnn', 'pixelvae') else (cfg['dec_capacity'], 7)
    return channels, side, BATCH if training else IS_BATCH * IS_CHUNK, training


def flops_report(device):
    """{ceiling_gflop_per_s, gflop_per_image, layer_gflop_per_s}: the rate of a large dense
    convolution; FLOPs per image of each workload of this implementation; the rate of the layer
    that carries most of its FLOPs, at its own sizes. That rate / FLOPs per image bounds the
    images/s of any implementation computing those FLOPs with these convolutions."""
    out = {'ceiling_gflop_per_s': conv_rate(device, *CEILING), 'gflop_per_image': {}, 'layer_gflop_per_s': {}}
    x, rates = binary_batch(BATCH, device, seed=0), {}
    work = {f'train_{name}': (name, True) for name in WORKLOADS}
    work.update({f'is_{name}': (name, False) for name in ('binary_vae', 'pixelvae')})
    for key, (name, training) in work.items():
        if training:
            per_image = count_flops(train_step(*engine_training(name, device), x)) / BATCH
        else:
            _, nets = engine(name, device)
            f, g = nets['encoder'].eval(), nets['decoder'].eval()
            per_image = count_flops(lambda: importance_sampled_nll(f, g, x[:1], M, IS_CHUNK, IS_BATCH))
        out['gflop_per_image'][key] = per_image / 1e9
        spec = main_layer(name, training)
        if spec not in rates:
            rates[spec] = conv_rate(device, *spec)
        out['layer_gflop_per_s'][key] = rates[spec]
    return out


# ---------------------------------------------------------------- one run
@contextlib.contextmanager
def channels_last(on):
    """models.CHANNELS_LAST set to `on` inside, restored after."""
    saved, models.CHANNELS_LAST = models.CHANNELS_LAST, on
    try:
        yield
    finally:
        models.CHANNELS_LAST = saved


def run(device, baseline=True, bf16=False, flops=False, is_images=None, nhwc=True):
    """Every file the speed tables read, as {'ours', 'plain', 'bf16', 'flops'} (the last three
    when asked), measured on the device."""
    device = torch.device(device)
    hardware = describe_hardware(device)
    print(f'device: {hardware}; torch {torch.__version__}; this implementation: {engine_settings(device)}',
          flush=True)
    with channels_last(nhwc):
        torch.manual_seed(0)
        labels = [OURS] + ([PLAIN] if baseline else []) + ([BF16] if bf16 else [])
        train = bench_training(device, labels)
        is_rates = bench_importance_sampling(device, is_images, baseline)
        sample = bench_sampling(device, baseline)
        out = {'ours': dict(device=hardware, settings=engine_settings(device), train_img_per_s=train[OURS],
                            sample_s={'pixelcnn_49': sample[OURS]}, is_img_per_s=is_rates[OURS])}
        if baseline:
            out['plain'] = dict(train_img_per_s=train[PLAIN], sample_s={'pixelcnn_49': sample[PLAIN]},
                                is_img_per_s=is_rates[PLAIN])
        if bf16:
            out['bf16'] = dict(train_img_per_s=train[BF16])
        if flops:
            out['flops'] = flops_report(device)
    return out


# ---------------------------------------------------------------- the time of a part
def estimate(part, cfg, device, out=None):
    """Rough wall time of a part from a few timed training steps and one importance-sampling
    pass, scaled up (less what its checkpoint in `out` has done); for `python experiments.py
    estimate` and `all`. Returns {seconds, train_images_s, autoregressive_images_s, is_samples_s}:
    images/s of training, and of training with the PixelCNN on; importance samples z_i per second."""
    torch.manual_seed(cfg['seed'])
    nets = build(model_spec(cfg), device)
    opt = adam([p for net in nets.values() for p in net.parameters()], cfg['lr'])
    x_train, x_test = load_data(cfg, train=True), load_data(cfg, train=False)
    x = x_train[:cfg['batch_size']].to(device)
    eps = torch.randn(len(x), 49, device=device)

    def images_per_second(autoregress):
        if cfg['autoregress']:
            nets['decoder'].autoregress = autoregress

        def step():
            with engine_flags(device):
                opt.zero_grad()
                objective(nets, cfg, x, eps)[0].backward()
                opt.step()
        return len(x) / timed(step, device)

    rate = dict(train_images_s=images_per_second(False), autoregressive_images_s=None, is_samples_s=None)
    ar_epochs = max(0, cfg['epochs'] - cfg['autoregress_epoch']) if cfg['autoregress'] else 0
    if ar_epochs:
        rate['autoregressive_images_s'] = images_per_second(True)
    n_train = len(x_train)
    seconds = n_train * ((cfg['epochs'] - ar_epochs) / rate['train_images_s']
                         + (ar_epochs / rate['autoregressive_images_s'] if ar_epochs else 0))
    ckpt = os.path.join(out, 'checkpoint.pt') if out else None
    if ckpt and os.path.exists(ckpt):
        done = load_file(ckpt).get('step', 0)
        seconds *= max(0.0, 1 - done / (math.ceil(n_train / cfg['batch_size']) * cfg['epochs']))
    n_eval = len(x_test[:cfg['test_images']]) + cfg['epochs'] * len(x_test[:cfg['monitor_images']])
    seconds += n_eval / (3 * (rate['autoregressive_images_s'] or rate['train_images_s']))  # forward ~ 1/3 of a step
    if cfg['model'] == 'binary_vae':
        xb = x[:min(cfg['is_batch'], len(x))]
        def one_pass():
            with float32_eval():  # as evaluate.evaluate runs it
                importance_sampled_nll(nets['encoder'], nets['decoder'], xb, cfg['is_chunk'], cfg['is_chunk'], len(xb))
        is_time = timed(one_pass, device, repeats=3)
        rate['is_samples_s'] = len(xb) * cfg['is_chunk'] / is_time
        seconds += len(x_test[:cfg['is_images']]) * cfg['is_samples'] / rate['is_samples_s']
    return dict(seconds=seconds, **rate)


def precision_speeds(part, profile, device, repeats=3):
    """{precision: training images/s} of the part at the profile's sizes and batch, one Adam step of
    the engine's objective per precision, timed in turns (in_turns); for the 'auto' precision."""
    steps = {}
    for precision in ('fp32', 'bf16'):  # what 'auto' chooses between on a CPU
        cfg = config(part, profile, precision=precision)
        torch.manual_seed(cfg['seed'])
        nets = build(model_spec(cfg), device)
        x = binary_batch(cfg['batch_size'], device, seed=0)
        eps = None if cfg['model'] == 'pixelcnn' else torch.randn(len(x), 49, device=device)
        steps[precision] = train_step(list(nets.values()), lambda x, nets=nets, cfg=cfg: objective(
            nets, cfg, x, eps)[0], x)
    seconds = in_turns(steps, device, repeats=repeats, warmup=1)
    return {precision: len(x) / s for precision, s in seconds.items()}


# ---------------------------------------------------------------- the speed tables
BENCH_ROWS = [('train_img_per_s', k, 'training, images/s') for k in WORKLOADS] + \
             [('sample_s', 'pixelcnn_49', 'sampling 49 images, s')] + \
             [('is_img_per_s', k, 'importance sampling M = 1000, images/s') for k in ('binary_vae', 'pixelvae')]
BESIDE = ('_straightforward', '_flops', '_bf16')  # the files beside results/bench_<device>.json

# Speed-up goals over a straightforward solution, per workload.
GOALS = {'pixelcnn': 2.5, 'pixelvae': 2.0, 'binary_vae': 1.5, 'gaussian_vae': 1.5, 'iaf_vae': 1.5,
         'pixelcnn_49': 20.0, ('is', 'binary_vae'): 2.0, ('is', 'pixelvae'): 5.0}

FLOPS_NOTE = (
    'Measured in the same run. *goal needs*: the goal times the straightforward figure (images/s). *GFLOP per '
    'image*: convolutions and matrix products, forward and backward, counted by torch.utils.flop_counter (masked '
    'kernels count dense, as computed). *main layer*: the rate of the 3×3 convolution that carries most of the '
    'workload\'s FLOPs, at its own sizes (PixelCNN: 32 channels at 28×28, batch 100; VAE trunks: 32 or 128 '
    'channels at 7×7; importance sampling: forward only, 2000 latents per pass). *bound*: that rate divided by '
    'the FLOPs per image, the images/s of an implementation that spent all its time in such convolutions. For '
    'reference, a large convolution (128 channels, 28×28, batch 32) runs at {:.0f} GFLOP/s.')


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--json', help='write the results of this implementation here')
    ap.add_argument('--baseline-json', help="write the straightforward solution's results here")
    ap.add_argument('--device', default=None, help='cuda, mps or cpu (default: the best available)')
    ap.add_argument('--no-baseline', action='store_true', help='skip the straightforward solution')
    ap.add_argument('--no-channels-last', action='store_true',
                    help='NCHW convolutions on the CPU (models.CHANNELS_LAST off during the run)')
    ap.add_argument('--is-images', type=int, default=None,
                    help="test images for importance sampling (default: one pass of the engine's batch, 20 on "
                         'the CPU, 100 on CUDA)')
    ap.add_argument('--flops-json', help="count each workload's FLOPs, measure the convolution ceiling, write here")
    ap.add_argument('--bf16-json', help='also time training with bfloat16 forward passes (the opt-in '
                                        '`--precision bf16` of experiments.py; not the same arithmetic), write here')
    ap.add_argument('--profile', default='full', choices=['full', 'cpu', 'smoke'],
                    help="the networks' sizes (default full, the course's; smoke: a check of this script in seconds)")
    args = ap.parse_args(argv)
    global PROFILE
    PROFILE = args.profile
    out = run(pick_device(args.device), baseline=not args.no_baseline, bf16=bool(args.bf16_json),
              flops=bool(args.flops_json), is_images=args.is_images, nhwc=not args.no_channels_last)
    paths = dict(ours=args.json, plain=args.baseline_json, bf16=args.bf16_json, flops=args.flops_json)
    for key, values in out.items():
        if paths[key]:
            with open(paths[key], 'w') as fh:
                json.dump(values, fh, indent=2)
    from report import speed_table  # here: report imports this module's schema
    print('\n' + speed_table(out['ours'], out.get('plain', {}), out.get('flops'), 'this run:'), flush=True)
    return out


if __name__ == '__main__':
    main()
