"""The perfect memorizer: the optimal denoiser of a finite training set, and its FLIPD in closed form.

For training points {x_j}, E[x0 | x0 + σε = x] = Σ_j w_j x_j with w = softmax_j(−‖x − x_j‖² / (2σ²)).
Its Jacobian is Cov_w(x_j) / σ², and with the bias–variance identity FLIPD becomes

    FLIPD_mem(x; σ) = Σ_j w_j ‖x − x_j‖² / σ²                       (science.md §4)

which is ≈ 0 at every training point and ≈ r² / σ² at distance r from the nearest one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import as_sigma_batch, check_points, check_sigma
from ..parameterizations import Denoiser

__all__ = ["MemorizerDenoiser", "memorizer_flipd"]

_DIFFERENCE_ELEMENTS = 1 << 24  # bound on chunk × N × D differences held at once


def _squared_distances(x: Tensor, train: Tensor) -> Tensor:
    """‖x_i − x_j‖² as ``[B, N]``, summed from differences (exact zeros for identical rows)."""
    return (x.flatten(1)[:, None, :] - train.flatten(1)[None, :, :]).pow(2).sum(-1)


def _memorizer_weights(x: Tensor, train: Tensor, sigma: Tensor) -> Tensor:
    """w = softmax_j(−‖x − x_j‖² / (2σ²)) = softmax_j((x·x_j − ½‖x_j‖²) / σ²), ``[B, N]``.

    The second form drops ‖x‖², which is constant along j and cancels in the softmax: no distance
    (and no ``torch.cdist``, whose backward is not accurate to float64 precision) enters the Jacobian.
    """
    x, train = x.flatten(1), train.flatten(1)
    logits = (x @ train.T - 0.5 * train.pow(2).sum(1)) / sigma.to(x.dtype)[:, None] ** 2
    return torch.softmax(logits, dim=1)


class MemorizerDenoiser(Denoiser):
    """D(x; σ) = Σ_j w_j x_j: the denoiser that reproduces its training set exactly.

    Args:
        train: ``[N, ...]`` training points (stored as given; queries must match their shape and dtype).
    """

    def __init__(self, train: Tensor) -> None:
        self.train = check_points(train, "train")

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        sigma = torch.as_tensor(sigma, device=x.device).reshape(-1).expand(x.shape[0])
        train = self.train.to(device=x.device, dtype=x.dtype)
        weights = _memorizer_weights(x, train, sigma)
        return (weights @ train.flatten(1)).reshape(x.shape)


def memorizer_flipd(train: Tensor, x: Tensor, sigma: float | Tensor) -> Tensor:
    """Closed-form FLIPD of the perfect memorizer of ``train [N, ...]`` at ``x [B, ...]`` → ``[B]``."""
    check_points(train, "train")
    check_points(x, "x")
    if train[0].shape != x[0].shape:
        raise ValueError(f"x points have shape {tuple(x.shape[1:])} but train points {tuple(train.shape[1:])}.")
    check_sigma(sigma, x.shape[0])
    sigma_b = as_sigma_batch(sigma, x.shape[0], device=x.device)
    train = train.to(device=x.device, dtype=x.dtype)
    chunk = max(1, _DIFFERENCE_ELEMENTS // train.numel())
    out = []
    for start in range(0, x.shape[0], chunk):
        xc, s = x[start:start + chunk], sigma_b[start:start + chunk]
        sq = _squared_distances(xc, train)
        out.append((_memorizer_weights(xc, train, s) * sq).sum(1) / s.to(sq.dtype) ** 2)
    return torch.cat(out)
