"""FLIPD as a function of σ, and the knee that picks σ per point (science.md §3, "Choice of σ").

Too small a σ and a trained network's estimate drifts toward the ambient dimension; too large and every
point looks like a point (FLIPD → 0). The curve σ ↦ FLIPD(x; σ) typically holds a plateau near LID(x)
and then falls; Kneedle's knee on log σ marks where the plateau ends, and FLIPD there is the estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._checks import check_choice, check_sigma
from .flipd import flipd

__all__ = ["FlipdCurve", "flipd_curve", "knee_index", "flipd_at_knee", "default_sigma_grid"]


@dataclass(frozen=True)
class FlipdCurve:
    """FLIPD over a grid of noise levels.

    Attributes:
        sigmas: ``[S]`` float64 increasing noise levels.
        lid: ``[S, B]`` FLIPD(x_b; σ_s).
    """

    sigmas: Tensor
    lid: Tensor


def default_sigma_grid(n: int = 16, low: float = 0.17, high: float = 3.4) -> Tensor:
    """``n`` log-spaced σ in [low, high] (float64): the range in which FLIPD's knee usually lies."""
    return torch.logspace(math.log10(low), math.log10(high), n, dtype=torch.float64)


def flipd_curve(denoiser: Any, x: Tensor, sigmas: Tensor | list[float] | None = None, *,
                generator: torch.Generator | None = None, **flipd_options: Any) -> FlipdCurve:
    """FLIPD at every σ of an increasing grid, with the same probes at each σ (common random numbers).

    Args:
        denoiser, x: as for :func:`~mmh_train.flipd`.
        sigmas: ``[S]`` increasing positive noise levels; default :func:`default_sigma_grid`.
        generator: probe source, rewound to the same state for every σ so curves are smooth.
        **flipd_options: forwarded to :func:`~mmh_train.flipd` (``n_probes``, ``mode``, ``precision``...).
    """
    grid = default_sigma_grid() if sigmas is None else torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    if grid.numel() < 2 or not bool((grid[1:] > grid[:-1]).all()):
        raise ValueError(f"sigmas must hold at least two strictly increasing noise levels; got {grid.tolist()[:6]}.")
    for s in grid:
        check_sigma(float(s), 1)
    state = generator.get_state() if generator is not None else None
    rows = []
    for s in grid.tolist():
        if generator is not None:
            generator.set_state(state)
        rows.append(flipd(denoiser, x, s, generator=generator, **flipd_options))
    return FlipdCurve(sigmas=grid, lid=torch.stack(rows))


def knee_index(sigmas: Tensor, values: Tensor, *, shape: str = "concave") -> Tensor:
    """Kneedle's knee of decreasing curves ``values [S, B]`` over ``log σ`` → ``[B]`` long indices.

    Both axes are scaled to [0, 1]; the knee is the point furthest above (``"concave"``: where a plateau
    ends) or below (``"convex"``: where a fall levels off) the chord joining the curve's two ends.
    A flat curve has no knee and returns its first index.
    """
    check_choice(shape, "shape", ("concave", "convex"))
    u = sigmas.to(torch.float64).log()
    u = (u - u[0]) / (u[-1] - u[0])
    v = values.to(torch.float64)
    lo, hi = v.min(0).values, v.max(0).values
    v = (v - lo) / (hi - lo).clamp_min(1e-12)
    chord = v[:1] + (v[-1:] - v[:1]) * u[:, None]
    diff = (v - chord) if shape == "concave" else (chord - v)
    return diff.argmax(0)


def flipd_at_knee(denoiser: Any, x: Tensor, sigmas: Tensor | list[float] | None = None, *,
                  shape: str = "concave", **curve_options: Any) -> tuple[Tensor, Tensor]:
    """FLIPD at each point's knee: returns (``lid [B]``, ``sigma [B]`` float64)."""
    curve = flipd_curve(denoiser, x, sigmas, **curve_options)
    idx = knee_index(curve.sigmas, curve.lid, shape=shape)
    cols = torch.arange(curve.lid.shape[1], device=curve.lid.device)
    return curve.lid[idx, cols], curve.sigmas.to(idx.device)[idx]
