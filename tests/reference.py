"""Reference models with closed-form answers, shared by the tests of the write-up's claims and of
the engine's estimators."""
import torch
from torch.distributions import MultivariateNormal, Normal

DTYPE = torch.float64


class LinearGaussianModel:
    """z ~ N(0, I_d), x | z ~ N(Az + b, s^2 I_D), so x ~ N(b, A A^T + s^2 I) and the
    posterior is N(m, S) with S = (I + A^T A / s^2)^{-1}, m = S A^T (x - b) / s^2."""

    def __init__(self, g, d=2, D=3, s=0.5):
        self.A, self.b = torch.randn(D, d, generator=g, dtype=DTYPE), torch.randn(D, generator=g, dtype=DTYPE)
        self.s = s
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
        return log_lik + Normal(torch.zeros(self.d, dtype=DTYPE), torch.ones(self.d, dtype=DTYPE)).log_prob(z).sum(-1)


def broken_compile(fn, **kwargs):
    """A stand-in for torch.compile on a machine where compiling fails (no C++ compiler): the
    compiled function raises when called."""
    def call(*args):
        raise RuntimeError('no C++ compiler')
    return call
