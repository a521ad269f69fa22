"""A straightforward solution of the homework's networks, written the common way, for the
benchmark's side-by-side timing only (tools/bench.py): conv -> BatchNorm -> ReLU residual blocks, the
mask multiplied into every masked kernel on every call (models.MaskedConv2d), the course's losses
in a plain loop, sampling by one full forward pass per pixel, and importance sampling image by
image. Nothing here trains or evaluates a reported model."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import losses
import models


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
        self.bias = nn.Parameter(torch.zeros(28, 28))  # cpu: a parameter, moved by the module's .to(device)

    def forward(self, x):
        return self.out(self.blocks(self.embed(x))) + self.bias

    @torch.no_grad()
    def sample(self, n):
        x = torch.zeros(n, 1, 28, 28, device=self.bias.device)
        for i in range(28):
            for j in range(28):
                x[:, :, i, j] = torch.bernoulli(torch.sigmoid(self(x)[:, :, i, j]))
        return x


class PlainDecoder(nn.Module):
    def __init__(self, capacity=32, depth=51, pixelcnn=None):
        super().__init__()
        self.capacity, self.pixelcnn = capacity, pixelcnn
        self.fc = nn.Linear(49, capacity * 49)
        self.blocks = nn.Sequential(*[PlainBlock(capacity) for _ in range(depth)])
        self.up = nn.ConvTranspose2d(capacity, 1, 4, stride=4)
        self.bias = nn.Parameter(torch.zeros(28, 28))  # cpu: a parameter, moved by the module's .to(device)

    def forward(self, z, x=None):
        out = self.up(self.blocks(self.fc(z.view(-1, 49)).view(-1, self.capacity, 7, 7))) + self.bias
        return out + self.pixelcnn(x) if self.pixelcnn is not None else out


class PlainEncoder(nn.Module):
    def __init__(self, capacity=32, depth=9, flows=0, iaf_depth=9):
        super().__init__()
        self.embed = nn.Conv2d(1, capacity, 7, stride=4, padding=3)
        self.blocks = nn.Sequential(*[PlainBlock(capacity) for _ in range(depth)])
        self.heads = nn.Conv2d(capacity, 2, 3, padding=1)
        self.flows = nn.ModuleList([PlainIAF(capacity, iaf_depth) for _ in range(flows)])

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
    def __init__(self, filters, depth):
        super().__init__()
        self.embed = models.MaskedConv2d('A', 1, filters, 3, padding=1)
        self.blocks = nn.Sequential(*[PlainBlock(filters, masked=True) for _ in range(depth)])
        self.head = models.MaskedConv2d('B', filters, 2, 3, padding=1)

    def forward(self, z, h):
        m, s = self.head(self.blocks(self.embed(z.view(-1, 1, 7, 7)) + h)).flatten(2).unbind(1)
        gate = torch.sigmoid(s)
        return gate * z + (1 - gate) * m, torch.log(gate).sum(1)


def plain_vae(cfg, device):
    """The straightforward encoder and decoder at the part's sizes."""
    f = PlainEncoder(cfg['enc_capacity'], cfg['enc_depth'], cfg['flows'], cfg['iaf_depth'])
    pixelcnn = PlainPixelCNN(cfg['pixelcnn_capacity'], cfg['pixelcnn_depth']) if cfg['autoregress'] else None
    return f.to(device), PlainDecoder(cfg['dec_capacity'], cfg['dec_depth'], pixelcnn).to(device)


def plain_training(cfg, device):
    """(modules, loss of a batch): the straightforward networks at the part's sizes (cfg) and the
    course's loss functions."""
    if cfg['model'] == 'pixelcnn':
        p = PlainPixelCNN(cfg['pixelcnn_capacity'], cfg['pixelcnn_depth']).to(device)
        return [p], lambda x: losses.cross_entropy(p(x), x)
    f, g = plain_vae(cfg, device)

    def loss(x):
        z, logqzx, mu, logvar = f(x, torch.randn(len(x), 1, 7, 7, device=x.device))
        if cfg['model'] == 'gaussian_vae':
            recon, kl = losses.gaussian_elbo(g(z), x, z, cfg['sigma'], mu, logvar)
        else:
            recon, kl = losses.discrete_output_elbo(g(z, x), x, z, logqzx)
        return recon + kl
    return [f, g], loss


@torch.no_grad()
def plain_importance_sample(f, g, x, M=1000, chunk=125):
    """The course's loop: one image at a time, x expanded to `chunk` copies, M / chunk chunks of
    `chunk` draws; -log p(x) ~ -(logsumexp_m log w_m - log M), w_m = p(x|z_m) r(z_m) / q(z_m|x)."""
    nll = []
    for xi in x:
        xi = xi.expand(chunk, 1, 28, 28)
        log_w = []
        for _ in range(M // chunk):
            z, logqzx, _, _ = f(xi, torch.randn(chunk, 1, 7, 7, device=x.device))
            logpxz = F.binary_cross_entropy_with_logits(g(z, xi), xi, reduction='none').view(-1, 784).sum(1)
            log_w.append(-(logpxz + 0.5 * z.pow(2).sum(1) - logqzx))
        nll.append(-(torch.logsumexp(torch.cat(log_w), 0) - math.log(M)))
    return torch.stack(nll)
