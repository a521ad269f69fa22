"""Numerical companions to the analysis (Problems 1-4 of analysis/hw2.pdf).

Each test checks one identity of the write-up against an answer computed another way: a
library closed form, a closed form derived independently, exact enumeration, quadrature,
finite differences, or a Monte Carlo mean within a few standard errors. Each test also
computes at least one plausible wrong version of the identity (a flipped sign, a dropped
term, a log-det evaluated at the wrong point) and asserts that the comparison rejects
it, so the check has the power to fail.
"""
import itertools
import math
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch.distributions import MultivariateNormal, Normal, kl_divergence
from torch.func import grad, jacrev, vmap

from reference import LinearGaussianModel

DTYPE = torch.float64


def generator(seed):
    return torch.Generator().manual_seed(seed)


def randn(*shape, g):
    return torch.randn(*shape, generator=g, dtype=DTYPE)


def mean_and_se(x):
    """Mean over the first axis and its standard error."""
    return x.mean(0), x.std(0) / math.sqrt(x.shape[0])


def matrix(rows):
    return torch.tensor(rows, dtype=DTYPE)


def standard_normal(d):
    return Normal(torch.zeros(d, dtype=DTYPE), torch.ones(d, dtype=DTYPE))


# --- Problem 1: KL divergence between Gaussians ------------------------------------------

def kl_closed_form(mu, sigma):
    """D(N(mu, diag sigma^2) || N(0, I)) = 1/2 sum_i (sigma_i^2 + mu_i^2 - 1 - log sigma_i^2)."""
    return 0.5 * (sigma**2 + mu**2 - 1 - torch.log(sigma**2)).sum(-1)


def test_p1_kl_closed_form():
    """Problem 1: 1/2 sum(sigma^2 + mu^2 - 1 - log sigma^2) = E_q[log q(z) - log p(z)],
    against torch's Gaussian KL and a Monte Carlo mean of the log-ratio."""
    g = generator(1)
    k = 4
    mu = randn(6, k, g=g)
    # Rows with all sigma < 1 and all sigma > 1, so that sum log sigma^2 is far from 0
    # and a wrong sign on the log term cannot hide.
    sigma = torch.cat([0.2 + 0.6 * torch.rand(3, k, generator=g, dtype=DTYPE),
                       1.3 + 1.2 * torch.rand(3, k, generator=g, dtype=DTYPE)])
    q, p = Normal(mu, sigma), standard_normal(k)
    closed = kl_closed_form(mu, sigma)                                  # (6,)

    torch.testing.assert_close(closed, kl_divergence(q, p).sum(-1), rtol=1e-12, atol=1e-12)

    n = 100_000
    z = mu + sigma * randn(n, *mu.shape, g=g)                           # z ~ q, (n, 6, k)
    log_ratio = (q.log_prob(z) - p.log_prob(z)).sum(-1)                 # (n, 6)
    mc, se = mean_and_se(log_ratio)
    assert ((mc - closed).abs() < 4 * se).all()

    wrong = {
        'log sigma^2 with a + sign': 0.5 * (sigma**2 + mu**2 - 1 + torch.log(sigma**2)).sum(-1),
        'the -1 dropped': 0.5 * (sigma**2 + mu**2 - torch.log(sigma**2)).sum(-1),
        'q and p swapped': kl_divergence(p, q).sum(-1),
    }
    for name, value in wrong.items():
        assert ((mc - value).abs() > 20 * se).all(), name


# --- Problem 2: importance-sampled marginal likelihood ----------------------------------

def importance_estimates(model, x, q, M, repeats, g):
    """L_M = log (1/M) sum_i p(x|z_i) r(z_i) / q(z_i|x), z_i ~ q, drawn `repeats` times."""
    eps = randn(repeats, M, model.d, g=g)
    z = q.loc + eps @ q.scale_tril.T                                   # (repeats, M, d)
    log_w = model.log_joint(x, z) - q.log_prob(z)                      # (repeats, M)
    return torch.logsumexp(log_w, dim=1) - math.log(M)                 # (repeats,)


def test_p2_importance_sampling_bias_and_consistency():
    """Problem 2: E[L_M] <= log p(x), the gap log p(x) - E[L_M] shrinks as M grows (and equals
    KL(q || posterior) at M = 1), and L_M -> log p(x) as M -> infinity."""
    g = generator(2)
    model = LinearGaussianModel(g)
    x = model.b + model.A @ randn(model.d, g=g) + model.s * randn(model.D, g=g)
    log_px = model.log_marginal(x)

    # A deliberately imperfect proposal: the posterior, shifted by about one posterior
    # standard deviation and with its covariance inflated by 1.5^2. The wider proposal
    # keeps the weights bounded.
    post = model.posterior(x)
    shift = post.scale_tril @ torch.tensor([1.0, -1.0], dtype=DTYPE)
    q = MultivariateNormal(post.loc + shift, scale_tril=1.5 * post.scale_tril)

    gaps, ses = [], []
    for M in (1, 10, 100):
        estimates = importance_estimates(model, x, q, M, repeats=20_000, g=g)
        mean, se = mean_and_se(estimates)
        gaps.append(log_px - mean)
        ses.append(se)
        assert gaps[-1] > 5 * se, f'M={M}: E[L_M] is not below log p(x)'
        if M == 1:
            # The lemma: E_q[w] = p(x), where w = exp(L_1).
            w_mean, w_se = mean_and_se(estimates.exp())
            assert abs(w_mean - log_px.exp()) < 4 * w_se
    assert abs(gaps[0] - kl_divergence(q, post)) < 4 * ses[0]
    # The divergence the other way round, KL(posterior || q), is not the M = 1 gap.
    assert abs(gaps[0] - kl_divergence(post, q)) > 20 * ses[0]
    for (gap, se), (next_gap, next_se) in itertools.pairwise(zip(gaps, ses, strict=True)):
        assert gap - next_gap > 4 * math.hypot(se, next_se), 'the gap does not shrink with M'

    large = importance_estimates(model, x, q, M=100_000, repeats=10, g=g)
    assert (large - log_px).abs().max() < 0.02
    assert abs(large.mean() - log_px) < 0.005


# --- Problem 3: normalizing flows ---------------------------------------------------------

class Layer(NamedTuple):
    """One invertible map g_s of a flow, acting on the last axis of z (shape (..., d))."""
    forward: Callable                  # z_{s-1} -> z_s
    logdet: Callable                   # z_{s-1} -> log|det dg_s(z_{s-1})/dz_{s-1}|, derived by hand
    inverse: Optional[Callable] = None  # z_s -> z_{s-1}


def affine(A, b):
    """g(z) = A z + b, log|det| = log|det A|."""
    return Layer(forward=lambda z: z @ A.T + b,
                 logdet=lambda z: torch.linalg.slogdet(A)[1].expand(z.shape[:-1]),
                 inverse=lambda y: torch.linalg.solve(A, (y - b).unsqueeze(-1)).squeeze(-1))


def elementwise_sinh():
    """g(z)_i = sinh(z_i), log|det| = sum_i log cosh(z_i)."""
    return Layer(forward=torch.sinh,
                 logdet=lambda z: torch.log(torch.cosh(z)).sum(-1),
                 inverse=torch.asinh)


def tanh_plus_linear(a):
    """g(z)_i = z_i + a tanh(z_i), increasing for a > -1; log|det| = sum_i log(1 + a sech^2 z_i)."""
    assert a > -1

    def inverse(y):
        z = y
        for _ in range(12):                     # Newton's method; g' >= min(1, 1 + a) > 0
            z = z - (z + a * torch.tanh(z) - y) / (1 + a / torch.cosh(z)**2)
        assert (z + a * torch.tanh(z) - y).abs().max() < 1e-12 * (1 + y.abs().max())
        return z

    return Layer(forward=lambda z: z + a * torch.tanh(z),
                 logdet=lambda z: torch.log1p(a / torch.cosh(z)**2).sum(-1),
                 inverse=inverse)


def coupling(flip):
    """Affine coupling on (u, v) = (z_0, z_1), or (z_1, z_0) if flip:
    g(u, v) = (u, v exp(s(u)) + t(u)), a triangular Jacobian with log|det| = s(u)."""
    def scale(u):
        return 0.7 * torch.tanh(u)

    def shift(u):
        return torch.sin(2 * u)

    def split(z):
        return (z[..., 1], z[..., 0]) if flip else (z[..., 0], z[..., 1])

    def join(u, v):
        return torch.stack((v, u) if flip else (u, v), dim=-1)

    def forward(z):
        u, v = split(z)
        return join(u, v * torch.exp(scale(u)) + shift(u))

    def inverse(y):
        u, v = split(y)
        return join(u, (v - shift(u)) * torch.exp(-scale(u)))

    return Layer(forward=forward, logdet=lambda z: scale(split(z)[0]), inverse=inverse)


def planar(u, w, b):
    """g(z) = z + u tanh(w.z + b), a diffeomorphism when w.u > -1;
    log|det| = log|1 + tanh'(w.z + b) w.u|."""
    assert w @ u > -1
    return Layer(forward=lambda z: z + u * torch.tanh(z @ w + b).unsqueeze(-1),
                 logdet=lambda z: torch.log(torch.abs(1 + (w @ u) / torch.cosh(z @ w + b)**2)))


def invertible_planar():
    """A planar map with w.u = -1.8, made invertible by Rezende & Mohamed's correction
    u -> u + (m(w.u) - w.u) w / |w|^2 with m(a) = -1 + log(1 + e^a), so that w.u > -1."""
    u, w = matrix([1.5, -0.5]), matrix([-0.8, 1.2])
    u_hat = u + (-1 + F.softplus(w @ u) - w @ u) * w / (w @ w)
    return planar(u_hat, w, 0.3)


def compose(layers, z):
    """z_t = g_t o ... o g_1(z_0)."""
    for layer in layers:
        z = layer.forward(z)
    return z


def push_forward(layers, z0):
    """z_t = g_t o ... o g_1(z_0) and sum_s logdet(dg_s(z_{s-1})/dz_{s-1})."""
    z, total_logdet = z0, torch.zeros(z0.shape[:-1], dtype=z0.dtype)
    for layer in layers:
        total_logdet = total_logdet + layer.logdet(z)
        z = layer.forward(z)
    return z, total_logdet


def logdets_at_outputs(layers, z0):
    """A wrong variant of push_forward's sum: each log-det evaluated at z_s instead of z_{s-1}."""
    z, total_logdet = z0, torch.zeros(z0.shape[:-1], dtype=z0.dtype)
    for layer in layers:
        z = layer.forward(z)
        total_logdet = total_logdet + layer.logdet(z)
    return total_logdet


def pull_back(layers, zt):
    """z_0 = g_1^{-1} o ... o g_t^{-1}(z_t)."""
    for layer in reversed(layers):
        zt = layer.inverse(zt)
    return zt


def test_p3_hand_logdets_match_autograd_jacobians():
    """Problem 3, the ingredients: each hand-derived logdet equals log|det| of the Jacobian that
    torch.func.jacrev computes, and each inverse undoes its map. The log-det of the inverse map,
    -logdet, is rejected."""
    g = generator(3)
    z = 1.5 * randn(32, 2, g=g)
    layers = {
        'affine, det < 0': affine(matrix([[0.5, 2.0], [1.5, -1.0]]), matrix([0.3, -0.2])),
        'sinh': elementwise_sinh(),
        'tanh plus linear, a > 0': tanh_plus_linear(0.8),
        'tanh plus linear, -1 < a < 0': tanh_plus_linear(-0.6),
        'coupling': coupling(flip=False),
        'coupling, flipped': coupling(flip=True),
        'planar': invertible_planar(),
    }
    for name, layer in layers.items():
        jacobians = vmap(jacrev(layer.forward))(z)                    # (32, 2, 2)
        exact = torch.linalg.slogdet(jacobians)[1]
        torch.testing.assert_close(layer.logdet(z), exact, rtol=1e-10, atol=1e-10, msg=name)
        assert (-layer.logdet(z) - exact).abs().max() > 0.1, name
        if layer.inverse is not None:
            torch.testing.assert_close(layer.inverse(layer.forward(z)), z,
                                       rtol=1e-10, atol=1e-10, msg=name)


def test_p3_logdet_sum_is_logdet_of_the_composition():
    """Problem 3, steps (ii)-(iii) of the proof:
    sum_s logdet J_{g_s}(z_{s-1}) = logdet J_{f_t}(z_0), with the Jacobian of the whole
    composition f_t from torch.func.jacrev; the log-dets evaluated at z_s = g_s(z_{s-1})
    instead are rejected."""
    g = generator(8)
    layers = [coupling(flip=False), tanh_plus_linear(0.8), invertible_planar(),
              coupling(flip=True), elementwise_sinh(), tanh_plus_linear(-0.6),
              affine(matrix([[0.5, 2.0], [1.5, -1.0]]), matrix([0.3, -0.2]))]
    z0 = randn(64, 2, g=g)
    jacobians = vmap(jacrev(lambda z: compose(layers, z)))(z0)         # (64, 2, 2)
    exact = torch.linalg.slogdet(jacobians)[1]
    _, total_logdet = push_forward(layers, z0)
    torch.testing.assert_close(total_logdet, exact, rtol=1e-10, atol=1e-10)
    assert (logdets_at_outputs(layers, z0) - exact).abs().max() > 0.5


def test_p3_nonlinear_flow_matches_closed_form_density():
    """Problem 3 with z_t = sinh(A_2 sinh(A_1 z_0 + b_1) + b_2) and Gaussian z_0:
    log q_0(z_0) - sum_s logdet(dg_s(z_{s-1})/dz_{s-1}) equals the density found by inverting the
    flow by hand, x = asinh(A_2^{-1}(asinh(z_t) - b_2)) ~ N(A_1 mu + b_1, A_1 Sigma A_1^T) with
    d asinh(y)/dy = (1 + y^2)^(-1/2); adding the log-dets, or evaluating them at z_s instead of
    z_{s-1}, is rejected."""
    g = generator(4)
    A1, b1 = matrix([[0.9, 0.4], [-0.3, 0.7]]), 0.3 * randn(2, g=g)
    A2, b2 = matrix([[0.5, 1.0], [0.8, -0.6]]), 0.3 * randn(2, g=g)   # det A2 = -1.1
    layers = [affine(A1, b1), elementwise_sinh(), affine(A2, b2), elementwise_sinh()]
    base = MultivariateNormal(matrix([0.3, -0.2]), matrix([[0.5, 0.2], [0.2, 0.4]]))
    x_law = MultivariateNormal(A1 @ base.loc + b1, A1 @ base.covariance_matrix @ A1.T)

    def closed_form_log_density(y):
        # y = sinh(u), u = A2 v + b2, v = sinh(x): log q_t(y) = log N(x) + log|det d x / d y|.
        v = torch.linalg.solve(A2, (torch.asinh(y) - b2).unsqueeze(-1)).squeeze(-1)
        return (x_law.log_prob(torch.asinh(v)) - 0.5 * torch.log1p(v**2).sum(-1)
                - torch.linalg.slogdet(A2)[1] - 0.5 * torch.log1p(y**2).sum(-1))

    z0 = base.loc + randn(200, 2, g=g) @ base.scale_tril.T            # z_0 ~ q_0
    zt, total_logdet = push_forward(layers, z0)
    exact = closed_form_log_density(zt)
    torch.testing.assert_close(base.log_prob(z0) - total_logdet, exact, rtol=1e-9, atol=1e-9)

    wrong = {
        'log-dets added': base.log_prob(z0) + total_logdet,
        'log-dets at z_s': base.log_prob(z0) - logdets_at_outputs(layers, z0),
    }
    for name, value in wrong.items():
        assert (value - exact).abs().max() > 1, name


def test_p3_nonlinear_1d_flow_matches_base_cdf_and_integrates_to_one():
    """Problem 3 in 1-D with increasing nonlinear maps: q_t from the formula integrates to 1, and
    its integral up to z_t = f(c) equals P(z_0 <= c) = Phi(c), since f is increasing."""
    layers = [affine(matrix([[1.7]]), matrix([0.3])), elementwise_sinh(),
              tanh_plus_linear(-0.6), affine(matrix([[0.5]]), matrix([-1.0])),
              tanh_plus_linear(0.8)]
    base = standard_normal(1)
    z0 = torch.linspace(-9, 9, 40_001, dtype=DTYPE).unsqueeze(-1)    # (n, 1)
    zt, total_logdet = push_forward(layers, z0)
    zt, z0 = zt.squeeze(-1), z0.squeeze(-1)
    assert (zt.diff() > 0).all()
    log_base = base.log_prob(z0.unsqueeze(-1)).squeeze(-1)

    density = torch.exp(log_base - total_logdet)                      # q_t(z_t) on the z_t grid
    cdf = torch.cat([torch.zeros(1, dtype=DTYPE), torch.cumulative_trapezoid(density, zt)])
    assert abs(cdf[-1] - 1) < 1e-6
    torch.testing.assert_close(cdf, Normal(0.0, 1.0).cdf(z0), rtol=0, atol=1e-6)

    wrong_sign = torch.exp(log_base + total_logdet)
    assert abs(torch.trapezoid(wrong_sign, zt) - 1) > 0.5


def test_p3_nonlinear_2d_flow_matches_samples_and_integrates_to_one():
    """Problem 3 in 2-D with nonlinear maps: q_t from the formula integrates to 1 over a grid in
    z_t space, and its mass in each histogram bin matches the frequency of pushed samples."""
    g = generator(5)
    layers = [affine(matrix([[0.8, 0.6], [0.9, -0.4]]), matrix([0.2, -0.1])),
              coupling(flip=False), tanh_plus_linear(0.7), coupling(flip=True),
              affine(matrix([[1.1, 0.0], [0.3, 0.9]]), matrix([0.0, 0.5]))]
    base = MultivariateNormal(torch.zeros(2, dtype=DTYPE), torch.eye(2, dtype=DTYPE))

    # Midpoints of a fine grid of cells on a box in z_t space, grouped into coarse bins.
    lo, hi, cells, bins = -12.0, 16.0, 700, 28
    h = (hi - lo) / cells
    mid = lo + h * (torch.arange(cells, dtype=DTYPE) + 0.5)
    zt = torch.stack(torch.meshgrid(mid, mid, indexing='ij'), dim=-1)  # (cells, cells, 2)
    z0 = pull_back(layers, zt)
    _, total_logdet = push_forward(layers, z0)

    cell_mass = torch.exp(base.log_prob(z0) - total_logdet) * h**2
    assert abs(cell_mass.sum() - 1) < 1e-4
    wrong_sign = torch.exp(base.log_prob(z0) + total_logdet) * h**2
    assert abs(wrong_sign.sum() - 1) > 0.1

    n = 500_000
    samples, _ = push_forward(layers, randn(n, 2, g=g))
    counts = torch.histogramdd(samples, bins=[bins, bins], range=[lo, hi, lo, hi]).hist
    per_bin = cells // bins
    expected = n * cell_mass.reshape(bins, per_bin, bins, per_bin).sum((1, 3))
    z_scores = (counts.to(DTYPE) - expected) / torch.sqrt(expected * (1 - expected / n))
    populated = expected > 50
    assert populated.sum() > 40
    assert z_scores[populated].abs().max() < 5


# --- Problem 4: entropy gradients ---------------------------------------------------------

def mixture_log_q(phi, z):
    """log q_phi(z) for the 1-D mixture w N(m_1, s_1^2) + (1 - w) N(m_2, s_2^2) with
    phi = (m_1, m_2, log s_1, log s_2, logit w); z of shape (...)."""
    m, log_s, logit_w = phi[0:2], phi[2:4], phi[4]
    log_w = torch.stack([F.logsigmoid(logit_w), F.logsigmoid(-logit_w)])
    u = (z.unsqueeze(-1) - m) / log_s.exp()
    return torch.logsumexp(log_w - 0.5 * u**2 - log_s - 0.5 * math.log(2 * math.pi), dim=-1)


def mixture_q(phi, z):
    return mixture_log_q(phi, z).exp()


def central_differences(f, phi, h=1e-5):
    """The gradient of f at phi by central differences, error O(h^2)."""
    steps = h * torch.eye(len(phi), dtype=phi.dtype)
    return torch.stack([(f(phi + step) - f(phi - step)) / (2 * h) for step in steps])


def test_p4_entropy_gradient_mixture():
    """Problem 4, continuous case, for a two-component Gaussian mixture, whose entropy depends on
    every parameter (means included): grad H(q_phi) = -E_q[(1 + log q)/q grad q]
    = -E_q[(b + log q) grad log q] for any constant b, by quadrature and by Monte Carlo, against
    central differences of H computed by quadrature. A flipped sign, a missing 1/q, and the
    estimator that holds the samples fixed and differentiates -log q only are rejected."""
    g = generator(6)
    phi = torch.tensor([-0.3, 0.8, math.log(0.4), 0.0, 0.5], dtype=DTYPE)
    grid = torch.linspace(-16, 16, 6401, dtype=DTYPE)          # q < 1e-49 outside the grid

    def entropy(phi):
        log_q = mixture_log_q(phi, grid)
        return -torch.trapezoid(log_q.exp() * log_q, grid)

    exact = central_differences(entropy, phi)
    # Every component is non-zero, the means' included, so no component passes by symmetry.
    assert (exact.abs() > 0.1).all()

    q = mixture_q(phi, grid)                                          # (n,)
    grad_q = vmap(grad(mixture_q), in_dims=(None, 0))(phi, grid)      # (n, 5)
    score = vmap(grad(mixture_log_q), in_dims=(None, 0))(phi, grid)   # grad log q, (n, 5)

    def expectation(f):
        """E_q[f(z)] by quadrature, f given on the grid, shape (n, 5)."""
        return torch.trapezoid(q.unsqueeze(-1) * f, grid, dim=0)

    first_form = expectation(-((1 + q.log()) / q).unsqueeze(-1) * grad_q)
    torch.testing.assert_close(first_form, exact, rtol=0, atol=1e-7)
    for b in (1.0, 0.0, -3.0, 5.0):                           # b = 1 is the claim's score form
        score_form = expectation(-(b + q.log()).unsqueeze(-1) * score)
        torch.testing.assert_close(score_form, exact, rtol=0, atol=1e-7, msg=f'b = {b}')

    wrong = {
        'sign flipped': -first_form,
        'the 1/q dropped': expectation(-(1 + q.log()).unsqueeze(-1) * grad_q),
        'samples held fixed, -grad log q only': expectation(-score),
    }
    for name, value in wrong.items():
        assert (value - exact).abs().max() > 0.05, name

    n = 200_000
    first = torch.rand(n, generator=g, dtype=DTYPE) < torch.sigmoid(phi[4])
    s = phi[2:4].exp()
    eps = randn(n, g=g)
    z = torch.where(first, phi[0] + s[0] * eps, phi[1] + s[1] * eps)  # z ~ q_phi, held fixed
    q_z = mixture_q(phi, z)
    grad_q_z = vmap(grad(mixture_q), in_dims=(None, 0))(phi, z)
    terms = -((1 + q_z.log()) / q_z).unsqueeze(-1) * grad_q_z         # (n, 5)
    estimate, se = mean_and_se(terms)
    assert ((estimate - exact).abs() < 5 * se).all()
    assert ((-estimate - exact).abs() > 20 * se).all()                # sign flipped


def test_p4_entropy_gradient_categorical():
    """Problem 4, discrete case: grad H(softmax(phi)) = -E_q[(1 + log q)/q grad q]
    = -E_q[(1 + log q)(e_z - q)], exactly by summing over the categories and by Monte Carlo,
    against central differences of -sum q log q."""
    g = generator(7)
    K = 6
    phi = 1.5 * randn(K, g=g)

    def entropy(phi):
        return -(phi.softmax(-1) * phi.log_softmax(-1)).sum()

    exact = central_differences(entropy, phi)
    q = phi.softmax(-1)
    grad_q = jacrev(lambda phi: phi.softmax(-1))(phi)                # (K, K): row z is grad q(z)
    terms = -((1 + q.log()) / q).unsqueeze(-1) * grad_q              # the estimator's value at z
    torch.testing.assert_close((q.unsqueeze(-1) * terms).sum(0), exact, rtol=0, atol=1e-9)

    # The score form with the write-up's grad log q(z) = e_z - q.
    score = torch.eye(K, dtype=DTYPE) - q                           # row z is e_z - q
    score_terms = -(1 + q.log()).unsqueeze(-1) * score
    torch.testing.assert_close((q.unsqueeze(-1) * score_terms).sum(0), exact, rtol=0, atol=1e-9)

    wrong = {
        'the 1/q dropped': -((1 + q.log()).unsqueeze(-1) * grad_q * q.unsqueeze(-1)).sum(0),
        'score e_z, the -q dropped': -q * (1 + q.log()),
    }
    for name, value in wrong.items():
        assert (value - exact).abs().max() > 1e-2, name

    z = torch.multinomial(q, 200_000, replacement=True, generator=g)  # z ~ q_phi
    estimate, se = mean_and_se(terms[z])
    assert ((estimate - exact).abs() < 5 * se).all()
    assert (-estimate - exact).abs().max() > 20 * se.max()            # sign flipped
