"""Closed forms of science.md §5, written here independently of the library under test."""

from __future__ import annotations

import math

import torch
from torch import Tensor


class GaussianSubspace:
    """N(μ, U Λ Uᵀ) on a k-dimensional affine subspace of R^D (float64)."""

    def __init__(self, dim: int, k: int, variances: list[float], *, seed: int = 0, shift: Tensor | None = None):
        g = torch.Generator().manual_seed(seed)
        self.U, _ = torch.linalg.qr(torch.randn(dim, k, generator=g, dtype=torch.float64))
        self.lam = torch.tensor(variances, dtype=torch.float64)
        self.mu = torch.randn(dim, generator=g, dtype=torch.float64) if shift is None else shift.double()
        self.k, self.dim = k, dim

    def sample(self, n: int, seed: int = 1) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.k, generator=g, dtype=torch.float64) * self.lam.sqrt()
        return self.mu + z @ self.U.T

    def denoiser(self, x: Tensor, sigma: Tensor) -> Tensor:
        """D(x; σ) = μ + U diag(λ/(λ+σ²)) Uᵀ (x − μ)."""
        s2 = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1) ** 2
        z = (x - self.mu.to(x.dtype)) @ self.U.to(x.dtype)
        return self.mu.to(x.dtype) + (z * self.lam.to(x.dtype) / (self.lam.to(x.dtype) + s2)) @ self.U.T.to(x.dtype)

    def flipd(self, x: Tensor, sigma: float) -> Tensor:
        """k − Σ σ²/(λ+σ²) + σ² ‖(UΛUᵀ + σ²I)⁻¹(x − μ)‖²."""
        cov = self.U @ torch.diag(self.lam) @ self.U.T + sigma**2 * torch.eye(self.dim, dtype=torch.float64)
        r = torch.linalg.solve(cov, (x.double() - self.mu).T).T
        return self.k - (sigma**2 / (self.lam + sigma**2)).sum() + sigma**2 * (r**2).sum(1)

    def log_density(self, x: Tensor, sigma: float) -> Tensor:
        cov = self.U @ torch.diag(self.lam) @ self.U.T + sigma**2 * torch.eye(self.dim, dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.mu, cov).log_prob(x.double())


class GaussianMixture:
    """Equal-weight mixture of GaussianSubspace pieces; posterior-weighted denoiser."""

    def __init__(self, pieces: list[GaussianSubspace]):
        self.pieces = pieces

    def denoiser(self, x: Tensor, sigma: Tensor) -> Tensor:
        s = float(torch.as_tensor(sigma).reshape(-1)[0])
        logp = torch.stack([p.log_density(x, s) for p in self.pieces], 1)
        w = torch.softmax(logp, 1).to(x.dtype)
        outs = torch.stack([p.denoiser(x, sigma) for p in self.pieces], 1)
        return (w[..., None] * outs).sum(1)


def memorizer_flipd_bruteforce(train: Tensor, x: Tensor, sigma: float) -> Tensor:
    """Σ_j w_j ‖x − x_j‖²/σ², w = softmax(−‖x − x_j‖²/(2σ²)), one point at a time."""
    out = []
    for xi in x.double():
        d2 = ((train.double() - xi) ** 2).sum(1)
        w = torch.softmax(-d2 / (2 * sigma**2), 0)
        out.append((w * d2).sum() / sigma**2)
    return torch.stack(out)


def vp_linear_alpha_bar(t: Tensor, beta_min: float = 0.1, beta_max: float = 20.0) -> Tensor:
    """ᾱ(t) = exp(−(β_min t + ½ (β_max − β_min) t²))."""
    return torch.exp(-(beta_min * t + 0.5 * (beta_max - beta_min) * t**2))


def sigma_of_alpha_bar(alpha_bar: Tensor) -> Tensor:
    return torch.sqrt((1 - alpha_bar) / alpha_bar)


SMALL_SIGMA = 1e-3
ABS_TOL = 0.05
LOG2 = math.log(2)
