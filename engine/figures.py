"""Figures for CSE 599i Homework 2: sample grids (5b, 6a-6e), reconstructions, loss curves and the
KL term against training iteration (6c's posterior collapse, 6e's remedies). Every figure is drawn
from a run's models or its history.json, never by hand, and says in its title what it shows.
"""
import math
import os

import numpy as np
import torch

import models
from engine import student
from engine.config import TITLES
from engine.evaluate import noise
from engine.files import read_json


def image_rows(rows, path, title, ncol):
    """A labelled figure of image rows: rows = [(label, images (n, 1, 28, 28))], ncol images a row."""
    import torchvision.utils as vutils  # here, not at import: a machine without them still trains
    from matplotlib.figure import Figure
    fig = Figure(figsize=(1.0 * ncol + 1.6, 1.0 * sum(math.ceil(len(x) / ncol) for _, x in rows) + 0.7),
                 tight_layout=True)
    axes = fig.subplots(len(rows), 1, squeeze=False)[:, 0]
    for ax, (label, images) in zip(axes, rows, strict=True):
        grid = vutils.make_grid(images.float().cpu(), nrow=ncol, padding=2, pad_value=0.5)  # (3, H, W)
        ax.imshow(grid[0].numpy(), cmap='gray', vmin=0, vmax=1, interpolation='nearest')
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    return path


@torch.no_grad()
def decode(decoder, z, generator):
    """Images shown for latents z: the Gaussian decoder's means g(z); the binary decoder's
    Bernoulli means sigmoid(logits); with autoregression on, samples x ~ p(x|z) (pixel by pixel)."""
    if isinstance(decoder, models.GaussianVAEDecoder):
        return decoder(z)
    if decoder.autoregress:
        uniforms = torch.rand(len(z), 1, 28, 28, generator=generator, device=z.device)
        return student.fast(decoder, 'sample')(z, uniforms=uniforms)
    return torch.sigmoid(student.fast(decoder, 'latent_logits')(z))


def what_is_shown(nets):
    if 'pixelcnn' in nets:
        return 'samples x ~ p(x), drawn pixel by pixel'
    if isinstance(nets['decoder'], models.GaussianVAEDecoder):
        return 'decoder means g(z), z ~ N(0, I)'
    if nets['decoder'].autoregress:
        return 'samples x ~ p(x|z) pixel by pixel, z ~ N(0, I)'
    return 'Bernoulli means sigmoid(logits(z)), z ~ N(0, I)'


@torch.no_grad()
def sample_figures(part, nets, cfg, test_x, out):
    """samples.png (n_samples from the model) and, for VAEs, reconstructions.png (test images above
    their decodings from z = flows(mu), eps = 0)."""
    device = test_x.device
    gen = torch.Generator(device).manual_seed(cfg['seed'] + 404)
    n, ncol = cfg['n_samples'], int(math.ceil(math.sqrt(cfg['n_samples'])))
    title = f'{part}: {TITLES[part]}, {what_is_shown(nets)}'
    if 'pixelcnn' in nets:
        uniforms = torch.rand(n, 1, 28, 28, generator=gen, device=device)
        samples = student.fast(nets['pixelcnn'], 'sample')(n, uniforms=uniforms)
        return dict(samples=image_rows([('', samples)], os.path.join(out, 'samples.png'), title, ncol))
    f, g = nets['encoder'], nets['decoder']
    samples = decode(g, noise(gen, (n, student.LATENT_DIMS)), gen)
    figs = dict(samples=image_rows([('', samples)], os.path.join(out, 'samples.png'), title, ncol))
    x = test_x[:10]
    h, mu, logvar = student.fast(f, 'encode')(x)
    z, _ = student.fast(f, 'reparameterize')(h, mu, logvar, torch.zeros_like(mu))
    figs['reconstructions'] = image_rows(
        [('test images', x), ('reconstructions', decode(g, z, gen))], os.path.join(out, 'reconstructions.png'),
        f'{part}: test images and their reconstructions from z = flows(mu(x))', 10)
    return figs


def smooth(values, width):
    """Moving average over `width` iterations (shorter at the start), on the host."""
    c = np.concatenate([[0.0], np.cumsum(np.asarray(values, dtype=np.float64))])
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - width, 0)
    return ((c[idx] - c[lo]) / (idx - lo)).tolist()


def test_segments(hist, key):
    """The per-epoch test points as line segments that do not cross the switch to autoregression."""
    switch = hist.get('autoregress_step')
    points = list(zip(hist['test_step'], hist[key], strict=True))
    if switch is None:
        return [points]
    return [p for p in ([q for q in points if q[0] <= switch], [q for q in points if q[0] > switch]) if p]


def draw_curve(ax, hist, key, test_key, width, label):
    """Train values per iteration (faint), their moving average, test points per epoch, the switch."""
    ax.plot(hist['step'], hist[key], color='C0', alpha=0.25, lw=0.5)
    ax.plot(hist['step'], smooth(hist[key], width), color='C0', label=f'train batches ({width}-step mean)')
    if test_key:
        for i, seg in enumerate(test_segments(hist, test_key)):
            ax.plot(*zip(*seg, strict=True), 'o-', color='C1', ms=4,
                    label='test, end of each epoch' if i == 0 else None)
    if hist['autoregress_step'] is not None:
        ax.axvline(hist['autoregress_step'], color='k', ls='--', lw=1, label='PixelCNN switched on')
    ax.set_xlabel('training iteration')
    ax.set_ylabel(label)
    if len(hist[key]) > 20:  # the first iterations dwarf the rest
        lo = min(hist[key])
        ax.set_ylim(lo - 0.05 * abs(lo) - 1e-3, sorted(hist[key])[int(0.98 * len(hist[key]))] * 1.05 + 1e-3)


def curve_figures(part, cfg, hist, out):
    """loss.png (train loss per iteration and test loss per epoch; reconstruction and KL for
    VAEs) and kl.png (the KL term against training iteration, the switch to autoregression and,
    under KL warm-up, the weight beta)."""
    from matplotlib.figure import Figure
    width = max(1, min(100, len(hist['step']) // 20))
    vae = cfg['model'] != 'pixelcnn'
    fig = Figure(figsize=(12 if vae else 6, 4), tight_layout=True)
    axes = fig.subplots(1, 3 if vae else 1)
    axes = list(axes) if vae else [axes]
    panels = [(axes[0], 'loss', f'{"-ELBO" if vae else "NLL"} (nats)', 'test_loss')]
    if vae:
        panels += [(axes[1], 'recon', 'reconstruction (nats)', None), (axes[2], 'kl', 'KL (nats)', 'test_kl')]
    for ax, key, label, test_key in panels:
        draw_curve(ax, hist, key, test_key, width, label)
    axes[0].legend(fontsize=8)
    fig.suptitle(f'{part}: {TITLES[part]}, training and test loss against training iteration')
    figs = dict(loss=os.path.join(out, 'loss.png'))
    fig.savefig(figs['loss'], dpi=100)
    if vae:
        figs['kl'] = kl_figure(part, hist, width, os.path.join(out, 'kl.png'))
    return figs


def kl_figure(part, hist, width, path):
    """The KL term of the ELBO against training iteration, with beta when it is not always 1."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 4), tight_layout=True)
    ax = fig.subplots()
    draw_curve(ax, hist, 'kl', 'test_kl', width, 'KL(q(z|x) || r(z)), nats')
    ax.set_ylim(bottom=min([0.0] + hist['kl'] + hist['test_kl']))
    if any(b != 1.0 for b in hist['beta']):
        beta = ax.twinx()
        beta.plot(hist['step'], hist['beta'], color='C2', lw=1, label='KL weight beta (right axis)')
        beta.set_ylim(0, 1.05)
        beta.set_ylabel('beta')
        beta.legend(fontsize=8, loc='lower right')
    ax.legend(fontsize=8)
    ax.set_title(f'{part}: the KL term against training iteration')
    fig.savefig(path, dpi=100)
    return path


STYLES = {'6e-baseline': dict(color='k', ls='-', marker='o', lw=2.2, zorder=5),  # on top of the others
          '6e-warmup': dict(color='C1', ls='--', marker='s'), '6e-freebits': dict(color='C2', ls='-.', marker='^'),
          '6e-weak': dict(color='C3', ls=(0, (1, 1.5)), marker='D')}


def remedies_kl_figure(results_dir):
    """results_dir/6e_kl.png: the KL term against training iteration of every 6e part that has run
    (training batches, moving mean over 50 iterations), a line style and marker each, the
    baseline on top, the switch to the PixelCNN marked."""
    from matplotlib.figure import Figure

    drawn = [p for p in STYLES if os.path.exists(os.path.join(results_dir, p, 'history.json'))]
    if not drawn:
        return None
    fig = Figure(figsize=(8, 4.5), tight_layout=True)
    ax = fig.subplots()
    for i, part in enumerate(drawn):
        h = read_json(os.path.join(results_dir, part, 'history.json'))
        every = max(len(drawn), len(h['step']) // 10)  # markers staggered, so that none hides another
        ax.plot(h['step'], smooth(h['kl'], 50), label=f'{part}: {TITLES[part]}', ms=6,
                markevery=(i * every // len(drawn), every), **{'lw': 1.6, **STYLES[part]})
        if h.get('autoregress_step') is not None and part == drawn[0]:
            ax.axvline(h['autoregress_step'], color='0.4', ls=':', lw=1.2, label='PixelCNN switched on')
    ax.set(xlabel='training iteration', ylabel='KL term of the ELBO (nats, 50-step mean)', ylim=(0, None),
           title='6e: PixelVAE + IAF encoder, KL term per remedy')
    ax.legend(fontsize=8)
    fig.savefig(os.path.join(results_dir, '6e_kl.png'), dpi=100)
    return os.path.join(results_dir, '6e_kl.png')
