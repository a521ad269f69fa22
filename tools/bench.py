"""Benchmark: training, sampling and importance-sampling speed at the course's default sizes, on
any device. It owns the schema of the files it writes (BENCH_ROWS, BESIDE, GOALS), from which
report.py makes the speed tables of docs/speed.md.

    python -m tools.bench --json bench.json                 # this implementation, then a straightforward one
    python -m tools.bench --json bench.json --baseline-json plain.json
    python -m tools.bench --json bench.json --no-baseline
    python -m tools.bench --json bench.json --flops-json flops.json   # also FLOPs and the convolution ceiling
    python -m tools.bench --json bench.json --bf16-json bf16.json     # also training in bfloat16 (opt-in mode)

Workloads: the networks of parts 6a (pixelcnn), 6b (binary_vae), 5b (gaussian_vae), 6c (pixelvae,
PixelCNN on) and 6d (iaf_vae) at the `full` profile. Training counts one Adam step at batch 100 of
the engine's objective (objectives.objective on what train.build makes of the part's configuration);
importance sampling, M = 1000 draws per image through evaluate.importance_sampled_nll as the
engine runs it (compiled on the CPU: the first call, which compiles, is printed, not counted).
The "straightforward" column is a plain solution written the common way at the same sizes, for
side-by-side timing only (tools/straightforward.py): conv -> BatchNorm -> ReLU residual blocks, a mask multiplied into
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

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import models
from engine.config import config, describe_hardware, model_spec, pick_device, pick_profile
from engine.evaluate import float32_eval, importance_sampled_nll
from engine.timing import binary_batch, clock, in_turns, train_step
from tools.straightforward import PlainPixelCNN, plain_importance_sample, plain_training, plain_vae
from engine.objectives import objective
from engine.train import TRAINING_TF32, build, training_numerics

PROFILE = 'full'  # the networks' sizes (tests use 'smoke')
BATCH = 100       # training batch, as in the course notebooks
M = 1000          # importance samples per image
IS_CHUNK, IS_BATCH = 100, 20   # FLOP counts: 20 images x 100 draws per decoder pass (timing: engine_is_batch)
PLAIN_CHUNK = 125              # the course loop: x expanded to 125 copies, M / 125 chunks
SAMPLES = 49      # PixelCNN images drawn (the workload pixelcnn_49)
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
    """(modules, loss of a batch): the engine's networks and objective, as engine/train.py trains the part."""
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
            per_image = count_flops(lambda f=f, g=g: importance_sampled_nll(f, g, x[:1], M, IS_CHUNK, IS_BATCH))
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


def goal(group, key):
    return GOALS.get(('is', key)) if group == 'is_img_per_s' else GOALS.get(key)


def speed_table(ours, plain, flops, title):
    """One benchmark's table: this implementation against the straightforward solution, the goals,
    with `flops` the FLOP columns, and which goals are met."""
    head = '| workload | this implementation | straightforward solution | speed-up | goal |'
    rule = '|---|---|---|---|---|'
    if flops:
        head += ' goal needs | GFLOP per image | GFLOP/s reached | main layer, GFLOP/s | bound |'
        rule += '---|---|---|---|---|'
    lines, met, unmet = [title, '', head, rule], [], []
    for group, key, label in BENCH_ROWS:
        a, b, g = ours[group][key], plain.get(group, {}).get(key), goal(group, key)
        ratio = '' if b is None else f'{(b / a if group == "sample_s" else a / b):.1f}x'
        line = (f'| {label}: {key} | {a:.2f} | {"" if b is None else f"{b:.2f}"} | {ratio} | '
                f'{"" if g is None else f"{g:g}x"} |')
        fkey = {'train_img_per_s': 'train_', 'is_img_per_s': 'is_'}.get(group, '') + key
        if b is not None and g is not None:
            speedup = b / a if group == 'sample_s' else a / b
            (met if speedup >= g else unmet).append((label, key, speedup, g, fkey, b))
        if flops and fkey in flops['gflop_per_image']:
            per_image, rate = flops['gflop_per_image'][fkey], flops['layer_gflop_per_s'][fkey]
            need = '' if b is None or g is None else f'{g * b:.2f}'
            line += f' {need} | {per_image:.3g} | {a * per_image:.0f} | {rate:.0f} | {rate / per_image:.2f} |'
        elif flops:
            line += ' | | | | |'
        lines.append(line)
    if flops:
        lines += ['', FLOPS_NOTE.format(flops['ceiling_gflop_per_s'])]
    if met or unmet:
        lines += ['', goals_reading(met, unmet, flops)]
    return '\n'.join(lines) + '\n'


def goals_reading(met, unmet, flops):
    """The goals met and not met, and those that need at least the bound of their main layer."""
    def listed(rows):
        return ', '.join(f'{k} ({label.split(",")[0]}, {x:.1f}x of {g:g}x)' for label, k, x, g, _, _ in rows)
    text = f'Goals met: {listed(met) or "none"}. Not met: {listed(unmet) or "none"}'
    beyond = [f'{k} ({label.split(",")[0]})' for label, k, _, g, fkey, b in unmet if flops and fkey in
              flops['gflop_per_image'] and g * b >= flops['layer_gflop_per_s'][fkey] / flops['gflop_per_image'][fkey]]
    if beyond:
        text += (f'. For {", ".join(beyond)} the goal needs at least the bound, the images/s of an '
                 f'implementation that did nothing but run its main layer at the rate measured here')
    return text + '.'


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
    print('\n' + speed_table(out['ours'], out.get('plain', {}), out.get('flops'), 'this run:'), flush=True)
    return out


if __name__ == '__main__':
    main()
