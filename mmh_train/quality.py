"""Sample-quality distances between generated and held-out data (small sets, CPU friendly)."""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_points, check_positive_int

_TRAINED: dict[tuple, "DigitsFeatures"] = {}

__all__ = ["DigitsFeatures", "sliced_wasserstein", "mmd_rbf"]


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


class DigitsFeatures(torch.nn.Module):
    """Penultimate features of a small CNN trained to classify sklearn's digits (offline, a few seconds).

    A feature-space distance between generated and held-out digits (``sliced_wasserstein`` on these
    features) tracks sample quality better than pixels do. Images: ``[B, 1, S, S]`` in [-1, 1], S ≥ 8.
    """

    def __init__(self, size: int = 16) -> None:
        super().__init__()
        from torch import nn

        self.size = size
        self.body = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(16, 32, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                  nn.Linear(128, 64), nn.SiLU())
        self.head = nn.Linear(64, 10)
        self.accuracy = float("nan")

    def forward(self, images: Tensor) -> Tensor:
        return self.body(images)

    @classmethod
    def trained(cls, size: int = 16, *, steps: int = 400, seed: int = 0, resize: str = "pad") -> "DigitsFeatures":
        """Trains on 80% of the digits (``resize`` as in :func:`~mmh_train.data.load_digits`); ``accuracy`` holds
        the held-out 20%'s accuracy. The frozen model is made once per process and settings (it is deterministic
        from them, and recipes and benchmarks ask for it once per run)."""
        key = (cls, size, steps, seed, resize)
        if key not in _TRAINED:
            _TRAINED[key] = cls._train(size, steps=steps, seed=seed, resize=resize)
        return _TRAINED[key]

    @classmethod
    def _train(cls, size: int, *, steps: int, seed: int, resize: str) -> "DigitsFeatures":
        from .data import load_digits

        data = load_digits(size=size, resize=resize)
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(data.labels), generator=g)
        split = int(0.8 * len(order))
        train, test = order[:split], order[split:]
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = cls(size)
            optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
            for _ in range(steps):
                batch = train[torch.randint(0, len(train), (128,), generator=g)]
                logits = model.head(model(data.images[batch]))
                loss = torch.nn.functional.cross_entropy(logits, data.labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        model.eval()
        with torch.no_grad():
            model.accuracy = float((model.head(model(data.images[test])).argmax(1) == data.labels[test]).float().mean())
        return model.requires_grad_(False)
