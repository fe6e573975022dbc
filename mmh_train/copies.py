"""Copy detection for generated samples (science.md §6).

A generated sample g copies a training point when it sits much closer to its nearest training
neighbour NN1 than the neighbourhood there would explain:

- ``"ratio"`` (Carlini et al. 2023; Gu et al.): ‖g − NN1(g)‖ / ‖g − NN2(g)‖ < 1/3.
- ``"calibrated"`` (Yoon et al.): ‖g − NN1(g)‖ / (mean distance of NN1 to its ``calibration_k`` nearest
  training neighbours) < 0.8.

The training set is de-duplicated (exact rows) before the neighbour search. Duplicated images dominate
extracted copies, yet with duplicates kept NN2 is NN1's twin at the same distance, the ratio reads 1 and
exactly those copies would be missed. ``nearest`` still indexes the original training set (the lowest
index of the duplicate group).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any

import torch
from torch import Tensor

from ._checks import check_choice, check_points, check_positive_int
from .neighbors import _compute_dtype, _knn

__all__ = ["CopyReport", "copy_methods", "nearest_neighbour_ratio", "detect_copies"]

copy_methods: tuple[str, ...] = ("ratio", "calibrated")
_DEFAULT_THRESHOLD = {"ratio": 1.0 / 3.0, "calibrated": 0.8}


@dataclass(frozen=True)
class CopyReport:
    """Result of :func:`detect_copies`. Tensors have shape ``[G]``, one entry per generated sample.

    Attributes:
        score: the method's statistic (lower = more copy-like; 0 = identical to a training point).
        nearest: long index into the original training set of the nearest training point (the lowest
            index among exact duplicates).
        nearest_count: long, how many training rows are exact copies of that nearest point (1 = unique);
            copies of duplicated training images are the data-driven case.
        is_copy: bool, ``score < threshold``.
        copy_rate: fraction of generated samples that are copies.
        threshold: the threshold used.
        method: ``"ratio"`` or ``"calibrated"``.
    """

    score: Tensor
    nearest: Tensor
    nearest_count: Tensor
    is_copy: Tensor
    copy_rate: float
    threshold: float
    method: str


def nearest_neighbour_ratio(generated: Tensor, train: Tensor, *, deduplicate: bool = True) -> Tensor:
    """‖g − NN1(g)‖ / ‖g − NN2(g)‖ for each generated sample, over the training set.

    Args:
        generated: generated samples, shape ``[G, ...]``.
        train: training points, shape ``[N, ...]`` with the same number of features per point.
        deduplicate: search the distinct training rows only (default), so that an exact duplicate of NN1
            cannot be NN2. False searches the rows as given (a copy of a duplicated point then reads 1).

    Returns:
        Tensor ``[G]`` in [0, 1], on ``train``'s device, float64 for float64 training data else float32.
        A sample identical to a training point reads 0.

    Raises:
        TypeError / ValueError: see :func:`detect_copies`.
    """
    g, x = _check_and_flatten(generated, train)
    if deduplicate:
        x, _, _ = _distinct_rows(x)
        _check_distinct(x.shape[0], 2, train.shape[0])
    elif x.shape[0] < 2:
        raise ValueError(f"train needs at least 2 points for a second nearest neighbour; got {x.shape[0]}.")
    dists, _ = _knn(x, g, 2, None)
    return _ratio(dists[:, 0], dists[:, 1])


def detect_copies(generated: Tensor, train: Tensor, *, threshold: float | None = None,
                  method: str = "ratio", calibration_k: int = 5) -> CopyReport:
    """Flags generated samples that copy a training point.

    Args:
        generated: generated samples, shape ``[G, ...]``.
        train: training points, shape ``[N, ...]`` with the same number of features per point; at least
            2 distinct rows (``calibration_k + 1`` for ``"calibrated"``). Exact duplicates are merged.
        threshold: a sample is a copy when its score is below this (> 0); None means the method's
            default: 1/3 for ``"ratio"``, 0.8 for ``"calibrated"``.
        method: ``"ratio"``: ‖g − NN1‖ / ‖g − NN2‖; ``"calibrated"``: ‖g − NN1‖ divided by the mean
            distance of NN1 to its ``calibration_k`` nearest (distinct) training neighbours.
        calibration_k: neighbours of NN1 that set its local scale (``"calibrated"`` only).

    Returns:
        :class:`CopyReport`; tensors on ``train``'s device.

    Raises:
        TypeError: non-tensor or non-floating points, a non-numeric threshold.
        ValueError: empty or non-finite points, different feature counts, an unknown method, a bad
            threshold or ``calibration_k``, or too few distinct training points.
    """
    check_choice(method, "method", copy_methods)
    threshold = _check_threshold(threshold, method)
    check_positive_int(calibration_k, "calibration_k")
    g, x = _check_and_flatten(generated, train)
    reps, original, group_size = _distinct_rows(x)
    _check_distinct(reps.shape[0], 2 if method == "ratio" else calibration_k + 1, train.shape[0],
                    "" if method == "ratio" else f" (calibration_k={calibration_k} neighbours plus NN1 itself)")

    if method == "ratio":
        dists, index = _knn(reps, g, 2, None)
        score = _ratio(dists[:, 0], dists[:, 1])
    else:
        dists, index = _knn(reps, g, 1, None)
        score = _ratio(dists[:, 0], _local_scale(reps, index[:, 0], calibration_k))
    nearest_rep = index[:, 0]
    is_copy = score < threshold
    return CopyReport(score=score, nearest=original[nearest_rep], nearest_count=group_size[nearest_rep],
                      is_copy=is_copy, copy_rate=float(is_copy.double().mean()), threshold=threshold,
                      method=method)


# --------------------------------------------------------------------------- helpers


def _distinct_rows(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The distinct rows of ``x [N, D]`` in order of first appearance.

    Returns ``(reps [R, D], original [R], size [R])``: each distinct row, the lowest index where it occurs
    in ``x`` and how many rows equal it. Adding 0.0 turns −0.0 into +0.0 so they count as equal.
    """
    n = x.shape[0]
    _, group, size = torch.unique(x + 0.0, dim=0, return_inverse=True, return_counts=True)
    first = torch.full_like(size, n).scatter_reduce_(0, group, torch.arange(n, device=x.device), "amin")
    order = torch.argsort(first)
    return x[first[order]], first[order], size[order]


def _local_scale(reps: Tensor, centre: Tensor, k: int) -> Tensor:
    """Mean distance of each ``reps[centre[i]]`` to its ``k`` nearest other representatives → ``[G]``.

    Computed once per distinct centre (many samples may share one NN1).
    """
    unique_centres, back = torch.unique(centre, return_inverse=True)
    dists, _ = _knn(reps, reps[unique_centres], k, unique_centres)
    return dists.mean(1)[back]


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator with 0 / 0 read as 0 (a sample identical to a training point is a copy).

    After de-duplication the denominator is a distance between distinct points or to distinct points
    and can only be 0 when the numerator is too; the clamp guards underflow.
    """
    safe = denominator.clamp(min=torch.finfo(denominator.dtype).tiny)
    return torch.where(numerator == 0, torch.zeros_like(numerator), numerator / safe)


def _check_and_flatten(generated: Any, train: Any) -> tuple[Tensor, Tensor]:
    """Validates both sets and returns them flattened to ``[G, D]`` and ``[N, D]`` in the compute dtype
    on ``train``'s device."""
    check_points(generated, "generated")
    check_points(train, "train")
    if generated[0].numel() != train[0].numel():
        raise ValueError(f"generated samples have {generated[0].numel()} features but training points have "
                         f"{train[0].numel()} (shapes {tuple(generated.shape)} and {tuple(train.shape)}); "
                         f"compare samples in the same space as the training data (same resolution and "
                         f"scaling, e.g. both in [-1, 1]).")
    dtype = _compute_dtype(train.dtype)
    x = train.reshape(train.shape[0], -1).to(dtype)
    g = generated.reshape(generated.shape[0], -1).to(device=x.device, dtype=dtype)
    return g, x


def _check_distinct(n_distinct: int, needed: int, n_rows: int, why: str = "") -> None:
    if n_distinct < needed:
        raise ValueError(f"train needs at least {needed} distinct points{why}, but has only {n_distinct} "
                         f"after merging exact duplicates ({n_rows} rows in all); pass more distinct "
                         f"training data.")


def _check_threshold(threshold: Any, method: str) -> float:
    if threshold is None:
        return _DEFAULT_THRESHOLD[method]
    if isinstance(threshold, bool) or not isinstance(threshold, Real):
        raise TypeError(f"threshold must be a number > 0 or None (the method's default); got "
                        f"{type(threshold).__name__}.")
    if not math.isfinite(threshold) or threshold <= 0:
        raise ValueError(f"threshold must be finite and > 0; got {threshold!r}. None uses the default for "
                         f"method={method!r}: {_DEFAULT_THRESHOLD[method]:.4g}.")
    return float(threshold)
