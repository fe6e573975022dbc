"""Copy detection for generated samples, with its chance control (science.md §6–7).

A generated sample g copies a training point when it sits much closer to its nearest training
neighbour NN1 than to the second nearest NN2: ‖g − NN1(g)‖ / ‖g − NN2(g)‖ < 1/3 (Carlini et al. 2023;
Gu et al.), the test of the literature.

The test has a chance rate. A model that generalizes perfectly on a d-dimensional piece of data still
lands near training points: P(ratio < r) ≈ r^d, about 11 % at d = 2, 1.2 % at d = 4 and ~0 for images.
So a copy rate means little alone. Pass ``control=`` (held-out points of the same distribution, or
fresh draws when the generator is known) and the same test runs on them: :class:`CopyReport` then
carries the control's rate and the excess (model − control) with a confidence interval. A model whose
rate falls below its control's has not generalized either: it avoids its training points, or its samples
sit off the data (a sample at distance r from a d-dimensional piece reads a ratio near 1 once r exceeds
the spacing of the training points there).

The training set is de-duplicated (exact rows) before the neighbour search. Duplicated images dominate
extracted copies, yet with duplicates kept NN2 is NN1's twin at the same distance, the ratio reads 1 and
exactly those copies would be missed. ``nearest`` still indexes the original training set (the lowest
index of the duplicate group).

The "calibrated" variant (NN1 distance over NN1's mean distance to its 5 nearest training neighbours,
copy below 0.8; Yoon et al.) was removed: on fresh draws of a known distribution it flags 57–66 % of the
samples (docs/science.md, "Copy tests and their chance rates").
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from numbers import Real
from typing import Any

import torch
from torch import Tensor

from ._checks import check_points
from .chance import difference_interval
from .neighbors import _compute_dtype, _knn

__all__ = ["CopyReport", "copy_methods", "nearest_neighbour_ratio", "detect_copies", "DEFAULT_COPY_THRESHOLD"]

copy_methods: tuple[str, ...] = ("ratio",)
DEFAULT_COPY_THRESHOLD: float = 1.0 / 3.0
#: A control whose own copy rate reaches this is not a control: it is near-copies of the training set (held-out
#: digits read 0 %, fresh draws of a 2-d toy piece 9–15 %; docs/science.md §7).
CONTROL_COPY_WARNING: float = 0.5


@dataclass(frozen=True)
class CopyReport:
    """Result of :func:`detect_copies`. Tensors have shape ``[G]``, one entry per generated sample.

    Attributes:
        score: the nearest-neighbour ratio (lower = more copy-like; 0 = identical to a training point).
        nearest: long index into the original training set of the nearest training point (the lowest
            index among exact duplicates).
        nearest_count: long, how many training rows are exact copies of that nearest point (1 = unique);
            copies of duplicated training images are the data-driven case.
        is_copy: bool, ``score < threshold``.
        copy_rate: fraction of generated samples that are copies.
        threshold: the threshold used.
        method: ``"ratio"``.
        n_generated: G, the number of generated samples.
        control_rate: the same test's rate on the control set (chance), or None without a control.
        n_control: M, the number of control points (0 without a control).
        excess_rate: ``copy_rate − control_rate``, or None without a control.
        excess_interval: ``(low, high)`` confidence interval of the excess (Newcombe's hybrid score
            interval at ``confidence``), or None without a control.
        confidence: the interval's two-sided level.
    """

    score: Tensor
    nearest: Tensor
    nearest_count: Tensor
    is_copy: Tensor
    copy_rate: float
    threshold: float
    method: str
    n_generated: int = 0
    control_rate: float | None = None
    n_control: int = 0
    excess_rate: float | None = None
    excess_interval: tuple[float, float] | None = None
    confidence: float = 0.95

    def summary(self) -> str:
        """One line: model rate, control rate and excess with its interval."""
        line = f"copies {self.copy_rate:.1%} of {self.n_generated}"
        if self.control_rate is None:
            return line + " (no control: chance rate unknown)"
        low, high = self.excess_interval
        return (f"{line}, control {self.control_rate:.1%} of {self.n_control}, excess {self.excess_rate:+.1%} "
                f"[{low:+.1%}, {high:+.1%}]")


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
        x = _distinct_rows(x)[0]
        _check_distinct(x.shape[0], 2, train.shape[0])
    elif x.shape[0] < 2:
        raise ValueError(f"train needs at least 2 points for a second nearest neighbour; got {x.shape[0]}.")
    dists, _ = _knn(x, g, 2, None)
    return _ratio(dists[:, 0], dists[:, 1])


def detect_copies(generated: Tensor, train: Tensor, *, control: Tensor | None = None,
                  threshold: float | None = None, method: str = "ratio", confidence: float = 0.95) -> CopyReport:
    """Flags generated samples that copy a training point, and measures the same test's chance rate.

    Args:
        generated: generated samples, shape ``[G, ...]``.
        train: training points, shape ``[N, ...]`` with the same number of features per point; at least
            2 distinct rows. Exact duplicates are merged.
        control: points no model produced, from the distribution the model should learn, shape
            ``[M, ...]``: held-out data, or fresh draws of a known generator. None skips the control (the
            rate alone cannot tell copying from chance on low-dimensional data). A control point equal to
            a training point is an error: held-out data must not overlap the training set.
        threshold: a sample is a copy when its ratio is below this (> 0); None means 1/3.
        method: ``"ratio"`` (the only one; ``"calibrated"`` was removed, see the module docstring).
        confidence: two-sided level of ``excess_interval``.

    Returns:
        :class:`CopyReport`; tensors on ``train``'s device.

    Raises:
        TypeError: non-tensor or non-floating points, a non-numeric threshold.
        ValueError: empty or non-finite points, different feature counts, an unknown method, a bad
            threshold or confidence, too few distinct training points, a control that overlaps the
            training set.
    """
    if method == "calibrated":
        raise ValueError("method='calibrated' was removed: on fresh draws of the data distribution it flags "
                         "57-66 % of samples as copies (see docs/science.md). Use the default method='ratio' "
                         "and pass control=held-out points to measure the test's chance rate.")
    if method not in copy_methods:
        raise ValueError(f"method={method!r} is not a copy test; choose one of {copy_methods}.")
    threshold = _check_threshold(threshold)
    if not (isinstance(confidence, Real) and 0.0 < float(confidence) < 1.0):
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence!r}.")
    g, x = _check_and_flatten(generated, train)
    c = _check_and_flatten(control, train, "control")[0] if control is not None else None
    reps, original, group_size, _ = _distinct_rows(x)
    _check_distinct(reps.shape[0], 2, train.shape[0])
    if c is not None:
        _check_no_overlap(c, reps)
        _check_control_is_not_the_samples(c, g)

    score, nearest_rep = _ratio_and_nearest(reps, g)
    is_copy = score < threshold
    n_copies, n_gen = int(is_copy.sum()), g.shape[0]
    fields: dict[str, Any] = {}
    if c is not None:
        n_control_copies = int((_ratio_and_nearest(reps, c)[0] < threshold).sum())
        control_rate = n_control_copies / c.shape[0]
        if control_rate >= CONTROL_COPY_WARNING:
            warnings.warn(f"{control_rate:.0%} of the control points are copies of training points by the ratio "
                          f"test: a control must be data no model produced, drawn like the training set (held-out "
                          f"points, fresh draws), not near-copies of it; the excess is meaningless against it.",
                          UserWarning, stacklevel=2)
        fields = dict(control_rate=control_rate, n_control=c.shape[0], excess_rate=n_copies / n_gen - control_rate,
                      excess_interval=difference_interval(n_copies, n_gen, n_control_copies, c.shape[0], confidence))
    return CopyReport(score=score, nearest=original[nearest_rep], nearest_count=group_size[nearest_rep],
                      is_copy=is_copy, copy_rate=n_copies / n_gen, threshold=threshold, method=method,
                      n_generated=n_gen, confidence=float(confidence), **fields)


# --------------------------------------------------------------------------- helpers


def _distinct_rows(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The distinct rows of ``x [N, D]`` in order of first appearance.

    Returns ``(reps [R, D], original [R], size [R], row_rep [N])``: each distinct row, the lowest index
    where it occurs in ``x``, how many rows equal it, and for each row of ``x`` its row in ``reps``.
    Adding 0.0 turns −0.0 into +0.0 so they count as equal.
    """
    n = x.shape[0]
    _, group, size = torch.unique(x + 0.0, dim=0, return_inverse=True, return_counts=True)
    first = torch.full_like(size, n).scatter_reduce_(0, group, torch.arange(n, device=x.device), "amin")
    order = torch.argsort(first)
    position = torch.empty_like(order)
    position[order] = torch.arange(order.numel(), device=order.device)
    return x[first[order]], first[order], size[order], position[group]


def _ratio_and_nearest(reps: Tensor, points: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest-neighbour ratio ``[P]`` of each point among the distinct training rows, and its NN1 (a row of
    ``reps``)."""
    dists, index = _knn(reps, points, 2, None)
    return _ratio(dists[:, 0], dists[:, 1]), index[:, 0]


def _check_no_overlap(control: Tensor, reps: Tensor) -> None:
    dists, _ = _knn(reps, control, 1, None)
    overlap = int((dists[:, 0] == 0).sum())
    if overlap:
        raise ValueError(f"{overlap} of {control.shape[0]} control points are exact copies of training points; the "
                         f"control must be data no model was trained on (held-out points or fresh draws). Remove "
                         f"the training rows from it.")


def _check_control_is_not_the_samples(control: Tensor, generated: Tensor) -> None:
    dists, _ = _knn(generated, control, 1, None)
    shared = int((dists[:, 0] == 0).sum())
    if shared:
        raise ValueError(f"{shared} of {control.shape[0]} control points equal generated samples; the control must be "
                         f"data no model produced (held-out points or fresh draws), not the samples themselves.")


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator with 0 / 0 read as 0 (a sample identical to a training point is a copy).

    After de-duplication the denominator is a distance between distinct points or to distinct points
    and can only be 0 when the numerator is too; the clamp guards underflow.
    """
    safe = denominator.clamp(min=torch.finfo(denominator.dtype).tiny)
    return torch.where(numerator == 0, torch.zeros_like(numerator), numerator / safe)


def _check_and_flatten(generated: Any, train: Any, name: str = "generated") -> tuple[Tensor, Tensor]:
    """Validates both sets and returns them flattened to ``[G, D]`` and ``[N, D]`` in the compute dtype
    on ``train``'s device."""
    check_points(generated, name)
    check_points(train, "train")
    if generated.dim() > 2 and train.dim() > 2 and generated.shape[1:] != train.shape[1:]:
        raise ValueError(f"{name} points have shape {tuple(generated.shape[1:])} but training points "
                         f"{tuple(train.shape[1:])}: the same number of values in another layout (e.g. channels "
                         f"last against channels first) compares the wrong pixels. Bring both to one layout, "
                         f"e.g. {name}.permute(0, 3, 1, 2) for [N, H, W, C].")
    if generated[0].numel() != train[0].numel():
        raise ValueError(f"{name} points have {generated[0].numel()} features but training points have "
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


def _check_threshold(threshold: Any) -> float:
    if threshold is None:
        return DEFAULT_COPY_THRESHOLD
    if isinstance(threshold, bool) or not isinstance(threshold, Real):
        raise TypeError(f"threshold must be a number > 0 or None (1/3); got {type(threshold).__name__}.")
    if not math.isfinite(threshold) or threshold <= 0:
        raise ValueError(f"threshold must be finite and > 0; got {threshold!r}. None uses the default 1/3.")
    return float(threshold)
