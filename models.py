"""Models for CSE 599i Homework 2: Gaussian / binary VAEs, PixelCNN, IAF and PixelVAE on MNIST.

The public API is the course framework's (students drop this file into the course notebooks):
MaskedConv2d, ConvnetBlock, MaskedConvnetBlock, PixelCNN, GaussianVAEDecoder,
DiscreteVAEDecoder, IAF, VAEEncoder. Nothing here calls `.cuda()`: every module samples on the
device of its own parameters.

References
- PixelCNN, masks 'A'/'B': van den Oord et al. 2016, "Pixel Recurrent Neural Networks".
- Incremental (cached) sampling: Ramachandran et al. 2017, "Fast Generation for Convolutional
  Autoregressive Models".
- IAF and its gated update: Kingma et al. 2016, "Improved Variational Inference with Inverse
  Autoregressive Flow".
- PixelVAE: Gulrajani et al. 2016.

Conventions. Images are (B, 1, 28, 28); latents are z (B, 49) = a 7x7 grid read in raster order.
The encoder returns `logqzx` = -log q(z|x) - (49/2) log 2pi, so that the KL estimate of
losses.discrete_output_elbo is 0.5 |z|^2 - logqzx = log q(z|x) - log r(z).
No BatchNorm anywhere: in a masked path its batch statistics leak future pixels in train mode.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGE = 28   # image side
LATENT = 7   # latent grid side; 49 latent dimensions
CHANNELS_LAST = True  # on the CPU, run convolutions in NHWC layout (oneDNN's fast path; see bench.py)


def _nhwc(x):
    """x in channels-last layout on the CPU (same values, faster convolutions); unchanged elsewhere."""
    if CHANNELS_LAST and x.device.type == 'cpu' and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _init_weights(module, std=0.01):
    """normal(0, std) weights and zero biases: each masked residual branch starts near zero, so
    the PixelCNN and each IAF step start close to the identity. (The VAE encoders and decoders keep
    PyTorch's default initialisation: with std 0.01 everywhere the Gaussian VAE at sigma = 0.03
    decodes every z to the mean digit for thousands of steps before it uses its latents. With the
    default, a pre-activation residual branch has about 1/36 of its input's variance, so a
    depth-51 stack grows activations by about (1 + 1/36)^(51/2) ~ 2 at step 0: stable.)"""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _check_images(x, name='x'):
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, IMAGE, IMAGE):
        raise ValueError(f'{name} must have shape (B, 1, {IMAGE}, {IMAGE}), got {tuple(x.shape)}')


def _as_latent(z):
    """Accept z as (B, 49) or anything that views as it, e.g. (B, 1, 7, 7); return (B, 49)."""
    if z.dim() < 2 or z[0].numel() != LATENT * LATENT:
        raise ValueError(f'z must view as (B, {LATENT * LATENT}), got shape {tuple(z.shape)}')
    return z.reshape(-1, LATENT * LATENT)


class MaskedConv2d(nn.Conv2d):
    """nn.Conv2d whose kernel sees only raster-order predecessors of the centre pixel.

    Kept taps: every row above the centre, and the taps left of the centre in the centre row;
    type 'B' also keeps the centre tap, type 'A' does not.
    """

    def __init__(self, mask_type, *conv2d_args, **conv2d_kwargs):
        super().__init__(*conv2d_args, **conv2d_kwargs)
        if mask_type not in ('A', 'B'):
            raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
        kh, kw = self.kernel_size
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f'masked kernels need odd sizes, got {self.kernel_size}')
        self.mask_type = mask_type
        mask = torch.ones(kh, kw)
        mask[kh // 2, kw // 2 + (mask_type == 'B'):] = 0
        mask[kh // 2 + 1:] = 0
        self.register_buffer('mask', mask[None, None])  # (1, 1, kh, kw)

    def forward(self, x):
        return self._conv_forward(x, self.weight * self.mask, self.bias)


class ConvnetBlock(nn.Module):
    """Pre-activation residual block: x + conv(relu(conv(relu(x)))), 3x3 kernels, shape kept."""

    def __init__(self, filters):
        super().__init__()
        self.conv1 = nn.Conv2d(filters, filters, 3, padding=1)
        self.conv2 = nn.Conv2d(filters, filters, 3, padding=1)

    def forward(self, x):  # (B, filters, H, W) -> (B, filters, H, W)
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class MaskedConvnetBlock(ConvnetBlock):
    """ConvnetBlock built from type-'B' masked convolutions: pixel i still sees only pixels <= i."""

    def __init__(self, filters):
        nn.Module.__init__(self)
        self.conv1 = MaskedConv2d('B', filters, filters, 3, padding=1)
        self.conv2 = MaskedConv2d('B', filters, filters, 3, padding=1)


class PixelCNN(nn.Module):
    """p(x) = prod_i p(x_i | x_<i), Bernoulli logits for binary 28x28 images in raster order.

    Inputs are expected in {0, 1}. Grey values in [0, 1] pass through unchanged and are not
    checked: the logits are then conditioned on grey context, and cross_entropy against grey
    targets is not a log-likelihood. Samples and likelihoods are meaningful for binary data only.
    """

    def __init__(self, capacity=32, depth=9):
        super().__init__()
        self.embed = MaskedConv2d('A', 1, capacity, 9, padding=4)
        self.blocks = nn.Sequential(*[MaskedConvnetBlock(capacity) for _ in range(depth)])
        self.out = MaskedConv2d('B', capacity, 1, 3, padding=1)
        self.bias = nn.Parameter(torch.zeros(IMAGE, IMAGE))  # per-pixel logit bias
        _init_weights(self)

    def forward(self, x):  # (B, 1, 28, 28) in {0, 1} -> logits (B, 1, 28, 28)
        _check_images(x)
        h = self.blocks(self.embed(_nhwc(x)))
        return self.out(F.relu(h)) + self.bias

    @torch.inference_mode()
    def sample(self, n=49, offset=None, uniforms=None):
        """n binary images drawn pixel by pixel in raster order.

        offset: optional logits (n, 1, 28, 28) added to the PixelCNN's (the PixelVAE decoder
        passes its latent term here). uniforms: optional U(0,1) draws (n, 1, 28, 28); pixel i is
        1 iff uniforms_i < sigmoid(logit_i), so a fixed draw makes sampling deterministic.
        """
        return _IncrementalPixelCNN(self).sample(n, offset, uniforms)

    @torch.no_grad()
    def sample_naive(self, n=49, offset=None, uniforms=None):
        """Reference sampler: one full forward pass per pixel (784 passes). Same draws as sample()."""
        device = self.bias.device
        uniforms = _uniforms(n, uniforms, device, self.bias.dtype)
        x = torch.zeros(n, 1, IMAGE, IMAGE, device=device, dtype=self.bias.dtype)
        for r in range(IMAGE):
            for c in range(IMAGE):
                logits = self(x)[:, 0, r, c]
                if offset is not None:
                    logits = logits + offset[:, 0, r, c]
                x[:, 0, r, c] = (uniforms[:, 0, r, c] < torch.sigmoid(logits)).to(x.dtype)
        return x


def _uniforms(n, uniforms, device, dtype):
    if uniforms is None:
        return torch.rand(n, 1, IMAGE, IMAGE, device=device, dtype=dtype)
    if tuple(uniforms.shape) != (n, 1, IMAGE, IMAGE):
        raise ValueError(f'uniforms must have shape ({n}, 1, {IMAGE}, {IMAGE}), got {tuple(uniforms.shape)}')
    return uniforms.to(device=device, dtype=dtype)


class _IncrementalPixelCNN:
    """Cached PixelCNN sampler (Ramachandran et al. 2017).

    The activation of any layer at pixel p depends only on input pixels before p. So once pixels
    0..p-1 are drawn, every layer's activation at p is final: it is computed once, from the
    cached activations of the layer below at the kernel's live rows, and never recomputed. Each
    step costs one small matrix product per layer instead of a full forward pass over the image.
    Cache k holds the (zero-padded) input of convolution k, as that convolution would see it, in
    (n, H, W, C) layout so that a kernel window is one short strided read.
    """

    def __init__(self, model):
        self.model = model
        convs = [model.embed] + [c for b in model.blocks for c in (b.conv1, b.conv2)] + [model.out]
        self.convs = []  # (weight over the live rows, flattened (Cout, Cin*(kh//2+1)*kw), bias, ph, pw)
        for conv in convs:
            kh, kw = conv.kernel_size
            w = (conv.weight * conv.mask)[:, :, : kh // 2 + 1]  # rows below the centre are all zero
            w = w.permute(0, 2, 3, 1).reshape(w.shape[0], -1)  # (Cout, (kh//2+1) * kw * Cin), NHWC order
            self.convs.append((w.t().contiguous(), conv.bias, kh // 2, kw // 2, conv.in_channels))

    def sample(self, n, offset, uniforms):
        m = self.model
        device, dtype = m.bias.device, m.bias.dtype
        uniforms = _uniforms(n, uniforms, device, dtype)
        logit_bias = m.bias.expand(n, 1, IMAGE, IMAGE)
        if offset is not None:
            logit_bias = logit_bias + offset.to(device=device, dtype=dtype)
        self.caches = [torch.zeros(n, IMAGE + ph, IMAGE + 2 * pw, cin, device=device, dtype=dtype)
                       for _, _, ph, pw, cin in self.convs]
        last = len(self.convs) - 1
        x = torch.zeros(n, 1, IMAGE, IMAGE, device=device, dtype=dtype)
        for r in range(IMAGE):
            for c in range(IMAGE):
                h = self._tap(0, r, c)                      # embedding at (r, c): (n, capacity)
                for k in range(1, last, 2):                 # residual blocks: convs k, k+1
                    self._put(k, r, c, F.relu(h))
                    self._put(k + 1, r, c, F.relu(self._tap(k, r, c)))
                    h = h + self._tap(k + 1, r, c)
                self._put(last, r, c, F.relu(h))
                logit = self._tap(last, r, c)[:, 0] + logit_bias[:, 0, r, c]  # (n,)
                bit = (uniforms[:, 0, r, c] < torch.sigmoid(logit)).to(dtype)
                x[:, 0, r, c] = bit
                self._put(0, r, c, bit[:, None])
        del self.caches
        return x

    def _put(self, k, r, c, value):  # value (n, Cin) -> input cache of conv k at pixel (r, c)
        _, _, ph, pw, _ = self.convs[k]
        self.caches[k][:, r + ph, c + pw] = value

    def _tap(self, k, r, c):  # output of conv k at pixel (r, c): (n, Cout)
        w, bias, ph, pw, _ = self.convs[k]
        window = self.caches[k][:, r: r + ph + 1, c: c + 2 * pw + 1]  # (n, ph+1, kw, Cin)
        window = window.reshape(window.shape[0], -1)
        return window @ w if bias is None else torch.addmm(bias, window, w)


class _LatentTrunk(nn.Module):
    """z (B, 49) -> (B, 1, 28, 28): linear 49 -> capacity*7*7, `depth` ConvnetBlocks at 7x7,
    a stride-4 transposed convolution to 28x28 and a per-pixel bias (pre-activation output)."""

    def __init__(self, capacity, depth):
        super().__init__()
        self.capacity = capacity
        self.embed = nn.Linear(LATENT * LATENT, capacity * LATENT * LATENT)
        self.blocks = nn.Sequential(*[ConvnetBlock(capacity) for _ in range(depth)])
        self.up = nn.ConvTranspose2d(capacity, 1, 4, stride=4)  # 7x7 -> 28x28
        self.bias = nn.Parameter(torch.zeros(IMAGE, IMAGE))

    def forward(self, z):
        h = self.embed(_as_latent(z)).view(-1, self.capacity, LATENT, LATENT)  # (B, C, 7, 7)
        h = self.blocks(_nhwc(h))
        return self.up(F.relu(h)) + self.bias  # (B, 1, 28, 28)


class GaussianVAEDecoder(nn.Module):
    """g(z): pixel means in [0, 1] of p(x|z) = N(g(z), sigma^2 I)."""

    def __init__(self, capacity=32, depth=51):
        super().__init__()
        self.trunk = _LatentTrunk(capacity, depth)

    def forward(self, z):  # (B, 49) -> (B, 1, 28, 28)
        return torch.sigmoid(self.trunk(z))

    @torch.no_grad()
    def sample(self, z, sigma):
        """x ~ N(g(z), sigma^2 I), clamped to [0, 1]."""
        mean = self(z)
        return (mean + sigma * torch.randn_like(mean)).clamp(0, 1)


class DiscreteVAEDecoder(nn.Module):
    """Bernoulli logits of p(x|z); with autoregression on (PixelVAE), of p(x_i | x_<i, z):
    logits = pixelcnn(x) + trunk(z).

    Built with autoregress=True the module owns a PixelCNN but starts with
    `self.autoregress = False`; the training loop switches it on after warm-up.
    """

    def __init__(self, capacity=32, depth=51, autoregress=False, pixelcnn_capacity=32, pixelcnn_depth=9):
        super().__init__()
        self.trunk = _LatentTrunk(capacity, depth)
        if autoregress:  # pixelcnn_depth < 9 gives a weaker decoder with a smaller receptive field
            self.pixelcnn = PixelCNN(pixelcnn_capacity, pixelcnn_depth)
        self.autoregress = False

    def latent_logits(self, z):  # (B, 49) -> (B, 1, 28, 28): the term that depends on z
        return self.trunk(z)

    def pixel_logits(self, x):  # (B, 1, 28, 28) -> (B, 1, 28, 28): the term that depends on x_<i
        if not self.autoregress:
            return torch.zeros((), device=x.device, dtype=x.dtype)
        return self.pixelcnn(x)

    def forward(self, z, x=None):
        logits = self.latent_logits(z)
        if self.autoregress:
            if x is None:
                raise ValueError('with autoregress on, forward(z, x) needs the images x (B, 1, 28, 28)')
            logits = logits + self.pixelcnn(x)
        return logits

    @torch.no_grad()
    def sample(self, z, uniforms=None):
        """x ~ p(x|z) for z (B, 49) or (B, 1, 7, 7): all pixels at once, or pixel by pixel
        (cached PixelCNN sampler) when autoregression is on."""
        logits = self.latent_logits(z)
        if self.autoregress:
            return self.pixelcnn.sample(logits.shape[0], offset=logits, uniforms=uniforms)
        u = _uniforms(logits.shape[0], uniforms, logits.device, logits.dtype)
        return (u < torch.sigmoid(logits)).to(logits.dtype)


class IAF(nn.Module):
    """One inverse autoregressive flow step on the 7x7 latent grid (Kingma et al. 2016, eq. 14):

        [m, s] = AR-net(z, h),  sigma = sigmoid(s),  z' = sigma * z + (1 - sigma) * m,
        log|det dz'/dz| = sum_i log sigma_i,

    with the AR-net autoregressive in raster order over the 49 positions (masked convolutions:
    a type-'A' input layer, then type-'B' layers), conditioned on encoder features h.
    """

    def __init__(self, filters):
        super().__init__()
        self.embed = MaskedConv2d('A', 1, filters, 3, padding=1)
        self.context = nn.Conv2d(filters, filters, 3, padding=1)  # h may be seen everywhere
        self.block = MaskedConvnetBlock(filters)
        self.head = MaskedConv2d('B', filters, 2, 3, padding=1)   # channels: m, s
        _init_weights(self)
        with torch.no_grad():
            self.head.bias[1] = 2.0  # sigma = sigmoid(2) ~ 0.88 at init: close to the identity

    def forward(self, z, h):
        """z (B, 49), h (B, filters, 7, 7) -> z' (B, 49), log|det dz'/dz| (B,)."""
        z_new, log_gate = self.step(z, h)
        return z_new, log_gate.sum(1)

    def step(self, z, h):
        """z' (B, 49) and the Jacobian's diagonal in log form, log sigma (B, 49)."""
        zg = z.reshape(-1, 1, LATENT, LATENT)
        a = self.block(self.embed(_nhwc(zg)) + self.context(h))
        m, s = self.head(F.relu(a)).unbind(1)  # (B, 7, 7) each
        gate = torch.sigmoid(s)
        z_new = gate * zg[:, 0] + (1 - gate) * m
        return z_new.flatten(1), F.logsigmoid(s).flatten(1)  # log sigma, computed stably


class VAEEncoder(nn.Module):
    """q(z|x) = N(mu(x), diag(exp(logvar(x)))), optionally followed by `flows` IAF steps.

    forward(x, epsilon) -> (z, logqzx, mu, logvar) with logqzx = -log q(z|x) - (49/2) log 2pi.
    Successive IAF steps alternate the raster order (the grid is rotated by 180 degrees between
    steps, a permutation with |det| = 1), so each latent is eventually conditioned on all others.
    """

    def __init__(self, capacity=32, depth=9, flows=0):
        super().__init__()
        self.embed = nn.Conv2d(1, capacity, 7, stride=4, padding=3)  # 28x28 -> 7x7
        self.blocks = nn.Sequential(*[ConvnetBlock(capacity) for _ in range(depth)])
        self.mu = nn.Conv2d(capacity, 1, 3, padding=1)
        self.logvar = nn.Conv2d(capacity, 1, 3, padding=1)
        self.flows = nn.ModuleList([IAF(capacity) for _ in range(flows)])

    def encode(self, x):
        """x (B, 1, 28, 28) -> features h (B, C, 7, 7), mu (B, 49), logvar (B, 49)."""
        _check_images(x)
        h = F.relu(self.blocks(self.embed(_nhwc(x))))
        return h, self.mu(h).flatten(1), self.logvar(h).flatten(1)

    def reparameterize(self, h, mu, logvar, epsilon, per_dim=False):
        """z = flows(mu + exp(logvar / 2) * eps) and logqzx = -log q(z|x) - (49/2) log 2pi.

        per_dim=True returns logqzx as its (B, 49) terms, one per latent dimension (their sum
        is logqzx: the Jacobian of every step is triangular, so log|det| splits per dimension).
        """
        eps = epsilon.reshape(mu.shape)
        z = mu + torch.exp(0.5 * logvar) * eps
        # -log N(z; mu, diag exp(logvar)) - (49/2) log 2pi = 0.5 sum(logvar + (z - mu)^2 / exp(logvar))
        terms = 0.5 * (logvar + eps.pow(2))  # (B, 49)
        for t, flow in enumerate(self.flows):
            if t % 2:  # reversed raster order on odd steps
                z, log_gate = flow.step(z.flip(1), h.flip(2, 3))
                z, log_gate = z.flip(1), log_gate.flip(1)
            else:
                z, log_gate = flow.step(z, h)
            terms = terms + log_gate  # -log q_t(z_t) = -log q_{t-1}(z_{t-1}) + log|det dz_t/dz_{t-1}|
        return z, (terms if per_dim else terms.sum(1))

    def forward(self, x, epsilon):
        h, mu, logvar = self.encode(x)
        if epsilon.numel() != mu.numel():
            raise ValueError(f'epsilon must have shape ({mu.shape[0]}, 1, {LATENT}, {LATENT}), '
                             f'got {tuple(epsilon.shape)}')
        z, logqzx = self.reparameterize(h, mu, logvar, epsilon)
        return z, logqzx, mu, logvar
