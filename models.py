"""Models for CSE 599i Homework 2: Gaussian / binary VAEs, PixelCNN, IAF and PixelVAE on MNIST.

The public API and the architecture are the course framework's (students drop this file into the
course notebooks): MaskedConv2d, ConvnetBlock, MaskedConvnetBlock, PixelCNN, GaussianVAEDecoder,
DiscreteVAEDecoder, IAF, VAEEncoder. At default arguments every class has the framework's layers,
bias flags, parameter names and shapes, and initialisation (every weight normal(0, 0.01), every
bias 0; the IAF on its own keeps PyTorch's default, as there, and is re-initialised by the encoder
that owns it). tests/test_models.py pins this against a table of the framework's parameters.

The student's parts: the residual blocks (5a, 6a), the IAF update in VAEEncoder (6d) and the
samplers. Nothing here calls `.cuda()`: every module samples on the device of its own parameters.

`layout='v1'` rebuilds the networks of model files written before the course layout (ReLU
placement, biased embeddings, PyTorch's default initialisation of the VAE networks, a one-block
IAF with a joint m/s head): the engine passes it when a model file records no layout, so those
files still load and give the numbers they gave.

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
import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGE = 28   # image side
LATENT = 7   # latent grid side; 49 latent dimensions
LAYOUTS = ('course', 'v1')
CHANNELS_LAST = True  # on the CPU, run convolutions in NHWC layout (oneDNN's fast path; see bench.py)


def _nhwc(x):
    """x in channels-last layout on the CPU (same values, faster convolutions); unchanged elsewhere."""
    if CHANNELS_LAST and x.device.type == 'cpu' and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _course_init(module):
    """The framework's initialisation: every parameter whose name ends in 'weight' normal(0, 0.01),
    every one ending in 'bias' 0, in the order of named_parameters."""
    for name, p in module.named_parameters():
        if name.endswith('weight'):
            nn.init.normal_(p, 0.0, 0.01)
        elif name.endswith('bias'):
            nn.init.zeros_(p)


def _init_weights_v1(module, std=0.01):
    """Layout v1's initialisation of the PixelCNN and IAF: normal(0, std) weights, zero biases, by module."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _check_layout(layout):
    if layout not in LAYOUTS:
        raise ValueError(f'layout must be one of {", ".join(LAYOUTS)}, got {layout!r}')


def _check_size(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f'{name} must be an integer >= {minimum}, got {value!r}')


def _check_stack(capacity, depth, layout):
    """A residual stack's capacity, depth and layout, checked: (capacity, layout)."""
    _check_size('capacity', capacity, 1)
    _check_size('depth', depth, 0)
    _check_layout(layout)
    return capacity, layout


def _check_images(x, name='x'):
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, IMAGE, IMAGE):
        raise ValueError(f'{name} must have shape (B, 1, {IMAGE}, {IMAGE}), got {tuple(x.shape)}')


def _as_latent(z, name='z'):
    """z as (B, 49) from (B, 49), (B, 7, 7) or (B, 1, 7, 7); anything else is an error, not a silent reshape."""
    if tuple(z.shape[1:]) not in ((LATENT * LATENT,), (LATENT, LATENT), (1, LATENT, LATENT)):
        raise ValueError(f'{name} must have shape (B, {LATENT * LATENT}) or (B, 1, {LATENT}, {LATENT}), '
                         f'got {tuple(z.shape)}')
    return z.reshape(-1, LATENT * LATENT)


def _count(n):
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f'n must be a non-negative integer, got {n!r}')
    return n


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
    """Pre-activation residual block (5a): x + conv(relu(conv(relu(x)))), 3x3 kernels, shape kept."""

    def __init__(self, filters):
        super().__init__()
        _check_size('filters', filters, 1)
        self.conv1 = nn.Conv2d(filters, filters, 3, padding=1)
        self.conv2 = nn.Conv2d(filters, filters, 3, padding=1)

    def forward(self, x):  # (B, filters, H, W) -> (B, filters, H, W)
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class MaskedConvnetBlock(ConvnetBlock):
    """ConvnetBlock built from type-'B' masked convolutions (6a): pixel i still sees only pixels <= i."""

    def __init__(self, filters):
        nn.Module.__init__(self)
        _check_size('filters', filters, 1)
        self.conv1 = MaskedConv2d('B', filters, filters, 3, padding=1)
        self.conv2 = MaskedConv2d('B', filters, filters, 3, padding=1)


class PixelCNN(nn.Module):
    """p(x) = prod_i p(x_i | x_<i), Bernoulli logits for binary 28x28 images in raster order:
    logits = image(resnet(relu(embed(x)))) + bias, embed a 9x9 type-'A' convolution without bias.

    Inputs are expected in {0, 1}. Grey values in [0, 1] pass through unchanged and are not
    checked: the logits are then conditioned on grey context, and cross_entropy against grey
    targets is not a log-likelihood. Samples and likelihoods are meaningful for binary data only.
    """

    def __init__(self, capacity=32, depth=9, layout='course'):
        super().__init__()
        self.capacity, self.layout = _check_stack(capacity, depth, layout)
        self.embed = MaskedConv2d('A', 1, capacity, 9, padding=4, bias=layout == 'v1')
        self.resnet = nn.Sequential(*[MaskedConvnetBlock(capacity) for _ in range(depth)])
        self.image = MaskedConv2d('B', capacity, 1, 3, padding=1)
        self.bias = nn.Parameter(torch.zeros(IMAGE, IMAGE))  # per-pixel logit bias
        if layout == 'course':
            _course_init(self)
        else:
            _init_weights_v1(self)

    def forward(self, x):  # (B, 1, 28, 28) in {0, 1} -> logits (B, 1, 28, 28)
        _check_images(x)
        if self.layout == 'v1':
            return self.image(F.relu(self.resnet(self.embed(_nhwc(x))))) + self.bias
        return self.image(self.resnet(F.relu(self.embed(_nhwc(x))))) + self.bias

    @torch.inference_mode()
    def sample(self, n=49, offset=None, uniforms=None):
        """n binary images drawn pixel by pixel in raster order.

        offset: optional logits (n, 1, 28, 28) added to the PixelCNN's (the PixelVAE decoder
        passes its latent term here). uniforms: optional U(0,1) draws (n, 1, 28, 28); pixel i is
        1 iff uniforms_i < sigmoid(logit_i), so a fixed draw makes sampling deterministic.
        """
        return _IncrementalPixelCNN(self).sample(_count(n), offset, uniforms)

    @torch.no_grad()
    def sample_naive(self, n=49, offset=None, uniforms=None):
        """Reference sampler: one full forward pass per pixel (784 passes). Same draws as sample()."""
        device, dtype = self.bias.device, self.bias.dtype
        n = _count(n)
        uniforms, offset = _uniforms(n, uniforms, device, dtype), _offset(n, offset, device, dtype)
        x = torch.zeros(n, 1, IMAGE, IMAGE, device=device, dtype=dtype)
        for r in range(IMAGE):
            for c in range(IMAGE):
                logits = self(x)[:, 0, r, c] + offset[:, 0, r, c]
                x[:, 0, r, c] = (uniforms[:, 0, r, c] < torch.sigmoid(logits)).to(x.dtype)
        return x


def _image_noise(name, n, given, device, dtype, make):
    """A per-pixel tensor (n, 1, 28, 28) given by the caller (checked) or made by make(shape)."""
    if given is None:
        return make((n, 1, IMAGE, IMAGE))
    if tuple(given.shape) != (n, 1, IMAGE, IMAGE):
        raise ValueError(f'{name} must have shape ({n}, 1, {IMAGE}, {IMAGE}), got {tuple(given.shape)}')
    return given.to(device=device, dtype=dtype)


def _uniforms(n, uniforms, device, dtype):
    return _image_noise('uniforms', n, uniforms, device, dtype, lambda s: torch.rand(s, device=device, dtype=dtype))


def _offset(n, offset, device, dtype):
    return _image_noise('offset', n, offset, device, dtype, lambda s: torch.zeros(s, device=device, dtype=dtype))


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
        convs = [model.embed] + [c for b in model.resnet for c in (b.conv1, b.conv2)] + [model.image]
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
        if n == 0:
            return torch.zeros(0, 1, IMAGE, IMAGE, device=device, dtype=dtype)
        logit_bias = m.bias.expand(n, 1, IMAGE, IMAGE) + _offset(n, offset, device, dtype)
        self.caches = [torch.zeros(n, IMAGE + ph, IMAGE + 2 * pw, cin, device=device, dtype=dtype)
                       for _, _, ph, pw, cin in self.convs]
        last = len(self.convs) - 1
        v1 = m.layout == 'v1'
        x = torch.zeros(n, 1, IMAGE, IMAGE, device=device, dtype=dtype)
        for r in range(IMAGE):
            for c in range(IMAGE):
                h = self._tap(0, r, c)                      # embedding at (r, c): (n, capacity)
                h = h if v1 else F.relu(h)
                for k in range(1, last, 2):                 # residual blocks: convs k, k+1
                    self._put(k, r, c, F.relu(h))
                    self._put(k + 1, r, c, F.relu(self._tap(k, r, c)))
                    h = h + self._tap(k + 1, r, c)
                self._put(last, r, c, F.relu(h) if v1 else h)
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


class _LatentDecoder(nn.Module):
    """The decoders' latent path, z (B, 49) -> pre-activation logits (B, 1, 28, 28):
    image(resnet(relu(embed(z)))) + bias, with embed a bias-free linear 49 -> capacity*7*7,
    `depth` ConvnetBlocks at 7x7 and image a stride-4 transposed convolution to 28x28."""

    def __init__(self, capacity, depth, layout):
        super().__init__()
        self.capacity, self.layout = _check_stack(capacity, depth, layout)
        self.embed = nn.Linear(LATENT * LATENT, capacity * LATENT * LATENT, bias=layout == 'v1')
        self.resnet = nn.Sequential(*[ConvnetBlock(capacity) for _ in range(depth)])
        self.image = nn.ConvTranspose2d(capacity, 1, 4, stride=4)  # 7x7 -> 28x28
        self.bias = nn.Parameter(torch.zeros(IMAGE, IMAGE))

    def latent_logits(self, z):  # (B, 49) -> (B, 1, 28, 28): the term that depends on z
        h = self.embed(_as_latent(z)).view(-1, self.capacity, LATENT, LATENT)  # (B, C, 7, 7)
        if self.layout == 'v1':
            return self.image(F.relu(self.resnet(_nhwc(h)))) + self.bias
        return self.image(self.resnet(_nhwc(F.relu(h)))) + self.bias


class GaussianVAEDecoder(_LatentDecoder):
    """g(z): pixel means in [0, 1] of p(x|z) = N(g(z), sigma^2 I)."""

    def __init__(self, capacity=32, depth=51, autoregress=False, layout='course'):
        super().__init__(capacity, depth, layout)
        if layout == 'course':
            _course_init(self)

    def forward(self, z):  # (B, 49) -> (B, 1, 28, 28)
        return torch.sigmoid(self.latent_logits(z))

    @torch.no_grad()
    def sample(self, z, sigma):
        """x ~ N(g(z), sigma^2 I), clamped to [0, 1]."""
        mean = self(z)
        return (mean + sigma * torch.randn_like(mean)).clamp(0, 1)


class DiscreteVAEDecoder(_LatentDecoder):
    """Bernoulli logits of p(x|z); with autoregression on (PixelVAE), of p(x_i | x_<i, z):
    logits = pixelcnn(x) + latent_logits(z).

    Built with autoregress=True the module owns a PixelCNN but starts with
    `self.autoregress = False`; the training loop switches it on after warm-up.
    """

    def __init__(self, capacity=32, depth=51, autoregress=False, pixelcnn_capacity=32, pixelcnn_depth=9,
                 layout='course'):
        super().__init__(capacity, depth, layout)
        if autoregress:  # pixelcnn_depth < 9 gives a weaker decoder with a smaller receptive field
            self.pixelcnn = PixelCNN(pixelcnn_capacity, pixelcnn_depth, layout=layout)
        self.autoregress = False
        if layout == 'course':
            _course_init(self)

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
    """The autoregressive network of one inverse autoregressive flow step on the 7x7 latent grid
    (Kingma et al. 2016, eq. 10-14), as the framework gives it:

        u = resnet(relu(embedz(z) + embedh(h))),  m = m_head(u),  s = 1 + s_head(u),

    embedz a type-'A' 3x3 masked convolution of z (so m_i and s_i see only z_<i in raster order),
    embedh a 3x3 convolution of the encoder features h (seen everywhere), `depth` masked residual
    blocks and two type-'B' heads. The "1 +" starts the gate sigmoid(s) near sigmoid(1) ~ 0.73 while
    the heads' weights are small. The update z' = sigmoid(s) z + (1 - sigmoid(s)) m is VAEEncoder's.
    """

    def __init__(self, filters, depth=9, layout='course'):
        super().__init__()
        _check_size('filters', filters, 1)
        _check_size('depth', depth, 0)
        _check_layout(layout)
        self.layout = layout
        if layout == 'v1':  # one masked block, one two-channel head whose s-bias starts at 2
            self.embed = MaskedConv2d('A', 1, filters, 3, padding=1)
            self.context = nn.Conv2d(filters, filters, 3, padding=1)
            self.block = MaskedConvnetBlock(filters)
            self.head = MaskedConv2d('B', filters, 2, 3, padding=1)
            _init_weights_v1(self)
            with torch.no_grad():
                self.head.bias[1] = 2.0
            return
        self.embedz = MaskedConv2d('A', 1, filters, 3, padding=1, bias=False)
        self.embedh = nn.Conv2d(filters, filters, 3, padding=1, bias=False)
        self.resnet = nn.Sequential(*[MaskedConvnetBlock(filters) for _ in range(depth)])
        self.m = MaskedConv2d('B', filters, 1, 3, padding=1)
        self.s = MaskedConv2d('B', filters, 1, 3, padding=1)

    def forward(self, z, h):
        """z (B, 1, 7, 7) or (B, 49), h (B, filters, 7, 7) -> m, s (B, 1, 7, 7)."""
        z = _as_latent(z).reshape(-1, 1, LATENT, LATENT)
        if self.layout == 'v1':
            m, s = self.head(F.relu(self.block(self.embed(_nhwc(z)) + self.context(h)))).split(1, dim=1)
            return m, s
        u = self.resnet(F.relu(self.embedz(_nhwc(z)) + self.embedh(h)))
        return self.m(u), 1 + self.s(u)


class VAEEncoder(nn.Module):
    """q(z|x) = N(mu(x), diag(exp(logvar(x)))), optionally followed by `flows` IAF steps.

    forward(x, epsilon) -> (z, logqzx, mu, logvar) with logqzx = -log q(z|x) - (49/2) log 2pi.
    Successive IAF steps alternate the raster order (the grid is rotated by 180 degrees between
    steps, a permutation with |det| = 1), so each latent is eventually conditioned on all others.
    """

    def __init__(self, capacity=32, depth=9, flows=0, iaf_depth=9, layout='course'):
        super().__init__()
        for name, value, minimum in (('capacity', capacity, 1), ('depth', depth, 0), ('flows', flows, 0)):
            _check_size(name, value, minimum)
        _check_layout(layout)
        self.layout = layout
        self.embed = nn.Conv2d(1, capacity, 7, stride=4, padding=3, bias=layout == 'v1')  # 28x28 -> 7x7
        self.resnet = nn.Sequential(*[ConvnetBlock(capacity) for _ in range(depth)])
        self.mu = nn.Conv2d(capacity, 1, 3, padding=1)
        self.var = nn.Conv2d(capacity, 1, 3, padding=1)  # log variance, named as in the framework
        self.flows = nn.ModuleList([IAF(capacity, iaf_depth, layout) for _ in range(flows)])
        if layout == 'course':
            _course_init(self)

    def encode(self, x):
        """x (B, 1, 28, 28) -> features h (B, C, 7, 7), mu (B, 49), logvar (B, 49)."""
        _check_images(x)
        if self.layout == 'v1':
            h = F.relu(self.resnet(self.embed(_nhwc(x))))
        else:
            h = self.resnet(F.relu(self.embed(_nhwc(x))))
        return h, self.mu(h).flatten(1), self.var(h).flatten(1)

    def reparameterize(self, h, mu, logvar, epsilon, per_dim=False):
        """z = flows(mu + exp(logvar / 2) * eps) and logqzx = -log q(z|x) - (49/2) log 2pi.

        Each IAF step t: [m, s] = IAF_t(z, h), sigma = sigmoid(s), z <- sigma * z + (1 - sigma) * m,
        log|det dz_t/dz_{t-1}| = sum_i log sigma_i (triangular Jacobian, diagonal sigma).
        per_dim=True returns logqzx as its (B, 49) terms, one per latent dimension (their sum
        is logqzx: the Jacobian of every step is triangular, so log|det| splits per dimension).
        """
        if mu.shape != logvar.shape or mu.dim() != 2 or mu.shape[1] != LATENT * LATENT:
            raise ValueError(f'mu and logvar must both have shape (B, {LATENT * LATENT}), '
                             f'got {tuple(mu.shape)} and {tuple(logvar.shape)}')
        eps = _as_latent(epsilon, 'epsilon')
        if eps.shape != mu.shape:
            raise ValueError(f'epsilon must have shape ({mu.shape[0]}, {LATENT * LATENT}) or '
                             f'({mu.shape[0]}, 1, {LATENT}, {LATENT}), got {tuple(epsilon.shape)}')
        z = mu + torch.exp(0.5 * logvar) * eps
        # -log N(z; mu, diag exp(logvar)) - (49/2) log 2pi = 0.5 sum(logvar + (z - mu)^2 / exp(logvar))
        terms = 0.5 * (logvar + eps.pow(2))  # (B, 49)
        for t, flow in enumerate(self.flows):
            if t % 2:  # reversed raster order on odd steps: rotate z and h, update, rotate back
                z, log_gate = self._flow_step(flow, z.flip(1), h.flip(2, 3))
                z, log_gate = z.flip(1), log_gate.flip(1)
            else:
                z, log_gate = self._flow_step(flow, z, h)
            terms = terms + log_gate  # -log q_t(z_t) = -log q_{t-1}(z_{t-1}) + log|det dz_t/dz_{t-1}|
        return z, (terms if per_dim else terms.sum(1))

    @staticmethod
    def _flow_step(flow, z, h):
        """z' (B, 49) = sigma * z + (1 - sigma) * m and log sigma (B, 49), computed stably as logsigmoid(s)."""
        m, s = (t.reshape(-1, LATENT, LATENT) for t in flow(z, h))  # (B, 7, 7) each
        gate = torch.sigmoid(s)
        z_new = gate * z.reshape(-1, LATENT, LATENT) + (1 - gate) * m
        return z_new.flatten(1), F.logsigmoid(s).flatten(1)

    def forward(self, x, epsilon):
        h, mu, logvar = self.encode(x)
        z, logqzx = self.reparameterize(h, mu, logvar, epsilon)
        return z, logqzx, mu, logvar


# Parameter names of layout-v1 model files -> today's (the framework's) names.
V1_RENAMES = (('blocks.', 'resnet.'), ('out.', 'image.'), ('up.', 'image.'), ('logvar.', 'var.'))


def upgrade_v1_state_dict(state_dict):
    """A state dict of a layout-v1 model file under today's names: the decoders' `trunk.` prefix
    goes, `blocks` becomes `resnet`, `out` and `up` become `image`, `logvar` becomes `var` (also
    inside a PixelVAE decoder's `pixelcnn.`)."""
    out = {}
    for key, value in state_dict.items():
        key = key[len('trunk.'):] if key.startswith('trunk.') else key
        prefix = 'pixelcnn.' if key.startswith('pixelcnn.') else ''
        rest = key[len(prefix):]
        for old, new in V1_RENAMES:
            if rest.startswith(old):
                rest = new + rest[len(old):]
                break
        out[prefix + rest] = value
    return out
