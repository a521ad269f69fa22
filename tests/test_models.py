"""Properties of models.py that the homework depends on: exact masks, exact IAF log-density,
the course API's shapes, and fast paths that compute the same function as the plain ones."""
import math

import pytest
import torch

import models

torch.set_num_threads(2)


def randomize(module, std=0.3, seed=0):
    """Random non-zero weights everywhere, so a leak cannot hide behind a zero weight."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return module


def raster_jacobian(f, x):
    """J[i, j] = d logit_i / d x_j over the 784 pixels of one image, via autograd."""
    j = torch.autograd.functional.jacobian(lambda v: f(v.view(1, 1, 28, 28)).flatten(), x.flatten())
    return j  # (784, 784)


@pytest.mark.parametrize('mask_type,kept', [('A', 12), ('B', 13)])
def test_masked_conv_kernel(mask_type, kept):
    conv = models.MaskedConv2d(mask_type, 3, 4, 5, padding=2)
    mask = conv.mask[0, 0]
    assert int(mask.sum()) == kept                  # 2 full rows of 5 + 2 (or 3) taps in the centre row
    assert mask[:2].all() and not mask[3:].any()
    assert mask[2, :2].all() and not mask[2, 3:].any()
    assert bool(mask[2, 2]) == (mask_type == 'B')
    with pytest.raises(ValueError):
        models.MaskedConv2d('C', 1, 1, 3)


def causal_violations(model, forward, mode):
    model.train(mode == 'train')
    torch.manual_seed(1)
    x = torch.bernoulli(torch.full((1, 1, 28, 28), 0.5, dtype=torch.float64))
    j = raster_jacobian(forward, x)
    future = torch.triu(torch.ones(784, 784, dtype=torch.bool))  # j >= i
    return j[future].abs().max().item(), j[~future].abs().max().item()


@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_pixelcnn_is_autoregressive(mode):
    model = randomize(models.PixelCNN(capacity=8, depth=3)).double()
    leak, past = causal_violations(model, model, mode)
    assert leak == 0.0
    assert past > 0  # the Jacobian is not trivially zero: the test can see a dependence


@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_pixelvae_decoder_is_autoregressive(mode):
    g = randomize(models.DiscreteVAEDecoder(capacity=4, depth=2, autoregress=True,
                                            pixelcnn_capacity=8, pixelcnn_depth=2)).double()
    g.autoregress = True
    z = torch.randn(1, 49, dtype=torch.float64)
    leak, past = causal_violations(g, lambda x: g(z, x), mode)
    assert leak == 0.0 and past > 0


def test_masked_conv_detects_a_leak():
    """The causality check fails for a model whose mask lets the centre pixel through."""
    model = randomize(models.PixelCNN(capacity=4, depth=1)).double()
    model.embed.mask[0, 0, 4, 4] = 1  # type 'A' -> 'B': pixel i sees itself
    leak, _ = causal_violations(model, model, 'eval')
    assert leak > 0


def flow_logdet_check(flows, seed):
    torch.manual_seed(seed)
    f = randomize(models.VAEEncoder(capacity=4, depth=1, flows=flows), std=0.1, seed=seed).double()
    x = torch.rand(1, 1, 28, 28, dtype=torch.float64)
    eps = torch.randn(1, 1, 7, 7, dtype=torch.float64)
    h, mu, logvar = f.encode(x)
    z, logqzx = f.reparameterize(h, mu, logvar, eps)
    jac = torch.autograd.functional.jacobian(
        lambda e: f.reparameterize(h, mu, logvar, e.view(1, 1, 7, 7))[0].flatten(), eps.flatten())
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


def test_encoder_logqzx_matches_normal_log_prob():
    f = models.VAEEncoder(capacity=4, depth=1)
    x = torch.rand(3, 1, 28, 28)
    z, logqzx, mu, logvar = f(x, torch.randn(3, 1, 7, 7))
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    expected = -q.log_prob(z).sum(1) - 49 / 2 * math.log(2 * math.pi)
    torch.testing.assert_close(logqzx, expected, rtol=1e-5, atol=1e-4)


def test_course_call_patterns_and_shapes():
    B = 4
    x = torch.bernoulli(torch.rand(B, 1, 28, 28))
    f = models.VAEEncoder(capacity=8, depth=2)
    z, logqzx, mu, logvar = f(x, torch.randn(B, 1, 7, 7))
    assert z.shape == mu.shape == logvar.shape == (B, 49) and logqzx.shape == (B,)
    g = models.GaussianVAEDecoder(capacity=8, depth=3)
    out = g(z)
    assert out.shape == (B, 1, 28, 28) and out.min() >= 0 and out.max() <= 1
    assert g(torch.randn(B, 49)).shape == (B, 1, 28, 28)
    s = g.sample(torch.randn(B, 1, 7, 7), 0.03)
    assert s.shape == (B, 1, 28, 28) and s.min() >= 0 and s.max() <= 1
    p = models.PixelCNN(capacity=4, depth=1)
    assert p(x).shape == (B, 1, 28, 28)
    s = p.sample(n=3)
    assert s.shape == (3, 1, 28, 28) and set(s.unique().tolist()) <= {0.0, 1.0}
    d = models.DiscreteVAEDecoder(capacity=8, depth=2, autoregress=True)
    assert d.autoregress is False and isinstance(d.pixelcnn, models.PixelCNN)
    assert d(z, x).shape == (B, 1, 28, 28) and d(z).shape == (B, 1, 28, 28)
    assert d.sample(torch.randn(B, 1, 7, 7)).shape == (B, 1, 28, 28)
    d.autoregress = True
    torch.testing.assert_close(d(z, x), d.latent_logits(z) + d.pixelcnn(x))
    assert d.sample(z).shape == (B, 1, 28, 28)
    with pytest.raises(ValueError, match='needs the images'):
        d(z)
    iaf = models.VAEEncoder(capacity=8, depth=1, flows=2)
    z, logqzx, mu, logvar = iaf(x, torch.randn(B, 1, 7, 7))
    assert z.shape == (B, 49) and logqzx.shape == (B,)


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


@pytest.mark.parametrize('autoregressive_vae', [False, True])
def test_cached_sampler_equals_naive_sampler(autoregressive_vae):
    """The incremental sampler draws exactly the naive sampler's images from the same uniforms."""
    torch.manual_seed(0)
    model = randomize(models.PixelCNN(capacity=6, depth=2), std=0.4).double()
    u = torch.rand(5, 1, 28, 28, dtype=torch.float64)
    offset = torch.randn(5, 1, 28, 28, dtype=torch.float64) if autoregressive_vae else None
    fast = model.sample(5, offset=offset, uniforms=u)
    slow = model.sample_naive(5, offset=offset, uniforms=u)
    assert torch.equal(fast, slow)
    assert 0.05 < fast.mean() < 0.95  # non-degenerate draws


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


def test_iaf_returns_m_and_one_plus_s():
    """IAF.forward(z, h) -> (m, s) with s = 1 + s_head(u): with the heads zeroed, m = 0 and s = 1."""
    iaf = randomize(models.IAF(4, depth=2))
    with torch.no_grad():
        for head in (iaf.m, iaf.s):
            head.weight.zero_()
            head.bias.zero_()
    m, s = iaf(torch.randn(3, 1, 7, 7), torch.randn(3, 4, 7, 7))
    assert m.shape == s.shape == (3, 1, 7, 7)
    assert torch.equal(m, torch.zeros_like(m)) and torch.equal(s, torch.ones_like(s))


def test_committed_v1_model_files_load():
    """A model file that records no layout rebuilds with layout 'v1' under today's parameter names."""
    import os
    import experiments as E
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    record = torch.load(os.path.join(root, 'results', 'cpu', '6e-weak', 'model.pt'), weights_only=True)
    nets = E.load_models(record['models'], 'cpu', record['autoregress'])
    assert nets['encoder'].layout == 'v1' and len(nets['encoder'].flows) == 8
    assert nets['decoder'].pixelcnn.layout == 'v1'
