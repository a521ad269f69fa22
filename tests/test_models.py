"""Properties of models.py that the homework depends on: exact masks, exact IAF log-density,
the course API's shapes, and fast paths that compute the same function as the plain ones.

Tests marked course_api call only what the course notebooks call (the framework's classes and
constructors, forward, sample, the attributes the framework defines), so they also run against any
course-compatible models.py: HW2_MODELS=path/to/models.py pytest -m course_api (tests/conftest.py).
"""
import math
import os
import pathlib
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import torch
from torch.distributions import Normal

import course
import models

torch.set_num_threads(2)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The framework's samplers allocate on CUDA; this implementation samples where its parameters are.
DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
HALF_LOG_2PI_49 = 49 / 2 * math.log(2 * math.pi)


def randomize(module, std=0.3, seed=0):
    """Random non-zero weights everywhere, so a leak cannot hide behind a zero weight."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return module


def jacobian(f, x, *modules):
    """J[i, j] = d f(x)_i / d x_j by reverse-mode autograd, exact. torch.func.jacrev takes all rows
    in one vectorised pass; a forward that mutates a captured tensor in place (the framework's
    MaskedConv2d re-masks its weight on every call) cannot run under torch.func, and then each
    row gets its own backward pass, with the parameters of `modules` frozen so that the passes
    compute no weight gradients (several times faster)."""
    try:
        return torch.func.jacrev(f)(x)
    except RuntimeError:
        params = [p for m in modules for p in m.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        try:
            return torch.autograd.functional.jacobian(f, x)
        finally:
            for p in params:
                p.requires_grad_(True)


def raster_jacobian(f, x, model):
    """J[i, j] = d logit_i / d x_j over the 784 pixels of one image."""
    return jacobian(lambda v: f(v.view(1, 1, 28, 28)).flatten(), x.flatten(), model)  # (784, 784)


@pytest.mark.parametrize('mask_type,kept', [('A', 12), ('B', 13)])
def test_masked_conv_kernel(mask_type, kept):
    conv = models.MaskedConv2d(mask_type, 3, 4, 5, padding=2)
    mask = conv.mask[0, 0]
    assert int(mask.sum()) == kept                  # 2 full rows of 5 + 2 (or 3) taps in the centre row
    assert mask[:2].all() and not mask[3:].any()
    assert mask[2, :2].all() and not mask[2, 3:].any()
    assert bool(mask[2, 2]) == (mask_type == 'B') and conv.mask_type == mask_type
    with pytest.raises(ValueError):
        models.MaskedConv2d('C', 1, 1, 3)
    for size in ((4, 3), (3, 4), (2, 2)):  # no centre pixel to mask around
        with pytest.raises(ValueError, match='masked kernels need odd sizes'):
            models.MaskedConv2d(mask_type, 1, 1, size)


def leaks(model, forward, mode):
    """max |d logit_i / d x_j| over j = i (diagonal), over j > i (later) and over j < i (past), for
    one random binary image in raster order."""
    model.train(mode == 'train')
    torch.manual_seed(1)
    x = torch.bernoulli(torch.full((1, 1, 28, 28), 0.5, dtype=torch.float64))
    j = raster_jacobian(forward, x, model)
    return (j.diagonal().abs().max().item(), torch.triu(j, 1).abs().max().item(),
            torch.tril(j, -1).abs().max().item())


def causal_violations(model, forward, mode):
    """(max |d logit_i / d x_j| over j >= i, the same over j < i)."""
    diagonal, later, past = leaks(model, forward, mode)
    return max(diagonal, later), past


def leak_text(diagonal, later, mode, out, into, centre):
    """What a leak of an autoregressive network (`out`_i of inputs `into`_j, raster order) says about
    its masks: at j = i only, a type-'A' MaskedConv2d that keeps its centre tap (`centre` names the
    type-'A' layer); at j > i, taps kept after the centre."""
    got = []
    if diagonal:
        got.append(f'|d {out}_i / d {into}_i| up to {diagonal:.3g} at j = i ({out}_i sees {into}_i itself)')
    if later:
        got.append(f'|d {out}_i / d {into}_j| up to {later:.3g} for some j > i ({out}_i sees later {into}_j)')
    text = ' and '.join(got)
    if diagonal and not later:
        return (f'{text}, and nothing from any j > i: the j = i leak of a type-\'A\' MaskedConv2d that keeps its '
                f'centre tap. Type \'A\' ({centre}) must zero the centre tap as well as every tap after it; only '
                f'type \'B\' keeps the centre tap')
    text += ('. A mask keeps taps after the centre: the taps right of the centre in the centre row, or a row '
             'below it, must be zero in both types')
    if mode == 'train':
        text += ' (in train mode only, BatchNorm leaks too: its batch statistics mix every position)'
    return text


def causal(what, diagonal, later, past, mode, centre):
    """The verdict of leaks(), as an instruction."""
    course.check(diagonal == 0.0 and later == 0.0, what, 'logit i to depend on the pixels before i only (raster '
                 'order): d logit_i / d x_j = 0 for every j >= i',
                 leak_text(diagonal, later, mode, 'logit', 'x', centre))
    course.check(past > 0, what, 'logit i to depend on the pixels before it', 'no dependence on any pixel')


IMAGE = (1, 1, 28, 28)


@pytest.mark.course_api
@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_pixelcnn_is_autoregressive(mode):
    model, built = course.build(models, 'PixelCNN', capacity=8, depth=3)
    model = randomize(model).double()
    course.returns(f'{built}(x)', model, IMAGE, torch.zeros(IMAGE, dtype=torch.float64))
    diagonal, later, past = leaks(model, model, mode)
    causal(f'{built}(x) in {mode} mode', diagonal, later, past, mode,  # past > 0: the test can see a dependence
           "the PixelCNN's first layer, embed")


@pytest.mark.course_api
@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_pixelvae_decoder_is_autoregressive(mode):
    """logits_i of the PixelVAE decoder, forward(z, x) with autoregress on, see x_<i only."""
    g, built = course.build(models, 'DiscreteVAEDecoder', capacity=4, depth=2, autoregress=True)
    g.pixelcnn = course.build(models, 'PixelCNN', capacity=8, depth=2)[0]  # the framework's attribute; small is faster
    g = randomize(g).double()
    g.autoregress = True
    z = torch.randn(1, 49, dtype=torch.float64)
    course.returns(f'{built}(z, x) with autoregress = True', g, IMAGE, z, torch.zeros(IMAGE, dtype=torch.float64))
    diagonal, later, past = leaks(g, lambda x: g(z, x), mode)
    causal(f'{built}(z, x) with autoregress = True, in {mode} mode', diagonal, later, past, mode,
           "the first layer of its PixelCNN, pixelcnn.embed")


def test_masked_conv_detects_a_leak():
    """The causality check fails for a model whose mask lets the centre pixel through."""
    model = randomize(models.PixelCNN(capacity=4, depth=1)).double()
    model.embed.mask[0, 0, 4, 4] = 1  # type 'A' -> 'B': pixel i sees itself
    leak, _ = causal_violations(model, model, 'eval')
    assert leak > 0


@pytest.mark.course_api
def test_iaf_is_autoregressive():
    """m_i and s_i of IAF.forward(z, h) depend on z_<i only (raster order, strictly): the update
    z_i' = sigmoid(s_i) z_i + (1 - sigmoid(s_i)) m_i then has a triangular Jacobian with diagonal
    sigmoid(s), which is what makes log|det| = sum_i log sigmoid(s_i) (Kingma et al. 2016, eq. 15)."""
    iaf, built = course.build(models, 'IAF', 4, depth=2)
    iaf = randomize(iaf).double()
    g = torch.Generator().manual_seed(2)
    h = torch.randn(1, 4, 7, 7, generator=g, dtype=torch.float64)
    z = torch.randn(49, generator=g, dtype=torch.float64)
    what = f'{built}(z, h) -> (m, s)'
    course.tensors(what, course.call(what, iaf, z.view(1, 1, 7, 7), h), (1, 1, 7, 7), (1, 1, 7, 7))
    for k, name in enumerate(('m', 's')):
        j = jacobian(lambda v, k=k: iaf(v.view(1, 1, 7, 7), h)[k].flatten(), z, iaf)  # (49, 49)
        course.check(torch.triu(j).abs().max() == 0, f'{what}: {name}', f'{name}_i to depend on z_j for j < i only '
                     '(raster order)', leak_text(j.diagonal().abs().max().item(), torch.triu(j, 1).abs().max().item(),
                                                 'train', name, 'z', "the IAF's embedding of z, embedz"))
        course.check(torch.tril(j, -1).abs().max() > 0, f'{what}: {name}', f'{name}_i to depend on the z_j before i',
                     'no dependence on z at all')


def flow_logdet_check(flows, seed):
    torch.manual_seed(seed)
    f = randomize(models.VAEEncoder(capacity=4, depth=1, flows=flows), std=0.1, seed=seed).double()
    x = torch.rand(1, 1, 28, 28, dtype=torch.float64)
    eps = torch.randn(1, 1, 7, 7, dtype=torch.float64)
    h, mu, logvar = f.encode(x)
    z, logqzx = f.reparameterize(h, mu, logvar, eps)
    jac = jacobian(lambda e: f.reparameterize(h, mu, logvar, e.view(1, 1, 7, 7))[0].flatten(), eps.flatten())
    logdet = torch.linalg.slogdet(jac)[1]
    expected = 0.5 * eps.pow(2).sum() + logdet
    return logqzx.item(), expected.item(), jac


@pytest.mark.parametrize('flows', [0, 1, 8])
def test_iaf_logqzx_is_exact(flows):
    """logqzx = 1/2 |eps|^2 + log|det dz/deps| (= -log q(z|x) - (49/2) log 2pi), from autograd."""
    for seed in range(3):
        got, expected, jac = flow_logdet_check(flows, seed)
        assert got == pytest.approx(expected, abs=1e-6, rel=0)
    f = models.VAEEncoder(capacity=4, depth=1, flows=flows).double()
    h, mu, logvar = f.encode(torch.rand(2, 1, 28, 28, dtype=torch.float64))
    eps = torch.randn(2, 49, dtype=torch.float64)
    z, terms = f.reparameterize(h, mu, logvar, eps, per_dim=True)
    torch.testing.assert_close(terms.sum(1), f.reparameterize(h, mu, logvar, eps)[1])
    if flows == 1:  # one step is triangular in raster order: it really is autoregressive
        assert torch.triu(jac.squeeze(), 1).abs().max() == 0
    if flows == 8:  # the alternating orders make every latent depend on every other
        assert (jac.abs() > 0).float().mean() > 0.5


@pytest.mark.course_api
def test_iaf_encoder_logqzx_is_exact():
    """forward(x, eps) of a two-step IAF encoder returns logqzx = -log q(z|x) - (49/2) log 2pi, with
    -log q(z|x) = -log N(eps; 0, I) + log|det dz/deps| (change of variables, Problem 3) and the
    Jacobian dz/deps from autograd: nothing about the flow's structure is assumed."""
    B = 2
    f, built = course.build(models, 'VAEEncoder', capacity=4, depth=1, flows=2)
    f = randomize(f, std=0.1).double()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(B, 1, 28, 28, generator=g, dtype=torch.float64)
    eps = torch.randn(B, 1, 7, 7, generator=g, dtype=torch.float64)
    what = f'{built}(x, epsilon) -> (z, logqzx, mu, logvar)'
    z, logqzx, mu, logvar = course.tensors(what, course.call(what, f, x, eps), (B, 49), (B,), (B, 49), (B, 49))
    jac = jacobian(lambda e: f(x, e.view(B, 1, 7, 7))[0].flatten(), eps.flatten(), f).view(B, 49, B, 49)
    for b in range(B):
        others = [c for c in range(B) if c != b]
        course.check(jac[b][:, others].abs().max() == 0, what, f'z of image {b} to depend on its own epsilon only',
                     'a dependence on the epsilon of another image')
        logdet = torch.linalg.slogdet(jac[b, :, b]).logabsdet
        neg_log_q = -Normal(0.0, 1.0).log_prob(eps[b].flatten()).sum() + logdet
        course.check(abs(logqzx[b].item() - (neg_log_q.item() - HALF_LOG_2PI_49)) <= 1e-8, f'{what}: logqzx[{b}]',
                     f'-log q(z|x) - (49/2) log 2pi = {neg_log_q.item() - HALF_LOG_2PI_49:.8g}, with -log q(z|x) = '
                     f'-log N(epsilon; 0, I) + log|det dz/depsilon| (the flows\' log-determinants included)',
                     f'{logqzx[b].item():.8g}', note='Each step\'s log|det| is sum_i log sigmoid(s_i) only when m_i '
                     'and s_i depend on z_<i alone: if test_iaf_is_autoregressive fails too, fix that first')
        # the flows change the density by far more than the tolerance: a missing log-det term shows
        assert abs(logdet - 0.5 * logvar[b].sum()) > 1


@pytest.mark.course_api
def test_encoder_logqzx_matches_normal_log_prob():
    f, built = course.build(models, 'VAEEncoder', capacity=4, depth=1)
    x = torch.rand(3, 1, 28, 28)
    what = f'{built}(x, epsilon) -> (z, logqzx, mu, logvar)'
    z, logqzx, mu, logvar = course.tensors(what, course.call(what, f, x, torch.randn(3, 1, 7, 7)),
                                           (3, 49), (3,), (3, 49), (3, 49))
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    expected = -q.log_prob(z).sum(1) - HALF_LOG_2PI_49
    course.close(f'{what}: logqzx', logqzx, expected, '-log N(z; mu, exp(logvar)) summed over the 49 dimensions, '
                 'minus (49/2) log 2pi', 1e-5, 1e-4)


def two_step_encoder():
    """A two-step IAF encoder in float64 with random weights, and random inputs of reparameterize:
    features h without symmetry (a rotated h differs from h), mu, logvar, eps (B, 49)."""
    B = 2
    f = randomize(models.VAEEncoder(capacity=4, depth=1, flows=2, iaf_depth=1), seed=4).double()
    g = torch.Generator().manual_seed(5)
    h = torch.randn(B, 4, 7, 7, generator=g, dtype=torch.float64)
    mu, logvar, eps = (torch.randn(B, 49, generator=g, dtype=torch.float64) * scale for scale in (1, 0.5, 1))
    return f, h, mu, logvar, eps


def gated_step(iaf, z, h):
    """One IAF step from IAF.forward(z, h) -> (m, s) alone: z' = sigmoid(s) z + (1 - sigmoid(s)) m,
    log|det dz'/dz| = sum_i log sigmoid(s_i) (Kingma et al. 2016, eq. 14-15). z (B, 49)."""
    m, s = (t.reshape(-1, 49) for t in iaf(z.view(-1, 1, 7, 7), h))
    gate = torch.sigmoid(s)
    return gate * z + (1 - gate) * m, torch.log(gate).sum(1)


def test_odd_iaf_steps_rotate_z_and_h():
    """Step 1 runs in reversed raster order: its IAF sees the 180-degree rotation of both z
    (z.flip(1)) and the features h (h.flip(2, 3)), and its output is rotated back."""
    f, h, mu, logvar, eps = two_step_encoder()
    z0 = mu + (0.5 * logvar).exp() * eps
    z1, logdet0 = gated_step(f.flows[0], z0, h)
    z2, logdet1 = gated_step(f.flows[1], z1.flip(1), h.flip(2, 3))
    z2 = z2.flip(1)
    z, logqzx = f.reparameterize(h, mu, logvar, eps)
    torch.testing.assert_close(z, z2, rtol=0, atol=1e-12)
    torch.testing.assert_close(logqzx, 0.5 * (logvar + eps.pow(2)).sum(1) + logdet0 + logdet1, rtol=0, atol=1e-10)
    unrotated_context = gated_step(f.flows[1], z1.flip(1), h)[0].flip(1)
    assert (unrotated_context - z2).abs().max() > 1e-3  # h matters: the test can tell the two apart


def test_per_dimension_terms_are_log_diagonals_of_each_step():
    """reparameterize(..., per_dim=True) splits logqzx over the 49 dimensions:
    term_i = 0.5 (logvar_i + eps_i^2) + sum_t log |(dz_t/dz_{t-1})_ii|,
    each step's Jacobian from autograd without running a step by hand: A_t = dz_t/deps (the
    encoder cut to its first t steps), A_0 = diag(exp(logvar / 2)), and by the chain rule
    dz_t/dz_{t-1} = A_t A_{t-1}^{-1}. float64, dimension by dimension."""
    f, h, mu, logvar, eps = two_step_encoder()
    first = models.VAEEncoder(capacity=4, depth=1, flows=1, iaf_depth=1).double()
    first.flows[0] = f.flows[0]
    z, terms = f.reparameterize(h, mu, logvar, eps, per_dim=True)
    assert terms.shape == (2, 49)
    for b in range(2):
        A = [torch.diag((0.5 * logvar[b]).exp())]
        for enc in (first, f):
            A.append(jacobian(lambda e, enc=enc, b=b: enc.reparameterize(
                h[b:b + 1], mu[b:b + 1], logvar[b:b + 1], e.view(1, 49))[0].flatten(), eps[b]))
        log_diagonals = [torch.linalg.solve(A[t - 1], A[t], left=False).diagonal().abs().log() for t in (1, 2)]
        expected = 0.5 * (logvar[b] + eps[b].pow(2)) + log_diagonals[0] + log_diagonals[1]
        torch.testing.assert_close(terms[b], expected, rtol=0, atol=1e-10)
        # the rotated step's terms are not symmetric, so their order is visible
        assert (log_diagonals[1] - log_diagonals[1].flip(0)).abs().max() > 1e-3


@pytest.mark.course_api
def test_course_calls_and_shapes():
    """The notebooks' forward calls, at small sizes: shapes, value ranges and the PixelVAE logits
    pixelcnn(x) + (the logits with autoregress off)."""
    B = 4
    images = (B, 1, 28, 28)
    x = torch.bernoulli(torch.rand(images))
    for flows in (0, 2):
        f, built = course.build(models, 'VAEEncoder', capacity=8, depth=2, flows=flows)
        what = f'{built}(x, epsilon) -> (z, logqzx, mu, logvar)'
        z, logqzx, mu, logvar = course.tensors(what, course.call(what, f, x, torch.randn(B, 1, 7, 7)),
                                               (B, 49), (B,), (B, 49), (B, 49))
        course.check(torch.isfinite(logqzx).all(), f'{what}: logqzx', 'finite values', logqzx.tolist())
    g, built = course.build(models, 'GaussianVAEDecoder', capacity=8, depth=3)
    out = course.returns(f'{built}(z)', g, images, z)
    course.check(out.min() >= 0 and out.max() <= 1, f'{built}(z)', 'pixel means in [0, 1]',
                 f'values from {out.min().item():.3g} to {out.max().item():.3g}')
    course.returns(f'{built}(z) for z of shape (B, 49)', g, images, torch.randn(B, 49))
    pixelcnn, built = course.build(models, 'PixelCNN', capacity=4, depth=1)
    course.returns(f'{built}(x)', pixelcnn, images, x)
    d, built = course.build(models, 'DiscreteVAEDecoder', capacity=4, depth=1, autoregress=True)
    course.check(course.attribute(d, 'autoregress', built) is False, f'{built}.autoregress', 'False until the '
                 'notebook switches it on', repr(d.autoregress))
    course.check(isinstance(course.attribute(d, 'pixelcnn', built), models.PixelCNN), f'{built}.pixelcnn',
                 'a models.PixelCNN', type(d.pixelcnn).__name__)
    latent_only = course.returns(f'{built}(z) with autoregress = False', d, images, z)
    d.autoregress = True
    both = course.returns(f'{built}(z, x) with autoregress = True', d, images, z, x)
    course.close(f'{built}(z, x) with autoregress = True', both, latent_only + d.pixelcnn(x),
                 'the logits with autoregress off plus pixelcnn(x)')


@pytest.mark.course_api
def test_course_samplers():
    """sample() of each model, as the notebooks call it: shapes and values. On a GPU when there is
    one: the framework's samplers allocate with .cuda()."""
    B = 4
    g, built = course.build(models, 'GaussianVAEDecoder', capacity=8, depth=3)
    what = f'{built}.sample(z, sigma=0.03)'
    s = course.returns(what, course.attribute(g.to(DEVICE), 'sample', built), (B, 1, 28, 28),
                       torch.randn(B, 1, 7, 7, device=DEVICE), 0.03)
    course.check(s.min() >= 0 and s.max() <= 1, what, 'images in [0, 1]',
                 f'values from {s.min().item():.3g} to {s.max().item():.3g}')
    pixelcnn, built = course.build(models, 'PixelCNN', capacity=4, depth=1)
    binary(f'{built}.sample(3)', course.returns(f'{built}.sample(3)', course.attribute(
        pixelcnn.to(DEVICE), 'sample', built), (3, 1, 28, 28), 3))
    d, built = course.build(models, 'DiscreteVAEDecoder', capacity=4, depth=1, autoregress=True)
    d.pixelcnn = course.build(models, 'PixelCNN', capacity=4, depth=1)[0]  # the framework's attribute; faster small
    d = d.to(DEVICE)
    for autoregress, z in ((False, torch.randn(B, 1, 7, 7)), (True, torch.randn(B, 49))):
        d.autoregress = autoregress
        what = f'{built}.sample(z) with autoregress = {autoregress}, z of shape {tuple(z.shape)}'
        binary(what, course.returns(what, course.attribute(d, 'sample', built), (B, 1, 28, 28), z.to(DEVICE)))


def binary(what, s):
    values = sorted(set(s.unique().tolist()))
    course.check(set(values) <= {0.0, 1.0}, what, 'binary images (values 0 and 1)', f'the values {values[:5]}')


def test_engine_call_patterns():
    """This implementation's extras: the two PixelVAE logit terms, the sampler's keyword, a clear
    error for a missing x."""
    B = 4
    x = torch.bernoulli(torch.rand(B, 1, 28, 28))
    z = torch.randn(B, 49)
    s = models.PixelCNN(capacity=4, depth=1).sample(n=3)
    assert s.shape == (3, 1, 28, 28)
    d = models.DiscreteVAEDecoder(capacity=4, depth=1, autoregress=True, pixelcnn_capacity=4, pixelcnn_depth=1)
    d.autoregress = True
    torch.testing.assert_close(d(z, x), d.latent_logits(z) + d.pixelcnn(x))
    torch.testing.assert_close(d.pixel_logits(x), d.pixelcnn(x))
    with pytest.raises(ValueError, match='needs the images'):
        d(z)


# Appended to a copy of models.py, each breaks one property a course_api test checks: the
# substituted file must fail exactly those tests, and the unbroken copy must pass them.
BREAKS = {
    'test_pixelcnn_is_autoregressive[eval]': """
_course_pixelcnn_init = PixelCNN.__init__
def _pixelcnn_init_with_a_type_B_embedding(self, *args, **kwargs):
    _course_pixelcnn_init(self, *args, **kwargs)
    self.embed.mask[..., 4, 4] = 1  # 9x9 embedding, type 'A' -> 'B': pixel i sees itself
PixelCNN.__init__ = _pixelcnn_init_with_a_type_B_embedding
""",
    'test_iaf_encoder_logqzx_is_exact': """
_course_encoder_forward = VAEEncoder.forward
def _encoder_forward_without_logdet(self, x, epsilon):
    z, logqzx, mu, logvar = _course_encoder_forward(self, x, epsilon)
    eps = epsilon.reshape(z.shape)
    return z, 0.5 * (logvar + eps.pow(2)).sum(1), mu, logvar  # the flows' log|det| dropped
VAEEncoder.forward = _encoder_forward_without_logdet
""",
}


def run_course_api(models_file, junit):
    """`pytest -m course_api` on the tests in BREAKS, with HW2_MODELS=models_file, in a subprocess."""
    env = {k: v for k, v in os.environ.items() if k not in ('HW2_MODELS', 'HW2_LOSSES')}
    env['HW2_MODELS'] = str(models_file)
    selection = ' or '.join(name.replace('[', ' and ').rstrip(']') for name in BREAKS)
    return subprocess.Popen([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-m', 'course_api',
                             '-k', selection, '--junitxml', str(junit), 'tests/test_models.py'],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def outcomes(junit):
    """{test name: 'passed' / 'failed' / 'error' / 'skipped'} from a JUnit XML report."""
    result = {}
    for case in ET.parse(junit).iter('testcase'):
        kinds = [child.tag for child in case if child.tag in ('failure', 'error', 'skipped')]
        result[case.get('name')] = {'failure': 'failed'}.get(kinds[0], kinds[0]) if kinds else 'passed'
    return result


def test_course_api_tests_fail_on_a_broken_models_file(tmp_path):
    """HW2_MODELS swaps in another models.py for the course_api tests: an unbroken copy passes them,
    and a copy whose PixelCNN sees the current pixel and whose encoder drops the flows' log|det|
    fails each test that checks that property."""
    source = pathlib.Path(ROOT, 'models.py').read_text()
    (tmp_path / 'good').mkdir()
    (tmp_path / 'broken').mkdir()
    good, broken = tmp_path / 'good' / 'models.py', tmp_path / 'broken' / 'models.py'
    good.write_text(source)
    broken.write_text(source + ''.join(BREAKS.values()))
    runs = {name: run_course_api(path, tmp_path / f'{name}.xml') for name, path in (('good', good), ('broken', broken))}
    logs = {name: run.communicate(timeout=600)[0] for name, run in runs.items()}
    assert runs['good'].returncode == 0, logs['good']
    assert outcomes(tmp_path / 'good.xml') == {name: 'passed' for name in BREAKS}, logs['good']
    assert runs['broken'].returncode == 1, logs['broken']  # 1: tests ran and failed (not a usage error)
    assert outcomes(tmp_path / 'broken.xml') == {name: 'failed' for name in BREAKS}, logs['broken']


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match=r'\(B, 1, 28, 28\)'):
        models.PixelCNN(capacity=4, depth=1)(torch.zeros(2, 28, 28))
    with pytest.raises(ValueError, match='epsilon'):
        models.VAEEncoder(capacity=4, depth=1)(torch.zeros(2, 1, 28, 28), torch.zeros(3, 1, 7, 7))
    with pytest.raises(ValueError, match='49'):
        models.GaussianVAEDecoder(capacity=4, depth=1)(torch.zeros(2, 48))


def test_deep_stacks_of_layout_v1_are_stable_at_init():
    """Layout v1 (PyTorch's default initialisation of the VAE networks): depth-51 stacks neither
    explode nor vanish at step 0; the PixelCNN starts near p = 1/2."""
    torch.manual_seed(0)
    g = models.GaussianVAEDecoder(capacity=32, depth=51, layout='v1')
    f = models.VAEEncoder(capacity=32, depth=51, layout='v1')
    h = torch.randn(8, 32, 7, 7)
    growth = g.resnet(h).std() / h.std()
    assert 1.0 < growth < 4.0  # the residual branches contribute, but do not compound
    x = torch.rand(8, 1, 28, 28)
    z, logqzx, mu, logvar = f(x, torch.randn(8, 1, 7, 7))
    assert logvar.abs().max() < 3 and mu.abs().max() < 3 and torch.isfinite(logqzx).all()
    out = g(z)
    assert torch.isfinite(out).all() and out.std() > 0.01
    logits = models.PixelCNN()(torch.bernoulli(torch.rand(4, 1, 28, 28)))
    assert logits.abs().max() < 0.1


@pytest.mark.parametrize('layout', ['course', 'v1'])
@pytest.mark.parametrize('autoregressive_vae', [False, True])
def test_cached_sampler_equals_naive_sampler(autoregressive_vae, layout):
    """The incremental sampler draws exactly the naive sampler's images from the same uniforms, in
    both layouts (they place the ReLUs differently)."""
    torch.manual_seed(0)
    model = randomize(models.PixelCNN(capacity=6, depth=2, layout=layout), std=0.4).double()
    u = torch.rand(5, 1, 28, 28, dtype=torch.float64)
    offset = torch.randn(5, 1, 28, 28, dtype=torch.float64) if autoregressive_vae else None
    fast = model.sample(5, offset=offset, uniforms=u)
    slow = model.sample_naive(5, offset=offset, uniforms=u)
    assert torch.equal(fast, slow) and fast.dtype == slow.dtype == torch.float64
    assert 0.05 < fast.mean() < 0.95  # non-degenerate draws


@pytest.mark.parametrize('cls', [models.GaussianVAEDecoder, models.DiscreteVAEDecoder])
@pytest.mark.parametrize('layout', ['course', 'v1'])
def test_latent_logits_follow_the_layout(cls, layout):
    """The decoders' latent path from their own layers: course image(resnet(relu(embed(z)))) + bias,
    v1 image(relu(resnet(embed(z)))) + bias."""
    d = randomize(cls(capacity=4, depth=1, layout=layout), std=0.4).double()
    z = torch.randn(3, 49, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    h = d.embed(z).view(3, 4, 7, 7)
    expected = d.image(torch.relu(d.resnet(h))) if layout == 'v1' else d.image(d.resnet(torch.relu(h)))
    torch.testing.assert_close(d.latent_logits(z), expected + d.bias)


@pytest.mark.parametrize('layout', ['course', 'v1'])
def test_pixelcnn_logits_follow_the_layout(layout):
    """The PixelCNN from its own layers: course image(resnet(relu(embed(x)))) + bias,
    v1 image(relu(resnet(embed(x)))) + bias."""
    m = randomize(models.PixelCNN(capacity=4, depth=1, layout=layout), std=0.4).double()
    x = torch.bernoulli(torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    h = m.embed(x)
    expected = m.image(torch.relu(m.resnet(h))) if layout == 'v1' else m.image(m.resnet(torch.relu(h)))
    torch.testing.assert_close(m(x), expected + m.bias)


def test_pixelvae_decoder_builds_the_pixelcnn_asked_for():
    """At defaults the PixelVAE decoder's PixelCNN is the framework's (capacity 32, depth 9); sizes
    and layout given are passed on."""
    d = models.DiscreteVAEDecoder(capacity=4, depth=1, autoregress=True)
    assert (d.pixelcnn.capacity, len(d.pixelcnn.resnet), d.pixelcnn.layout) == (32, 9, 'course')
    d = models.DiscreteVAEDecoder(capacity=4, depth=1, autoregress=True, pixelcnn_capacity=5, pixelcnn_depth=2,
                                  layout='v1')
    assert (d.pixelcnn.capacity, len(d.pixelcnn.resnet), d.pixelcnn.layout) == (5, 2, 'v1')


def test_no_samples_come_in_the_models_dtype():
    """sample(0) returns an empty batch of the model's dtype, like any other n."""
    model = models.PixelCNN(capacity=4, depth=1).double()
    for sample in (model.sample, model.sample_naive):
        x = sample(0)
        assert x.shape == (0, 1, 28, 28) and x.dtype == torch.float64


def test_pixelvae_sample_uses_latent_and_pixelcnn():
    torch.manual_seed(0)
    d = randomize(models.DiscreteVAEDecoder(capacity=4, depth=1, autoregress=True,
                                            pixelcnn_capacity=4, pixelcnn_depth=1), std=0.4).double()
    d.autoregress = True
    z = torch.randn(3, 49, dtype=torch.float64)
    u = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    expected = d.pixelcnn.sample_naive(3, offset=d.latent_logits(z), uniforms=u)
    assert torch.equal(d.sample(z, uniforms=u), expected)


# The parameters the course framework's models.py fixes, at default arguments: (name, shape), from
# its class definitions. Parameters under `resnet.` belong to the blocks the student writes (5a, 6a)
# and are only counted. A class whose layers, bias flags or shapes drift from the framework fails.
C, D = 32, 51
FRAMEWORK = {
    'PixelCNN': ({'embed.weight': (C, 1, 9, 9), 'image.weight': (1, C, 3, 3), 'image.bias': (1,),
                  'bias': (28, 28)}, 9),
    'GaussianVAEDecoder': ({'embed.weight': (C * 49, 49), 'image.weight': (C, 1, 4, 4), 'image.bias': (1,),
                            'bias': (28, 28)}, D),
    'DiscreteVAEDecoder': ({'embed.weight': (C * 49, 49), 'image.weight': (C, 1, 4, 4), 'image.bias': (1,),
                            'bias': (28, 28)}, D),
    'IAF': ({'embedz.weight': (C, 1, 3, 3), 'embedh.weight': (C, C, 3, 3), 'm.weight': (1, C, 3, 3), 'm.bias': (1,),
             's.weight': (1, C, 3, 3), 's.bias': (1,)}, 9),
    'VAEEncoder': ({'embed.weight': (C, 1, 7, 7), 'mu.weight': (1, C, 3, 3), 'mu.bias': (1,),
                    'var.weight': (1, C, 3, 3), 'var.bias': (1,)}, 9),
}


@pytest.mark.parametrize('name', list(FRAMEWORK))
def test_default_architecture_is_the_frameworks(name):
    fixed, blocks = FRAMEWORK[name]
    model = getattr(models, name)(*([C] if name == 'IAF' else []))
    params = dict(model.named_parameters())
    own = {k: tuple(v.shape) for k, v in params.items() if not k.startswith('resnet.')}
    assert own == fixed
    assert len(model.resnet) == blocks
    block = type(model.resnet[0])
    assert block is (models.MaskedConvnetBlock if name in ('PixelCNN', 'IAF') else models.ConvnetBlock)


def test_framework_initialisation():
    """normal(0, 0.01) weights and zero biases for the PixelCNN, the decoders and the encoder (its
    IAF steps included); the IAF on its own keeps PyTorch's default, as in the framework."""
    torch.manual_seed(0)
    for model in (models.PixelCNN(), models.GaussianVAEDecoder(), models.DiscreteVAEDecoder(autoregress=True),
                  models.VAEEncoder(flows=2)):
        for name, p in model.named_parameters():
            if name.endswith('bias'):
                assert p.abs().max() == 0, name
            elif p.numel() >= 1000:
                assert abs(p.std().item() - 0.01) < 0.002 and abs(p.mean().item()) < 0.002, name
    iaf = models.IAF(C)
    assert iaf.embedh.weight.std() > 0.03  # kaiming-uniform, bound 1/sqrt(9 * 32): std ~ 0.034


@pytest.mark.course_api
def test_iaf_returns_m_and_one_plus_s():
    """IAF.forward(z, h) -> (m, s) with s = 1 + s_head(u): with the heads zeroed, m = 0 and s = 1."""
    iaf, built = course.build(models, 'IAF', 4, depth=2)
    iaf = randomize(iaf)
    with torch.no_grad():
        for name in ('m', 's'):
            head = course.attribute(iaf, name, built)
            course.attribute(head, 'weight', f'{built}.{name}').zero_()
            course.attribute(head, 'bias', f'{built}.{name}').zero_()
    what = f'{built}(z, h) -> (m, s)'
    m, s = course.tensors(what, course.call(what, iaf, torch.randn(3, 1, 7, 7), torch.randn(3, 4, 7, 7)),
                          (3, 1, 7, 7), (3, 1, 7, 7))
    course.check(torch.equal(m, torch.zeros_like(m)) and torch.equal(s, torch.ones_like(s)), f'{what} with the heads '
                 'm and s zeroed', 'm = 0 and s = 1 (s = 1 + s_head(u))', f'm up to {m.abs().max().item():.3g}, s from '
                 f'{s.min().item():.3g} to {s.max().item():.3g}')


@pytest.mark.parametrize('layout', ['course', 'v1'])
def test_v1_renaming_leaves_todays_parameter_names_alone(layout):
    """upgrade_v1_state_dict maps old names only: a state dict under today's names comes back as it is."""
    for net in (models.VAEEncoder(capacity=4, depth=1, flows=2, layout=layout),
                models.DiscreteVAEDecoder(capacity=4, depth=1, autoregress=True, pixelcnn_capacity=4,
                                          pixelcnn_depth=1, layout=layout),
                models.GaussianVAEDecoder(capacity=4, depth=1, layout=layout),
                models.PixelCNN(capacity=4, depth=1, layout=layout)):
        state = net.state_dict()
        assert list(models.upgrade_v1_state_dict(state)) == list(state)


def test_committed_v1_model_files_load():
    """A model file that records no layout rebuilds with layout 'v1' under today's parameter names."""
    import os
    from engine import modelfiles as MF
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    record = torch.load(os.path.join(root, 'results', 'cpu', '6c', 'model.pt'), weights_only=True)
    nets = MF.load_models(record['models'], 'cpu', record['autoregress'])
    assert nets['encoder'].layout == 'v1' and nets['decoder'].layout == 'v1'
    assert nets['decoder'].pixelcnn.layout == 'v1'


@pytest.mark.parametrize('layout', ['course', 'v1'])
def test_iaf_step_is_the_frameworks_formula(layout):
    """IAF.forward(z, h) computes the docstring's equation from its own layers: course,
    u = resnet(relu(embedz(z) + embedh(h))), m = m_head(u), s = 1 + s_head(u); v1, one masked
    block and a two-channel head, m and s its channels."""
    iaf = randomize(models.IAF(4, depth=2, layout=layout), std=0.2).double().eval()
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 49, generator=g, dtype=torch.float64)
    h = torch.randn(2, 4, 7, 7, generator=g, dtype=torch.float64)
    m, s = iaf(z, h)
    grid = z.view(2, 1, 7, 7)
    with torch.no_grad():
        if layout == 'course':
            u = iaf.resnet(torch.relu(iaf.embedz(grid) + iaf.embedh(h)))
            expected = iaf.m(u), 1 + iaf.s(u)
        else:
            out = iaf.head(torch.relu(iaf.block(iaf.embed(grid) + iaf.context(h))))
            expected = out[:, :1], out[:, 1:]
    for got, want in zip((m, s), expected, strict=True):
        assert got.shape == (2, 1, 7, 7)
        torch.testing.assert_close(got, want)


def test_iaf_of_layout_v1_is_autoregressive_and_sees_h():
    iaf = randomize(models.IAF(4, layout='v1')).double()
    g = torch.Generator().manual_seed(2)
    h = torch.randn(1, 4, 7, 7, generator=g, dtype=torch.float64)
    z = torch.randn(49, generator=g, dtype=torch.float64)
    for k in range(2):
        j = jacobian(lambda v, k=k: iaf(v.view(1, 1, 7, 7), h)[k].flatten(), z, iaf)  # (49, 49)
        assert torch.triu(j).abs().max() == 0 and torch.tril(j, -1).abs().max() > 0
        assert not torch.equal(iaf(z.view(1, 1, 7, 7), h)[k], iaf(z.view(1, 1, 7, 7), 2 * h)[k])


def test_layout_v1_initialisation():
    """Layout v1 (the committed cpu runs' PixelCNN and IAF): normal(0, 0.01) weights and zero biases,
    the IAF's s-bias at 2, so that its gate sigmoid(s) starts near 0.88."""
    torch.manual_seed(0)
    iaf = models.IAF(32, layout='v1')
    for model in (models.PixelCNN(layout='v1'), iaf):
        for name, p in model.named_parameters():
            if name == 'head.bias':
                assert p.tolist() == [0.0, 2.0]
            elif name.endswith('bias'):
                assert p.abs().max() == 0, name
            else:
                assert p.abs().max() < 0.1, name                 # 0.01 * (at most ~6 standard deviations)
                if p.numel() >= 1000:
                    assert abs(p.std().item() - 0.01) < 0.002 and abs(p.mean().item()) < 0.002, name


def test_iaf_steps_alternate_the_raster_order():
    """Over four steps, the odd ones (1 and 3) run in reversed raster order and the even ones do not."""
    f = randomize(models.VAEEncoder(capacity=4, depth=1, flows=4, iaf_depth=1), seed=6).double()
    g = torch.Generator().manual_seed(7)
    h = torch.randn(2, 4, 7, 7, generator=g, dtype=torch.float64)
    mu, logvar, eps = (torch.randn(2, 49, generator=g, dtype=torch.float64) * scale for scale in (1, 0.5, 1))
    z, logdet = mu + (0.5 * logvar).exp() * eps, 0
    for t, flow in enumerate(f.flows):
        if t % 2:
            z, step = gated_step(flow, z.flip(1), h.flip(2, 3))
            z = z.flip(1)
        else:
            z, step = gated_step(flow, z, h)
        logdet = logdet + step
    got, logqzx = f.reparameterize(h, mu, logvar, eps)
    torch.testing.assert_close(got, z, rtol=0, atol=1e-12)
    torch.testing.assert_close(logqzx, 0.5 * (logvar + eps.pow(2)).sum(1) + logdet, rtol=0, atol=1e-10)


@pytest.mark.parametrize('layout', ['course', 'v1'])
def test_encoder_features_are_the_frameworks(layout):
    """encode(x): course, h = resnet(relu(embed(x))); v1, h = relu(resnet(embed(x))); mu and logvar
    are the two 3x3 heads of h, flattened to (B, 49)."""
    f = randomize(models.VAEEncoder(capacity=4, depth=2, layout=layout), std=0.2).double()
    x = (torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(8)) < 0.5).double()
    h, mu, logvar = f.encode(x)
    with torch.no_grad():
        e = f.embed(x)
        want = f.resnet(torch.relu(e)) if layout == 'course' else torch.relu(f.resnet(e))
    torch.testing.assert_close(h, want)
    torch.testing.assert_close(mu, f.mu(want).flatten(1))
    torch.testing.assert_close(logvar, f.var(want).flatten(1))


def test_pixel_term_of_a_decoder_without_autoregression_is_zero():
    """pixel_logits(x), the term of the logits that depends on x_<i: a scalar 0 of x's dtype with
    autoregression off (the logits are the latent ones), the PixelCNN's logits with it on."""
    d = randomize(models.DiscreteVAEDecoder(capacity=4, depth=1, autoregress=True, pixelcnn_capacity=4,
                                            pixelcnn_depth=1), std=0.1).double()
    x = (torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(9)) < 0.5).double()
    zero = d.pixel_logits(x)
    assert zero.shape == () and zero.dtype == torch.float64 and zero.device == x.device and zero.item() == 0
    d.autoregress = True
    torch.testing.assert_close(d.pixel_logits(x), d.pixelcnn(x))


def test_shapes_of_mu_logvar_and_depths_are_checked():
    f = models.VAEEncoder(capacity=4, depth=1)
    h, ok = torch.zeros(2, 4, 7, 7), torch.zeros(2, 49)
    for mu, logvar in ((torch.zeros(2, 48), torch.zeros(2, 48)), (ok, torch.zeros(2, 48)),
                       (torch.zeros(2, 49, 1), torch.zeros(2, 49, 1))):
        with pytest.raises(ValueError, match=r'mu and logvar must both have shape \(B, 49\)'):
            f.reparameterize(h, mu, logvar, ok)
    with pytest.raises(ValueError, match=r'depth must be an integer >= 0, got -1'):
        models.IAF(4, depth=-1)
    m, s = models.IAF(4, depth=0)(ok, h)  # no residual block: the embeddings and the heads
    assert m.shape == s.shape == (2, 1, 7, 7)


def zero_model(model):
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


def test_samplers_draw_and_read_noise_in_the_models_dtype():
    """Uniforms drawn by a sampler are torch.rand of the model's dtype; uniforms and offsets a
    caller gives are converted to it first. A model whose logits are exactly 0 (p = 1/2) tells:
    the float64 uniform 1/2 - 2^-30 is 1/2 in float32, so no pixel is on; an offset just above c
    (with sigmoid(c) rounded down in float32, uniforms at that float32 value) is c in float32."""
    pixelcnn = randomize(models.PixelCNN(4, 1), std=0.2).double()
    torch.manual_seed(0)
    drawn = pixelcnn.sample(2)
    torch.manual_seed(0)
    assert torch.equal(drawn, pixelcnn.sample(2, uniforms=torch.rand(2, 1, 28, 28, dtype=torch.float64)))
    pixelcnn, decoder = zero_model(models.PixelCNN(4, 1)), zero_model(models.DiscreteVAEDecoder(4, 1))
    below = torch.full((2, 1, 28, 28), 0.5 - 2 ** -30, dtype=torch.float64)
    for draw in (pixelcnn.sample, pixelcnn.sample_naive, lambda n, **k: decoder.sample(torch.zeros(n, 49), **k)):
        assert draw(2, uniforms=below).sum() == 0 and draw(2, uniforms=below.float()).sum() == 0
    c = next(c for c in (1.0, 2.0, 3.0, 0.5, 1.5, 2.5) if torch.sigmoid(torch.tensor(c)).double()
             < torch.sigmoid(torch.tensor(c, dtype=torch.float64)))
    at = torch.sigmoid(torch.tensor(c)).expand(2, 1, 28, 28)
    for draw in (pixelcnn.sample, pixelcnn.sample_naive):
        assert draw(2, offset=torch.full((2, 1, 28, 28), c + 2 ** -40, dtype=torch.float64), uniforms=at).sum() == 0
    with pytest.raises(ValueError, match=r'uniforms must have shape \(2, 1, 28, 28\), got \(2, 784\)'):
        pixelcnn.sample(2, uniforms=torch.zeros(2, 784))


def test_encoder_sizes_are_checked_and_its_iaf_steps_follow_its_layout():
    for kwargs, message in ((dict(capacity=0), 'capacity must be an integer >= 1, got 0'),
                            (dict(depth=-1), 'depth must be an integer >= 0, got -1'),
                            (dict(flows=-1), 'flows must be an integer >= 0, got -1')):
        with pytest.raises(ValueError, match=message):
            models.VAEEncoder(**kwargs)
    f = models.VAEEncoder(capacity=1, depth=0)                 # the smallest encoder: one channel, no block
    assert len(f.resnet) == 0 and f.embed.out_channels == 1
    for layout in ('course', 'v1'):
        (step,) = models.VAEEncoder(capacity=4, depth=1, flows=1, layout=layout).flows
        assert step.layout == layout
    assert len(models.VAEEncoder(capacity=4, depth=1, flows=1).flows[0].resnet) == 9  # the framework's IAF depth


@pytest.mark.parametrize('on', [True, False])
def test_the_channels_last_switch_changes_the_layout_and_not_the_values(monkeypatch, on):
    """models.CHANNELS_LAST puts 4-d CPU tensors in NHWC layout (oneDNN's fast path) when on, and
    leaves every tensor as it is when off; other ranks are never touched. The logits agree."""
    x = torch.bernoulli(torch.full((3, 1, 28, 28), 0.4), generator=torch.Generator().manual_seed(0))
    net = models.PixelCNN(capacity=4, depth=1).eval()
    monkeypatch.setattr(models, 'CHANNELS_LAST', on)
    wide = torch.zeros(3, 8, 28, 28)
    assert models._nhwc(wide).is_contiguous(memory_format=torch.channels_last) is on
    assert (models._nhwc(wide) is wide) is (not on)
    flat = torch.zeros(3, 784)
    assert models._nhwc(flat) is flat
    logits = net(x)
    monkeypatch.setattr(models, 'CHANNELS_LAST', not on)
    torch.testing.assert_close(net(x), logits, rtol=1e-5, atol=1e-5)
