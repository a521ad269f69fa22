"""Numerical companions to the analysis (Problems 1-4 of analysis/hw2.pdf).

Each test checks one identity of the write-up against an answer computed another way:
a library closed form, exact enumeration, quadrature, or a Monte Carlo mean within a few
standard errors. Each also shows that a plausible wrong version of the identity (a
flipped sign, a dropped term) is rejected, so the check can fail.
"""
import math
from typing import Callable, NamedTuple, Optional

import torch
from torch.distributions import MultivariateNormal, Normal, kl_divergence
from torch.func import grad, jacrev, vmap

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

class LinearGaussianModel:
    """z ~ N(0, I_d), x | z ~ N(Az + b, s^2 I_D), so x ~ N(b, A A^T + s^2 I) and the
    posterior is N(m, S) with S = (I + A^T A / s^2)^{-1}, m = S A^T (x - b) / s^2."""

    def __init__(self, g, d=2, D=3, s=0.5):
        self.A, self.b, self.s = randn(D, d, g=g), randn(D, g=g), s
        self.d, self.D = d, D

    def log_marginal(self, x):
        cov = self.A @ self.A.T + self.s**2 * torch.eye(self.D, dtype=DTYPE)
        return MultivariateNormal(self.b, cov).log_prob(x)

    def posterior(self, x):
        precision = torch.eye(self.d, dtype=DTYPE) + self.A.T @ self.A / self.s**2
        cov = torch.linalg.inv(precision)
        return MultivariateNormal(cov @ self.A.T @ (x - self.b) / self.s**2, cov)

    def log_joint(self, x, z):
        """log p(x|z) + log r(z), z of shape (..., d)."""
        log_lik = Normal(z @ self.A.T + self.b, self.s).log_prob(x).sum(-1)
        return log_lik + standard_normal(self.d).log_prob(z).sum(-1)


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
        mean, se = mean_and_se(importance_estimates(model, x, q, M, repeats=20_000, g=g))
        gaps.append(log_px - mean)
        ses.append(se)
        assert gaps[-1] > 5 * se, f'M={M}: E[L_M] is not below log p(x)'
    assert abs(gaps[0] - kl_divergence(q, post)) < 4 * ses[0]
    for (gap, se), (next_gap, next_se) in zip(zip(gaps, ses), zip(gaps[1:], ses[1:])):
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


def push_forward(layers, z0):
    """z_t = g_t o ... o g_1(z_0) and sum_s logdet(dg_s(z_{s-1})/dz_{s-1})."""
    z, total_logdet = z0, torch.zeros(z0.shape[:-1], dtype=z0.dtype)
    for layer in layers:
        total_logdet = total_logdet + layer.logdet(z)
        z = layer.forward(z)
    return z, total_logdet


def pull_back(layers, zt):
    """z_0 = g_1^{-1} o ... o g_t^{-1}(z_t)."""
    for layer in reversed(layers):
        zt = layer.inverse(zt)
    return zt


def test_p3_hand_logdets_match_autograd_jacobians():
    """Problem 3, the ingredients: each hand-derived logdet equals log|det| of the Jacobian that
    torch.func.jacrev computes, and each inverse undoes its map."""
    g = generator(3)
    z = 1.5 * randn(32, 2, g=g)
    # A planar map with w.u = -1.8, made invertible by Rezende & Mohamed's correction
    # u -> u + (m(w.u) - w.u) w / |w|^2 with m(a) = -1 + log(1 + e^a), so that w.u > -1.
    u, w = matrix([1.5, -0.5]), matrix([-0.8, 1.2])
    u_hat = u + (-1 + torch.nn.functional.softplus(w @ u) - w @ u) * w / (w @ w)
    layers = {
        'affine, det < 0': affine(matrix([[0.5, 2.0], [1.5, -1.0]]), matrix([0.3, -0.2])),
        'sinh': elementwise_sinh(),
        'tanh plus linear, a > 0': tanh_plus_linear(0.8),
        'tanh plus linear, -1 < a < 0': tanh_plus_linear(-0.6),
        'coupling': coupling(flip=False),
        'coupling, flipped': coupling(flip=True),
        'planar': planar(u_hat, w, 0.3),
    }
    for name, layer in layers.items():
        jacobians = vmap(jacrev(layer.forward))(z)                    # (32, 2, 2)
        torch.testing.assert_close(layer.logdet(z), torch.linalg.slogdet(jacobians)[1],
                                   rtol=1e-10, atol=1e-10, msg=name)
        if layer.inverse is not None:
            torch.testing.assert_close(layer.inverse(layer.forward(z)), z,
                                       rtol=1e-10, atol=1e-10, msg=name)


def test_p3_affine_flow_is_the_gaussian_pushforward():
    """Problem 3 with affine maps:
    log q_0(z_0) - sum_s log|det A_s| = log N(z_t; A mu + c, A Sigma A^T), with A = A_3 A_2 A_1
    and c the composed offset; adding the logdets instead is wrong."""
    g = generator(4)
    A1, A2, A3 = matrix([[2.0, 0.5], [0.0, 1.5]]), matrix([[0.0, 1.0], [1.0, 0.0]]), \
        matrix([[1.2, -0.7], [0.4, 0.9]])                            # det A2 = -1
    b1, b2, b3 = randn(2, g=g), randn(2, g=g), randn(2, g=g)
    layers = [affine(A1, b1), affine(A2, b2), affine(A3, b3)]
    base = MultivariateNormal(matrix([0.5, -1.0]), matrix([[1.0, 0.3], [0.3, 0.5]]))

    A = A3 @ A2 @ A1
    c = A3 @ (A2 @ b1 + b2) + b3
    exact = MultivariateNormal(A @ base.loc + c, A @ base.covariance_matrix @ A.T)

    zt = exact.loc + 2 * randn(100, 2, g=g)
    z0 = pull_back(layers, zt)
    zt_again, total_logdet = push_forward(layers, z0)
    torch.testing.assert_close(zt_again, zt, rtol=1e-10, atol=1e-10)

    formula = base.log_prob(z0) - total_logdet
    torch.testing.assert_close(formula, exact.log_prob(zt), rtol=1e-10, atol=1e-10)
    wrong_sign = base.log_prob(z0) + total_logdet
    assert (wrong_sign - exact.log_prob(zt)).abs().min() > 1


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

def test_p4_entropy_gradient_gaussian():
    """Problem 4, continuous case: grad H(q_phi) = -E_q[(1 + log q)/q grad q] for
    q_phi = N(mu, diag sigma^2), phi = (mu, log sigma), against autograd of the closed form."""
    g = generator(6)
    d = 3
    phi = torch.cat([randn(d, g=g), 0.5 * randn(d, g=g)])

    def log_q(phi, z):
        return Normal(phi[:d], phi[d:].exp()).log_prob(z).sum(-1)

    def q(phi, z):
        return log_q(phi, z).exp()

    def entropy(phi):
        return Normal(phi[:d], phi[d:].exp()).entropy().sum()

    exact = grad(entropy)(phi)
    # H = sum_i (1/2 log(2 pi e) + log sigma_i): zero gradient in mu, one in each log sigma_i.
    torch.testing.assert_close(exact, torch.cat([torch.zeros(d), torch.ones(d)]).to(DTYPE))

    n = 200_000
    z = phi[:d] + phi[d:].exp() * randn(n, d, g=g)                    # z ~ q_phi, held fixed
    q_z = q(phi, z)                                                   # (n,)
    grad_q = vmap(grad(q), in_dims=(None, 0))(phi, z)                 # (n, 2d)
    terms = -((1 + q_z.log()) / q_z).unsqueeze(-1) * grad_q
    estimate, se = mean_and_se(terms)
    assert ((estimate - exact).abs() < 5 * se).all()

    # The same terms in score form, and the score's zero mean (the "1" adds nothing on average).
    score = vmap(grad(log_q), in_dims=(None, 0))(phi, z)
    torch.testing.assert_close(terms, -(1 + q_z.log()).unsqueeze(-1) * score)
    score_mean, score_se = mean_and_se(score)
    assert (score_mean.abs() < 5 * score_se).all()

    assert ((-estimate - exact).abs()[d:] > 50 * se[d:]).all()        # sign flipped


def test_p4_entropy_gradient_categorical():
    """Problem 4, discrete case: grad H(softmax(phi)) = -E_q[(1 + log q)/q grad q], exactly by
    summing over the categories and by Monte Carlo, against autograd of -sum q log q."""
    g = generator(7)
    K = 6
    phi = 1.5 * randn(K, g=g)

    def entropy(phi):
        return -(phi.softmax(-1) * phi.log_softmax(-1)).sum()

    exact = grad(entropy)(phi)
    q = phi.softmax(-1)
    grad_q = jacrev(lambda phi: phi.softmax(-1))(phi)                # (K, K): row z is grad q(z)
    terms = -((1 + q.log()) / q).unsqueeze(-1) * grad_q              # the estimator's value at z

    torch.testing.assert_close((q.unsqueeze(-1) * terms).sum(0), exact, rtol=0, atol=1e-10)
    # Forgetting the 1/q, that is -E_q[(1 + log q) grad q], gives a different vector.
    without_division = -((1 + q.log()).unsqueeze(-1) * grad_q * q.unsqueeze(-1)).sum(0)
    assert (without_division - exact).abs().max() > 1e-2

    z = torch.multinomial(q, 200_000, replacement=True, generator=g)  # z ~ q_phi
    estimate, se = mean_and_se(terms[z])
    assert ((estimate - exact).abs() < 5 * se).all()
    assert (-estimate - exact).abs().max() > 20 * se.max()            # sign flipped
