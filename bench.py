"""Benchmark: training, sampling and importance-sampling speed at the course's default sizes.

    python bench.py --json bench.json                 # this implementation, then a straightforward one
    python bench.py --json bench.json --baseline-json plain.json
    python bench.py --json bench.json --no-baseline
    python bench.py --json bench.json --flops-json flops.json   # also FLOPs and the convolution ceiling
    python bench.py --json bench.json --bf16-json bf16.json     # also training in bfloat16 (opt-in mode)

Each workload is warmed up, then timed several times; the median is reported. The variants of
a workload (this implementation, the straightforward one, bfloat16) are timed in turns, step by
step, so that drifts in the machine's load hit them alike. Training
throughput counts a full Adam step (forward, backward, update) at batch 100. Importance sampling
uses M = 1000 samples per image. The "straightforward" column is a plain solution written the
common way, kept here for side-by-side timing only: conv -> BatchNorm -> ReLU residual blocks, a
mask multiplied into every masked kernel on every call, sampling by one full forward pass per
pixel, and importance sampling image by image (x expanded to 125 copies, 8 chunks of 125 draws,
the full decoder g(z, x) each time). This implementation's importance sampling runs compiled
(evaluate.Compiled: torch.compile with freezing), as the engine does on the CPU; the time of
its first call, which compiles, is printed and not counted. The machine is noisy: compare
columns of one run.

With --flops-json, each workload's floating-point operations per image are counted
(torch.utils.flop_counter: convolutions and matrix products, forward and backward) and set
against the device's measured ceiling: the throughput of one large dense convolution. A
speed-up target that would need more than the ceiling cannot be met without changing the math.
"""
import argparse
import json
import math
import os
import platform
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import losses
import models
from config import model_spec, pick_device
from evaluate import importance_sampled_nll
from train import adam, build, load_data, load_file, low_precision, objective

BATCH = 100     # training batch, as in the course notebooks
M = 1000        # importance samples per image
REPEATS = 5     # timed repetitions of each training step (after WARMUP)
WARMUP = 2


# ---------------------------------------------------------------- the straightforward solution
class PlainBlock(nn.Module):
    """conv -> BN -> ReLU -> conv -> BN, plus the input, then ReLU (masked or not)."""

    def __init__(self, filters, masked=False):
        super().__init__()
        conv = (lambda: models.MaskedConv2d('B', filters, filters, 3, padding=1)) if masked \
            else (lambda: nn.Conv2d(filters, filters, 3, padding=1))
        self.c1, self.b1, self.c2, self.b2 = conv(), nn.BatchNorm2d(filters), conv(), nn.BatchNorm2d(filters)

    def forward(self, x):
        return F.relu(x + self.b2(self.c2(F.relu(self.b1(self.c1(x))))))


class PlainPixelCNN(nn.Module):
    def __init__(self, capacity=32, depth=9):
        super().__init__()
        self.embed = models.MaskedConv2d('A', 1, capacity, 9, padding=4)
        self.blocks = nn.Sequential(*[PlainBlock(capacity, masked=True) for _ in range(depth)])
        self.out = models.MaskedConv2d('B', capacity, 1, 3, padding=1)
        self.bias = nn.Parameter(torch.zeros(28, 28))

    def forward(self, x):
        return self.out(self.blocks(self.embed(x))) + self.bias

    @torch.no_grad()
    def sample(self, n):
        x = torch.zeros(n, 1, 28, 28)
        for i in range(28):
            for j in range(28):
                x[:, :, i, j] = torch.bernoulli(torch.sigmoid(self(x)[:, :, i, j]))
        return x


class PlainDecoder(nn.Module):
    def __init__(self, capacity=32, depth=51, autoregress=False):
        super().__init__()
        self.capacity = capacity
        self.fc = nn.Linear(49, capacity * 49)
        self.blocks = nn.Sequential(*[PlainBlock(capacity) for _ in range(depth)])
        self.up = nn.ConvTranspose2d(capacity, 1, 4, stride=4)
        self.bias = nn.Parameter(torch.zeros(28, 28))
        self.pixelcnn = PlainPixelCNN() if autoregress else None

    def forward(self, z, x=None):
        out = self.up(self.blocks(self.fc(z.view(-1, 49)).view(-1, self.capacity, 7, 7))) + self.bias
        return out + self.pixelcnn(x) if self.pixelcnn is not None else out


class PlainEncoder(nn.Module):
    def __init__(self, capacity=32, depth=9, flows=0):
        super().__init__()
        self.embed = nn.Conv2d(1, capacity, 7, stride=4, padding=3)
        self.blocks = nn.Sequential(*[PlainBlock(capacity) for _ in range(depth)])
        self.heads = nn.Conv2d(capacity, 2, 3, padding=1)
        self.flows = nn.ModuleList([PlainIAF(capacity) for _ in range(flows)])

    def forward(self, x, eps):
        h = self.blocks(self.embed(x))
        mu, logvar = self.heads(h).flatten(2).unbind(1)
        z = mu + (0.5 * logvar).exp() * eps.view(-1, 49)
        logqzx = 0.5 * (logvar + eps.view(-1, 49) ** 2).sum(1)
        for flow in self.flows:
            z, logdet = flow(z, h)
            logqzx = logqzx + logdet
        return z, logqzx, mu, logvar


class PlainIAF(nn.Module):
    def __init__(self, filters):
        super().__init__()
        self.embed = models.MaskedConv2d('A', 1, filters, 3, padding=1)
        self.block = PlainBlock(filters, masked=True)
        self.head = models.MaskedConv2d('B', filters, 2, 3, padding=1)

    def forward(self, z, h):
        m, s = self.head(self.block(self.embed(z.view(-1, 1, 7, 7)) + h)).flatten(2).unbind(1)
        gate = torch.sigmoid(s)
        return gate * z + (1 - gate) * m, torch.log(gate).sum(1)


@torch.no_grad()
def plain_importance_sample(f, g, x):
    """The course's loop: one image at a time, x expanded to 125 copies, 8 chunks of 125 draws."""
    nll = []
    for xi in x:
        xi = xi.expand(125, 1, 28, 28)
        log_w = []
        for _ in range(M // 125):
            z, logqzx, _, _ = f(xi, torch.randn(125, 1, 7, 7))
            logpxz = F.binary_cross_entropy_with_logits(g(z, xi), xi, reduction='none').view(-1, 784).sum(1)
            log_w.append(-(logpxz + 0.5 * z.pow(2).sum(1) - logqzx))
        nll.append(-(torch.logsumexp(torch.cat(log_w), 0) - math.log(M)))
    return torch.stack(nll)


# ---------------------------------------------------------------- timing
def median_seconds(fn, repeats=REPEATS, warmup=WARMUP):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def train_step(modules, loss_fn, device, fused=True):
    """One Adam step of the given modules on a fixed binarized batch; returns a closure."""
    params = [p for m in modules for p in m.parameters()]
    opt = adam(params, 1e-4) if fused else torch.optim.Adam(params, lr=1e-4)
    x = torch.bernoulli(torch.rand(BATCH, 1, 28, 28, generator=torch.Generator().manual_seed(0))).to(device)

    def step():
        recon, div = loss_fn(x)
        opt.zero_grad(set_to_none=True)
        (recon + div).backward()
        opt.step()
    return step


def vae_loss(f, g, elbo, precision='fp32'):
    def loss(x):
        with low_precision(precision, x.device):  # the networks; the losses in float32
            z, logqzx, mu, logvar = f(x, torch.randn(x.shape[0], 1, 7, 7, device=x.device))
            out = g(z) if elbo == 'gaussian' else g(z, x)
        z, logqzx, mu, logvar, out = (t.float() for t in (z, logqzx, mu, logvar, out))
        if elbo == 'gaussian':
            return losses.gaussian_elbo(out, x, z, 0.03, mu, logvar)
        return losses.discrete_output_elbo(out, x, z, logqzx)
    return loss


def pixelcnn_loss(p, precision='fp32'):
    def loss(x):
        with low_precision(precision, x.device):
            logits = p(x)
        return losses.cross_entropy(logits.float(), x), torch.zeros((), device=x.device)
    return loss


def training_workloads(plain, device, precision='fp32'):
    """name -> (modules, loss) at the course's default sizes; this implementation's forward passes
    under low_precision(precision) (the straightforward solution: float32)."""
    Enc, Dec, Pix = (PlainEncoder, PlainDecoder, PlainPixelCNN) if plain else \
        (models.VAEEncoder, models.DiscreteVAEDecoder, models.PixelCNN)
    GDec = PlainDecoder if plain else models.GaussianVAEDecoder
    w = {}
    p = Pix().to(device)
    precision = 'fp32' if plain else precision
    w['pixelcnn'] = ([p], pixelcnn_loss(p, precision))
    f, g = Enc().to(device), Dec().to(device)
    w['binary_vae'] = ([f, g], vae_loss(f, g, 'discrete', precision))
    f, g = Enc(capacity=128, depth=51).to(device), GDec(capacity=128, depth=51).to(device)
    w['gaussian_vae'] = ([f, g], vae_loss(f, g, 'gaussian', precision))
    f, g = Enc().to(device), Dec(autoregress=True).to(device)
    if not plain:
        g.autoregress = True
    w['pixelvae'] = ([f, g], vae_loss(f, g, 'discrete', precision))
    f, g = Enc(flows=8).to(device), Dec().to(device)
    w['iaf_vae'] = ([f, g], vae_loss(f, g, 'discrete', precision))
    return w


OURS, PLAIN, BF16 = 'this implementation', 'straightforward', 'this implementation, bf16'
VARIANTS = {OURS: (False, 'fp32'), PLAIN: (True, 'fp32'), BF16: (False, 'bf16')}  # label: (plain, precision)


def in_turns(calls, repeats, warmup):
    """{label: median seconds} of each zero-argument call, timed in turns (a, b, a, b, ...) after
    `warmup` untimed calls of each: the machine's load drifts over minutes, and timing the
    variants side by side makes their ratio robust to it."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times = {label: [] for label in calls}
    for _ in range(repeats):
        for label, fn in calls.items():
            t = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t)
    return {label: statistics.median(ts) for label, ts in times.items()}


def bench_training(device, labels):
    """{label: {workload: images/s}}: one Adam step at batch 100 of each workload, the variants
    timed in turns."""
    out = {label: {} for label in labels}
    built = {label: training_workloads(VARIANTS[label][0], device, VARIANTS[label][1]) for label in labels}
    for name in built[labels[0]]:
        steps = {}
        for label in labels:
            modules, loss = built[label][name]
            for m in modules:
                m.train()
            steps[label] = train_step(modules, loss, device, fused=not VARIANTS[label][0])
        sec = in_turns(steps, REPEATS, WARMUP)
        for label in labels:
            out[label][name] = BATCH / sec[label]
        print(f'  train {name:13s} ' + ', '.join(f'{label} {BATCH / sec[label]:.1f}' for label in labels)
              + ' images/s', flush=True)
    return out


def bench_sampling(plain, device):
    torch.manual_seed(0)
    p = (PlainPixelCNN() if plain else models.PixelCNN()).to(device).eval()
    sec = median_seconds(lambda: p.sample(49), repeats=1 if plain else 3, warmup=0 if plain else 1)
    print(f'  [{PLAIN if plain else OURS}] sample 49 PixelCNN images {sec:8.2f} s', flush=True)
    return sec


def bench_importance_sampling(device, is_images, baseline):
    """{label: {workload: images/s}} at M = 1000: this implementation (compiled, as the engine runs
    it on the CPU) on is_images images, the course loop on 4 (binary VAE) or 2 (PixelVAE), in turns."""
    out = {OURS: {}, PLAIN: {}}
    x = torch.bernoulli(torch.rand(is_images, 1, 28, 28, generator=torch.Generator().manual_seed(1))).to(device)
    for name, autoregress in (('binary_vae', False), ('pixelvae', True)):
        f, g = models.VAEEncoder().to(device).eval(), models.DiscreteVAEDecoder(autoregress=autoregress).to(device).eval()
        g.autoregress = autoregress
        t0 = time.perf_counter()
        importance_sampled_nll(f, g, x[:1], M, chunk=100, batch=20, compile=True)  # compiles
        print(f'  [{OURS}] importance sampling {name}: first call (1 image, compiling where not cached) '
              f'{time.perf_counter() - t0:.1f} s', flush=True)
        calls = {OURS: lambda: importance_sampled_nll(f, g, x, M, chunk=100, batch=20, compile=True)}
        n = {OURS: is_images, PLAIN: 2 if autoregress else 4}
        if baseline:
            pf, pg = PlainEncoder().to(device).eval(), PlainDecoder(autoregress=autoregress).to(device).eval()
            calls[PLAIN] = lambda: plain_importance_sample(pf, pg, x[:n[PLAIN]])
        sec = in_turns(calls, repeats=2, warmup=1)
        for label in calls:
            out[label][name] = n[label] / sec[label]
        print(f'  importance sampling M={M} {name:11s} ' + ', '.join(f'{label} {n[label] / sec[label]:.2f}'
                                                                  for label in calls) + ' images/s', flush=True)
    return out


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
    flops = count_flops(step)
    return flops / median_seconds(step) / 1e9


# The convolution that carries most of each workload's FLOPs: (channels, side, batch, backward).
LAYERS = {
    'train_pixelcnn': (32, 28, BATCH, True), 'train_pixelvae': (32, 28, BATCH, True),
    'train_binary_vae': (32, 7, BATCH, True), 'train_iaf_vae': (32, 7, BATCH, True),
    'train_gaussian_vae': (128, 7, BATCH, True),
    'is_binary_vae': (32, 7, 2000, False), 'is_pixelvae': (32, 7, 2000, False),  # 20 images x 100 draws per pass
}


def flops_report(ours, device, is_images):
    """FLOPs per image of each workload of this implementation, the GFLOP/s it reaches, and two
    references measured in the same run: the ceiling (a large dense convolution, 128 channels at
    28x28, batch 32) and the rate of the convolution layer that carries most of the workload's
    FLOPs, at the workload's own sizes. rate / FLOPs per image bounds the images/s that any
    implementation computing those FLOPs with these convolutions can reach."""
    out = {'ceiling_gflop_per_s': conv_rate(device, 128, 28, 32), 'gflop_per_image': {}, 'gflop_per_s': {},
           'layer': {}, 'layer_gflop_per_s': {}}
    for name, (modules, loss) in training_workloads(False, device).items():
        for m in modules:
            m.train()
        per_image = count_flops(train_step(modules, loss, device)) / BATCH / 1e9
        out['gflop_per_image'][f'train_{name}'] = per_image
        out['gflop_per_s'][f'train_{name}'] = per_image * ours['train_img_per_s'][name]
    x = torch.bernoulli(torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(1))).to(device)
    for name, autoregress in (('binary_vae', False), ('pixelvae', True)):
        f, g = models.VAEEncoder().to(device).eval(), models.DiscreteVAEDecoder(autoregress=autoregress).to(device).eval()
        g.autoregress = autoregress
        per_image = count_flops(lambda: importance_sampled_nll(f, g, x, M, chunk=100, batch=20)) / 1e9
        out['gflop_per_image'][f'is_{name}'] = per_image
        out['gflop_per_s'][f'is_{name}'] = per_image * ours['is_img_per_s'][name]
    rates = {}
    for key, spec in LAYERS.items():
        if spec not in rates:
            rates[spec] = conv_rate(device, *spec)
        c, side, batch, backward = spec
        out['layer'][key] = f'3x3 conv, {c} channels, {side}x{side}, batch {batch}, ' + \
            ('forward and backward' if backward else 'forward')
        out['layer_gflop_per_s'][key] = rates[spec]
    print(f'\nconvolution ceiling: {out["ceiling_gflop_per_s"]:.0f} GFLOP/s', flush=True)
    for k, v in out['gflop_per_image'].items():
        print(f'  {k:18s} {v:8.3f} GFLOP/image  {out["gflop_per_s"][k]:7.1f} GFLOP/s; its main layer '
              f'({out["layer"][k]}) runs at {out["layer_gflop_per_s"][k]:.0f} GFLOP/s', flush=True)
    return out


def describe_device(device):
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads'


# ---------------------------------------------------------------------------------------------
# The time of a part, for `python experiments.py estimate` and `all`

def synchronize(device):
    """Wait for the device's queued work, so that a timer measures it (CUDA and MPS run asynchronously)."""
    device = torch.device(device)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    elif device.type == 'mps':
        torch.mps.synchronize()


def timed(fn, device, repeats=5):
    """The second-fastest of repeats - 1 timed calls of fn after one warm-up call, in seconds."""
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[1]


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
    eps = torch.randn(len(x), 49, device=device)

    def images_per_second(autoregress):
        if cfg['autoregress']:
            nets['decoder'].autoregress = autoregress

        def step():
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
        is_time = timed(lambda: importance_sampled_nll(nets['encoder'], nets['decoder'], xb, cfg['is_chunk'],
                                                       cfg['is_chunk'], len(xb)), device, repeats=3)
        rate['is_samples_s'] = len(xb) * cfg['is_chunk'] / is_time
        seconds += len(x_test[:cfg['is_images']]) * cfg['is_samples'] / rate['is_samples_s']
    return dict(seconds=seconds, **rate)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--json', help='write the results of this implementation here')
    ap.add_argument('--baseline-json', help="write the straightforward solution's results here")
    ap.add_argument('--device', default=None, help='cuda, mps or cpu (default: the best available)')
    ap.add_argument('--no-baseline', action='store_true', help='skip the straightforward solution')
    ap.add_argument('--no-channels-last', action='store_true', help='NCHW convolutions (models.CHANNELS_LAST = False)')
    ap.add_argument('--is-images', type=int, default=20, help='test images for importance sampling')
    ap.add_argument('--flops-json', help="count each workload's FLOPs, measure the convolution ceiling, write here")
    ap.add_argument('--bf16-json', help='also time training with bfloat16 forward passes (the opt-in '
                                        '`--precision bf16` of experiments.py; not the same arithmetic), write here')
    args = ap.parse_args()
    device = pick_device(args.device)
    models.CHANNELS_LAST = not args.no_channels_last
    print(f'device: {describe_device(device)}; torch {torch.__version__}', flush=True)
    labels = [OURS] + ([] if args.no_baseline else [PLAIN]) + ([BF16] if args.bf16_json else [])
    train = bench_training(device, labels)
    is_rates = bench_importance_sampling(device, args.is_images, not args.no_baseline)
    ours = {'train_img_per_s': train[OURS], 'sample_s': {'pixelcnn_49': bench_sampling(False, device)},
            'is_img_per_s': is_rates[OURS]}
    plain = {} if args.no_baseline else {'train_img_per_s': train[PLAIN],
                                         'sample_s': {'pixelcnn_49': bench_sampling(True, device)},
                                         'is_img_per_s': is_rates[PLAIN]}
    if args.bf16_json:
        with open(args.bf16_json, 'w') as fh:
            json.dump({'precision': 'bf16', 'train_img_per_s': train[BF16]}, fh, indent=2)
    rows = [('train', k, 'images/s') for k in ours['train_img_per_s']] + [('sample', 'pixelcnn_49', 's')] + \
           [('is', k, 'images/s') for k in ours['is_img_per_s']]
    keys = {'train': 'train_img_per_s', 'sample': 'sample_s', 'is': 'is_img_per_s'}
    print('\n| workload | unit | this implementation | straightforward | speed-up |\n|---|---|---|---|---|')
    for kind, name, unit in rows:
        a = ours[keys[kind]][name]
        b = plain.get(keys[kind], {}).get(name)
        ratio = '' if b is None else f'{(b / a if kind == "sample" else a / b):.1f}x'
        print(f'| {kind} {name} | {unit} | {a:.2f} | {"" if b is None else f"{b:.2f}"} | {ratio} |')
    if args.flops_json:
        flops = flops_report(ours, device, args.is_images)
        with open(args.flops_json, 'w') as fh:
            json.dump(flops, fh, indent=2)
    for path, values in ((args.json, ours), (args.baseline_json, plain)):
        if path and values:
            with open(path, 'w') as fh:
                json.dump(values, fh, indent=2)


if __name__ == '__main__':
    main()
