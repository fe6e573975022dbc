"""Which training points a model memorized, judged against chance (science.md §7).

A per-training-point truth from samples alone. For each distinct training point x_j let δ_j be its
distance to the nearest *other* distinct training point, and count

    c_j = #{model samples g : ‖g − x_j‖ < ρ·δ_j}      k_j = #{control points h : ‖h − x_j‖ < ρ·δ_j}

with ρ = 1/4 (``radius_fraction``). A ball of radius δ_j/4 lies inside x_j's own neighbourhood, the
balls of different points are disjoint, and every sample counted in it is also a copy of x_j by the
nearest-neighbour ratio test (ratio ≤ ρ / (1 − ρ) = 1/3).

How many samples land there by chance depends on the data's dimension and density at x_j (≈ ρ^d of
the local mass), which no threshold can know. The control measures it: points no model produced (held
out, or fresh draws of a known generator). If the model generalizes, its G samples and the M control
points are draws of one distribution, so each of the c_j + k_j points near x_j is a sample with
probability π = G / (G + M), at every x_j alike. The p-value of x_j is

    p_j = P(X ≥ c_j),   X ~ Binomial(c_j + k_j, π)

and x_j is memorized when

- Benjamini–Hochberg over the distinct points (with the distance test's hypotheses, below) rejects at
  false-discovery rate ``fdr`` (0.05): on a model that memorizes nothing every null holds and *any* flag
  has probability ≤ 0.05, in any dimension;
- and the samples near x_j are at least ``min_ratio`` (2) times the control's count there, scaled to
  the same size, (c_j / G) ≥ 2·(k_j + 1) / M: a model whose density near x_j is off by a small factor is
  imperfect, not a copier. A memorizer puts (1/ρ)^d ≥ 16 times the chance mass there for d ≥ 2.

Duplicated training rows (exact) count as one point: they share δ, counts, p-value and verdict.

Power: with no control point near x_j, the smallest count that can be called memorized is about
log(fdr / R) / log(π) for R distinct points; with as many control points as samples (π = 1/2) and R = 64
that is 11 samples, and with a control a tenth of the samples (π = 0.91) it is 75.
:attr:`MemorizedPoints.min_count` reports it.

The distance test (``method="both"``, the default) uses what the count throws away: how close the
samples lie. Given the c_j samples in the ball, are its nearest ones piled up at x_j more than a locally
uniform density of local dimension d_j allows? d_j is a conservative (lower) estimate from x_j's nearest
training and control points; :mod:`mmh_train.memorized_distance` states the test and its assumptions.
It flags near-exact copies whatever the control's size (one exact copy; on pieces of dimension ≥ 2, five
samples within a few hundredths of the spacing). Both tests' p-values enter one Benjamini–Hochberg step over 2R
hypotheses at ``fdr``; a point is memorized when either of its hypotheses is rejected with that test's
effect large enough. ``method="count"`` is the count test alone (as before), ``"distance"`` the distance
test alone.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from numbers import Real
from typing import Any

import torch
from torch import Tensor

from .chance import benjamini_hochberg, conditional_binomial_pvalue
from .copies import _check_and_flatten, _check_control_is_not_the_samples, _check_no_overlap, _distinct_rows
from .memorized_distance import distance_test
from .neighbors import _knn

__all__ = ["MemorizedPoints", "memorized_points"]

METHODS = ("both", "count", "distance")


@dataclass(frozen=True)
class MemorizedPoints:
    """Result of :func:`memorized_points`. Tensors ``[N]`` have one entry per training row (CPU).

    Attributes:
        memorized: bool, the verdict.
        count: long, model samples within ``radius`` of the point (c_j).
        control_count: long, control points within ``radius`` (k_j).
        expected: float64, the count chance would give: ``control_count · G / M``.
        p_value: float64, one-sided exact p-value of "more samples than chance" (see the module docstring).
        radius: float64, ``radius_fraction ×`` the distance to the nearest distinct training point.
        group: long, the distinct point each row belongs to (exact duplicates share one).
        n_samples, n_control: G and M.
        fdr, min_ratio, radius_fraction: the settings used.
        min_count: the smallest count the count test can call memorized where no control point is near
            (a power guide: with fewer samples than this only the distance test can flag a point).
        method: which tests decided (``"both"``, ``"count"`` or ``"distance"``).
        count_p_value, distance_p_value: float64, each test's p-value (1 for a test not run); ``p_value``
            is the one Benjamini–Hochberg compared, their minimum under ``"both"``.
        by_count, by_distance: bool, which test flagged the point (both may).
        nearest_ratio: float64, distance to the nearest sample ÷ the spacing δ_j (NaN when not run).
        dimension: float64, the local dimension d_j the distance test assumed (NaN when not run).
    """

    memorized: Tensor
    count: Tensor
    control_count: Tensor
    expected: Tensor
    p_value: Tensor
    radius: Tensor
    group: Tensor
    n_samples: int
    n_control: int
    fdr: float
    min_ratio: float
    radius_fraction: float
    min_count: int
    method: str
    count_p_value: Tensor
    distance_p_value: Tensor
    by_count: Tensor
    by_distance: Tensor
    nearest_ratio: Tensor
    dimension: Tensor

    @property
    def fraction(self) -> float:
        """Fraction of *distinct* training points that are memorized."""
        per_point = torch.zeros(int(self.group.max()) + 1, dtype=torch.bool)
        per_point[self.group[self.memorized]] = True
        return float(per_point.double().mean())


def memorized_points(samples: Tensor, train: Tensor, control: Tensor, *, fdr: float = 0.05,
                     min_ratio: float = 2.0, radius_fraction: float = 0.25,
                     method: str = "both") -> MemorizedPoints:
    """Per training point: does the model put more samples right at it than chance would?

    Args:
        samples: the model's generated samples, ``[G, ...]``.
        train: the training set, ``[N, ...]`` (exact duplicates are merged into one point), at least 2
            distinct points.
        control: points no model produced from the same distribution, ``[M, ...]``: held-out data or
            fresh draws. None of them may equal a training point. For conditional models draw the
            control with the same mix of conditions as the samples.
        fdr: false-discovery rate of the Benjamini–Hochberg step over the distinct points, in (0, 1).
        min_ratio: the least factor by which the samples near a point must outnumber the (size-scaled)
            control points there (count test), or the pile at its centre its chance count (distance
            test), ≥ 1.
        radius_fraction: ρ, the ball's radius as a fraction of the distance to the nearest distinct
            training point, in (0, 1/2) so that balls are disjoint (1/4 makes every counted sample a
            ratio-test copy).
        method: ``"both"`` (count and distance tests, one BH step over both), ``"count"`` (the count
            test alone) or ``"distance"`` (the distance test alone).

    Returns:
        :class:`MemorizedPoints`.

    Raises:
        TypeError / ValueError: bad points or settings, before any distance is computed.

    Warns:
        UserWarning: when the count test could not flag even a perfect memorizer (too few samples per
            point or too small a control); under ``"both"`` only near-exact copies can then be flagged.
    """
    _check_settings(fdr, min_ratio, radius_fraction)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
    if control is None:
        raise ValueError("control is required: pass held-out points (or fresh draws) of the training "
                         "distribution; they measure how often samples land near a training point by chance.")
    g, x = _check_and_flatten(samples, train, "samples")
    c, _ = _check_and_flatten(control, train, "control")
    reps, _, _, row_rep = _distinct_rows(x)
    row_rep = row_rep.cpu()
    if reps.shape[0] < 2:
        raise ValueError("train needs at least 2 distinct points (the radius is a fraction of the distance "
                         f"to the nearest other point); got {reps.shape[0]} after merging exact duplicates.")
    _check_no_overlap(c, reps)
    _check_control_is_not_the_samples(c, g)
    n_reps, n_samples, n_control = reps.shape[0], g.shape[0], c.shape[0]

    spacing = _knn(reps, reps, 1, torch.arange(n_reps, device=reps.device))[0][:, 0].double().cpu()
    radius = radius_fraction * spacing
    count = _count_within(reps, g, radius)
    control_count = _count_within(reps, c, radius)
    scale = n_samples / n_control
    ones, nan = torch.ones(n_reps, dtype=torch.float64), torch.full((n_reps,), math.nan, dtype=torch.float64)
    count_p, count_enough = ones, torch.zeros(n_reps, dtype=torch.bool)
    if method != "distance":
        count_p = conditional_binomial_pvalue(count, control_count, n_samples, n_control)
        count_enough = count.double() >= min_ratio * (control_count.double() + 1.0) * scale
    distance_p, distance_enough, nearest_ratio, dimension = ones, torch.zeros_like(count_enough), nan, nan
    if method != "count":
        test = distance_test(reps, g, c, radius, count, min_ratio)
        distance_p, distance_enough = test.p_value, test.enough
        nearest_ratio, dimension = test.nearest / spacing, test.dimension

    # one BH step over the hypotheses of the tests run (2R under "both"); a test not run rejects nothing
    runs = torch.tensor([method != "distance", method != "count"])
    rejected = torch.zeros(2, n_reps, dtype=torch.bool)
    rejected[runs] = benjamini_hochberg(torch.stack([count_p, distance_p])[runs].flatten(), fdr).reshape(-1, n_reps)
    by_count, by_distance = rejected[0] & count_enough, rejected[1] & distance_enough
    memorized = by_count | by_distance

    pi = n_samples / (n_samples + n_control)
    min_count = max(math.ceil(math.log(fdr / n_reps) / math.log(pi)), math.ceil(min_ratio * scale))
    if method != "distance" and min_count > n_samples / n_reps:
        also = (" The distance test can still flag near-exact copies." if method == "both" else "")
        warnings.warn(f"memorized_points: {n_samples} samples for {n_reps} distinct training points "
                      f"({n_samples / n_reps:.1f} each) and {n_control} control points cannot show memorization "
                      f"by count: a point needs at least {min_count} samples near it to be flagged by the count "
                      f"test. Draw more samples (about 20 per training point) and pass a control about as large "
                      f"as the samples.{also}", stacklevel=2)

    return MemorizedPoints(
        memorized=memorized[row_rep], count=count[row_rep], control_count=control_count[row_rep],
        expected=(control_count.double() * scale)[row_rep], p_value=torch.minimum(count_p, distance_p)[row_rep],
        radius=radius[row_rep], group=row_rep, n_samples=n_samples, n_control=n_control, fdr=float(fdr),
        min_ratio=float(min_ratio), radius_fraction=float(radius_fraction), min_count=min_count, method=method,
        count_p_value=count_p[row_rep], distance_p_value=distance_p[row_rep], by_count=by_count[row_rep],
        by_distance=by_distance[row_rep], nearest_ratio=nearest_ratio[row_rep], dimension=dimension[row_rep])


def _count_within(reps: Tensor, points: Tensor, radius: Tensor) -> Tensor:
    """``[R]`` long: how many of ``points [P, D]`` lie within ``radius[j]`` of ``reps[j]``.

    The balls are disjoint (ρ < 1/2), and a point inside ball j has x_j as its nearest training point, so
    one nearest-neighbour search finds every member.
    """
    dists, index = _knn(reps, points, 1, None)
    inside = dists[:, 0].double() < radius.to(dists.device)[index[:, 0]]
    return torch.bincount(index[inside, 0].cpu(), minlength=reps.shape[0])


def _check_settings(fdr: Any, min_ratio: Any, radius_fraction: Any) -> None:
    for name, value, ok, hint in (("fdr", fdr, lambda v: 0 < v < 1, "in (0, 1), e.g. 0.05"),
                                  ("min_ratio", min_ratio, lambda v: v >= 1, "≥ 1, e.g. 4"),
                                  ("radius_fraction", radius_fraction, lambda v: 0 < v < 0.5,
                                   "in (0, 0.5) so that the balls of two points are disjoint, e.g. 0.25")):
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or not ok(value):
            raise ValueError(f"{name} must be {hint}; got {value!r}.")
