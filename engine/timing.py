"""Timing on any device, and the time a part will take: timers that wait for the device's queued
work, variants timed in turns so that a drift in the machine's load hits them alike, and
`estimate`, a part's wall time from a few timed steps (`python experiments.py estimate`, `all`).
tools/bench.py times the workloads with these timers.
"""
import contextlib
import math
import os
import statistics
import time

import torch

from engine.config import config, model_spec
from engine.evaluate import float32_eval, importance_sampled_nll
from engine.modelfiles import load_file
from engine.objectives import objective
from engine.train import adam, build, load_data, training_numerics

REPEATS = 5       # timed repetitions of each call (after WARMUP)
WARMUP = 2


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
            with training_numerics(device):
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
        steps[precision] = train_step(list(nets.values()), lambda x, nets=nets, cfg=cfg, eps=eps: objective(
            nets, cfg, x, eps)[0], x)
    seconds = in_turns(steps, device, repeats=repeats, warmup=1)
    return {precision: len(x) / s for precision, s in seconds.items()}
