"""Sample-quality distances between generated and held-out data (small sets, CPU friendly)."""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_points, check_positive_int

__all__ = ["sliced_wasserstein", "mmd_rbf"]


def sliced_wasserstein(x: Tensor, y: Tensor, *, n_projections: int = 256, generator: torch.Generator | None = None) -> float:
    """Sliced 2-Wasserstein distance: sqrt of the mean over random directions of W2² of the 1-D projections.

    ``x [N, ...]`` and ``y [M, ...]`` are flattened; the projections' quantiles are compared on a common
    grid of max(N, M) levels, so N ≠ M is fine.
    """
    check_points(x, "x")
    check_points(y, "y")
    check_positive_int(n_projections, "n_projections")
    x, y = x.flatten(1).double(), y.flatten(1).double()
    generator = generator or torch.Generator().manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(x.shape[1], n_projections, generator=generator,
                                                           dtype=torch.float64), dim=0)
    levels = torch.linspace(0, 1, max(len(x), len(y)), dtype=torch.float64)
    qx = torch.quantile((x @ directions), levels, dim=0)
    qy = torch.quantile((y @ directions), levels, dim=0)
    return float(((qx - qy) ** 2).mean().sqrt())


def mmd_rbf(x: Tensor, y: Tensor, *, bandwidth: float | None = None) -> float:
    """Unbiased squared MMD with a Gaussian kernel (bandwidth: the median pairwise distance by default)."""
    check_points(x, "x")
    check_points(y, "y")
    x, y = x.flatten(1).double(), y.flatten(1).double()
    xy = torch.cat([x, y])
    d2 = torch.cdist(xy, xy).pow(2)
    h2 = bandwidth**2 if bandwidth else float(d2[d2 > 0].median())
    k = torch.exp(-d2 / (2 * h2))
    n, m = len(x), len(y)
    kxx = (k[:n, :n].sum() - k[:n, :n].diagonal().sum()) / (n * (n - 1))
    kyy = (k[n:, n:].sum() - k[n:, n:].diagonal().sum()) / (m * (m - 1))
    return float(kxx + kyy - 2 * k[:n, n:].mean())
