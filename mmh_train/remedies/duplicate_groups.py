"""Duplicate groups of a training set and the per-sample loss weights that undo their over-counting.

Duplicated training points are the typical cause of data-driven memorization (DD-Mem, science.md §1):
a point present m times pulls m times as hard on the model, and exact copies have LID* = 0. The remedy
is to count each group of (near-)duplicates as (about) one sample:

    w_i = W_g / m_g     for a member i of a duplicated group g of size m_g  (W_g = group_weight or min(m_g, cap))
    w_i = 1             for a point without duplicates

then rescale so the weights average 1 over the data set. Groups are the connected components of the
graph linking identical rows (and, with ``radius > 0``, rows closer than ``radius``), so a chain of
near-copies a ~ b ~ c forms one group even when a and c are farther apart than ``radius``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._checks import check_points
from ..neighbors import default_chunk_size, pairwise_sq_dists

__all__ = ["first_members", "join_groups", "DuplicateGroups", "find_duplicate_groups", "duplicate_weights", "downweight", "weighted_loss"]


@dataclass(frozen=True, eq=False)
class DuplicateGroups:
    """Which training points duplicate each other.

    Attributes:
        group: ``[N]`` long, dense group ids ``0..G−1`` numbered by first occurrence (point 0 is in group 0).
        size: ``[N]`` long, the size of each point's group (1 for a point without duplicates).
        n_groups: G, the number of groups (distinct points up to duplication).
    """

    group: Tensor
    size: Tensor
    n_groups: int

    def __len__(self) -> int:
        return int(self.group.shape[0])

    @property
    def duplicated(self) -> Tensor:
        """``[N]`` bool, True for every member of a group with more than one point (originals included)."""
        return self.size > 1

    def members(self, g: int) -> Tensor:
        """Indices ``[m]`` (long, increasing) of the points in group ``g``."""
        if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g < self.n_groups:
            raise ValueError(f"g must be a group id in 0..{self.n_groups - 1}; got {g!r}.")
        return torch.nonzero(self.group == g).flatten()


def _check_rows(data: Any, name: str) -> Tensor:
    """``[N, ...]`` tensor with N ≥ 1; floating data must be finite, integer/bool data (e.g. uint8 images)
    are allowed for exact hashing. Returns the rows flattened to ``[N, D]``."""
    if isinstance(data, Tensor) and not data.is_floating_point() and not data.is_complex():
        if data.dim() < 2 or data.shape[0] == 0 or data[0].numel() == 0:
            raise ValueError(f"{name} must have shape [N, ...] with N ≥ 1 and at least one feature; "
                             f"got {tuple(data.shape)}.")
    else:
        check_points(data, name)
    return data.reshape(data.shape[0], -1)


def _exact_representatives(flat: Tensor) -> Tensor:
    """``[N]`` long: for each row, the lowest index of a row identical to it (itself if unique)."""
    n = flat.shape[0]
    _, inverse = torch.unique(flat, dim=0, return_inverse=True)
    arange = torch.arange(n, device=flat.device)
    first = torch.full((int(inverse.max()) + 1,), n, dtype=torch.long, device=flat.device)
    first.scatter_reduce_(0, inverse, arange, reduce="amin")
    return first[inverse]


def _compress(parent: Tensor) -> Tensor:
    """Pointer jumping: every node points straight at its root."""
    while True:
        grand = parent[parent]
        if torch.equal(grand, parent):
            return parent
        parent = grand


def _union(parent: Tensor, i: Tensor, j: Tensor) -> Tensor:
    """Merges the trees of every edge ``(i[e], j[e])``; roots always hook to a smaller index (no cycles)."""
    while i.numel() > 0:
        parent = _compress(parent)
        ri, rj = parent[i], parent[j]
        differ = ri != rj
        i, j, ri, rj = i[differ], j[differ], ri[differ], rj[differ]
        if i.numel() == 0:
            break
        # Each root hooks under the smallest root it is linked to; other links are redone next round.
        parent.scatter_reduce_(0, torch.maximum(ri, rj), torch.minimum(ri, rj), reduce="amin")
    return _compress(parent)


def _link_within_radius(parent: Tensor, points: Tensor, candidates: Tensor, radius: float,
                        chunk_size: int | None) -> Tensor:
    """Links every pair of ``candidates`` (indices of distinct rows of ``points [N, F]``) within ``radius``.

    Distances come from :func:`mmh_train.neighbors.pairwise_sq_dists` a block of queries at a time, so
    memory stays bounded; only pairs (a, b) with a < b are kept.
    """
    rows = points[candidates]
    m = rows.shape[0]
    chunk = chunk_size or max(1, default_chunk_size(m) // 4)
    r2 = radius * radius
    for start in range(0, m, chunk):
        stop = min(start + chunk, m)
        d2 = pairwise_sq_dists(rows[start:stop], rows[start:])  # only columns ≥ start: each pair once
        a, b = torch.nonzero(d2 <= r2, as_tuple=True)
        keep = b > a  # drops the diagonal and the (a, b) / (b, a) twin inside the block
        a, b = a[keep] + start, b[keep] + start
        parent = _union(parent, candidates[a], candidates[b])
    return parent


def _dense_ids_by_first_occurrence(root: Tensor) -> tuple[Tensor, int]:
    """Relabels arbitrary component labels ``[N]`` as 0..G−1 in order of first occurrence."""
    labels, inverse = torch.unique(root, return_inverse=True)
    n = root.shape[0]
    first = torch.full((labels.shape[0],), n, dtype=torch.long, device=root.device)
    first.scatter_reduce_(0, inverse, torch.arange(n, device=root.device), reduce="amin")
    rank = torch.empty_like(first)
    rank[torch.argsort(first)] = torch.arange(labels.shape[0], device=root.device)
    return rank[inverse], int(labels.shape[0])


def find_duplicate_groups(data: Tensor, *, radius: float = 0.0, features: Tensor | None = None,
                          chunk_size: int | None = None) -> DuplicateGroups:
    """Groups training points that are exact or near duplicates of each other.

    Identical rows of ``data`` are always grouped (hashed with ``torch.unique``, no distances). With
    ``radius > 0``, points whose Euclidean distance is at most ``radius`` are linked too, measured in
    ``features`` space when given (e.g. embeddings of a pretrained encoder) and in the flattened data
    space otherwise; groups are the connected components of all links. With ``features`` and
    ``radius == 0`` rows with identical features are grouped as well.

    Args:
        data: ``[N, ...]`` training points; floating (finite) or integer (e.g. uint8 images).
        radius: link distance; 0 (default) finds exact duplicates only.
        features: optional ``[N, F]`` floating features, one row per data point, for the distances.
        chunk_size: query rows per block of the radius search; None keeps a block at ≤ 2^22 distances.

    Returns:
        A :class:`DuplicateGroups` on ``data``'s device.

    .. note::
        The radius search costs O(N'² F) for N' distinct rows, done on the data's device in blocks.
        Distances are float32 unless the points are float64, so pairs within rounding of ``radius``
        may fall either way.
    """
    flat = _check_rows(data, "data")
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not math.isfinite(radius) or radius < 0:
        raise ValueError(f"radius must be a finite float ≥ 0 (0 finds exact duplicates only); got {radius!r}.")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be an integer ≥ 1 or None; got {chunk_size!r}.")
    n = flat.shape[0]
    if features is not None:
        check_points(features, "features")
        if features.shape[0] != n:
            raise ValueError(f"features must have one row per data point: got {features.shape[0]} rows for "
                             f"{n} points.")
        space = features.reshape(n, -1).to(flat.device)
    else:
        space = flat
    parent = _exact_representatives(flat)
    if features is not None:
        arange = torch.arange(n, device=flat.device)
        parent = _union(parent, arange, _exact_representatives(space))
    if radius > 0:
        # Exact copies are already linked: search among one representative per identical row only.
        candidates = torch.unique(_exact_representatives(space))
        points = space if space.is_floating_point() else space.float()
        parent = _link_within_radius(parent, points, candidates, float(radius), chunk_size)
    group, n_groups = _dense_ids_by_first_occurrence(_compress(parent))
    size = torch.bincount(group, minlength=n_groups)[group]
    return DuplicateGroups(group=group, size=size, n_groups=n_groups)


def first_members(groups: DuplicateGroups) -> Tensor:
    """``[G]`` long: the lowest index of each group."""
    n, device = len(groups), groups.group.device
    first = torch.full((groups.n_groups,), n, dtype=torch.long, device=device)
    return first.scatter_reduce_(0, groups.group, torch.arange(n, device=device), reduce="amin")


def join_groups(groups: DuplicateGroups, a: Tensor, b: Tensor) -> DuplicateGroups:
    """``groups`` with the groups of points ``a[e]`` and ``b[e]`` joined for every pair ``e`` (``[E]`` long each).

    The one union-find of the library: :func:`find_duplicate_groups` links by radius, the survey by each
    point's own neighbourhood, both through it.
    """
    parent = _union(first_members(groups)[groups.group].clone(), a.long(), b.long())
    group, n_groups = _dense_ids_by_first_occurrence(parent)
    return DuplicateGroups(group=group, size=torch.bincount(group, minlength=n_groups)[group], n_groups=n_groups)


def _normalized(weights: Tensor, normalize: bool) -> Tensor:
    if not normalize:
        return weights
    mean = weights.mean()
    if not mean > 0:
        raise ValueError("every weight is 0, so they cannot be rescaled to average 1; keep some points.")
    return weights / mean


def duplicate_weights(groups: DuplicateGroups, *, group_weight: float = 1.0, cap: float | None = None,
                      normalize: bool = True) -> Tensor:
    """Per-sample loss weights that count each duplicate group as ``group_weight`` samples.

    A duplicated group of size m gets the total weight W = ``group_weight`` (default 1: the whole group
    weighs as much as one sample), split equally, so each member gets W / m. With ``cap`` the total is
    W = min(m, cap) instead: groups up to ``cap`` copies keep their weight, larger ones are clipped.
    Points without duplicates get 1.

    Args:
        groups: from :func:`find_duplicate_groups`.
        group_weight: total weight of a duplicated group, > 0. Cannot be combined with ``cap``.
        cap: total weight min(m, cap) of a group of size m; ``cap ≥ 1`` (1 equals the default).
        normalize: rescale so that the weights average 1 over the data set (default), which keeps the
            loss on the same scale as the unweighted loss: with :func:`weighted_loss` the learning rate
            needs no retuning.

    Returns:
        ``[N]`` float32 weights, indexed by dataset index: use ``weights[batch_indices]`` (see
        :class:`mmh_train.data.IndexedDataset`).

    .. note::
        Use either these loss weights or a :class:`DistributedWeightedSampler` with the same weights,
        not both: together they count the reweighting twice.
    """
    if not isinstance(groups, DuplicateGroups):
        raise TypeError(f"groups must be a DuplicateGroups from find_duplicate_groups; got {type(groups).__name__}.")
    if isinstance(group_weight, bool) or not isinstance(group_weight, (int, float)) or \
            not math.isfinite(group_weight) or group_weight <= 0:
        raise ValueError(f"group_weight must be a finite float > 0 (1 = a group weighs one sample); "
                         f"got {group_weight!r}.")
    size = groups.size.to(torch.float32)
    if cap is not None:
        if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not math.isfinite(cap) or cap < 1:
            raise ValueError(f"cap must be a finite float ≥ 1 (a group of m copies weighs min(m, cap)); got {cap!r}.")
        if group_weight != 1.0:
            raise ValueError("pass either group_weight (every group weighs the same) or cap (a group of m "
                             "copies weighs min(m, cap)), not both.")
        total = size.clamp(max=float(cap))
    else:
        total = torch.full_like(size, float(group_weight))
    weights = torch.where(groups.size > 1, total / size, torch.ones_like(size))
    return _normalized(weights, normalize)


def _check_weights(weights: Any, name: str = "weights") -> Tensor:
    if not isinstance(weights, Tensor) or not weights.is_floating_point() or weights.dim() != 1:
        shape = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise TypeError(f"{name} must be a 1-D floating tensor [N]; got {shape}.")
    if weights.numel() == 0 or not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError(f"{name} must be non-empty, finite and ≥ 0.")
    return weights


def downweight(weights: Tensor, mask: Tensor, factor: float, *, normalize: bool = True) -> Tensor:
    """Multiplies the weights of the points in ``mask`` by ``factor`` (e.g. those the monitor labels DD-Mem).

    Args:
        weights: ``[N]`` current per-sample weights (e.g. from :func:`duplicate_weights` or all ones).
        mask: ``[N]`` bool, the points to down-weight.
        factor: multiplier in [0, 1]; 0 removes the points from the loss.
        normalize: rescale so the result averages 1 (as in :func:`duplicate_weights`).

    Returns:
        ``[N]`` new weights (the input is not modified).
    """
    weights = _check_weights(weights)
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != weights.shape:
        shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a bool tensor shaped like weights {tuple(weights.shape)}; got {shape}.")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 <= factor <= 1:
        raise ValueError(f"factor must be a float in [0, 1] (0 drops the points); got {factor!r}.")
    out = torch.where(mask.to(weights.device), weights * float(factor), weights)
    return _normalized(out, normalize)


def weighted_loss(per_sample_loss: Tensor, weights: Tensor) -> Tensor:
    """Σ_b w_b·ℓ_b / B: the batch estimate of the dataset-weighted loss (1/N) Σ_i w_i·ℓ_i.

    Dividing by the batch size B rather than by Σ_b w_b keeps it an unbiased estimate of the weighted
    objective for uniformly sampled batches, and it is trivially correct under DDP: each rank's loss is
    a plain mean over its own batch, so DDP's gradient averaging gives the global batch's estimate.
    Dividing by Σ_b w_b would make each rank's normaliser differ (and be biased). With weights averaging
    1 over the data set (``normalize=True``) the loss keeps the scale of the unweighted mean.

    Args:
        per_sample_loss: ``[B]`` loss of each sample (reduce other axes first, e.g. ``.flatten(1).mean(1)``).
        weights: ``[B]`` the batch's weights, ``weights_all[batch_indices]``.

    Returns:
        A scalar tensor in ``per_sample_loss``'s dtype.
    """
    if not isinstance(per_sample_loss, Tensor) or per_sample_loss.dim() != 1 or per_sample_loss.numel() == 0:
        shape = tuple(per_sample_loss.shape) if isinstance(per_sample_loss, Tensor) else type(per_sample_loss).__name__
        raise ValueError(f"per_sample_loss must be a non-empty [B] tensor; got {shape}. Reduce the other axes "
                         f"first, e.g. loss.flatten(1).mean(1).")
    if not isinstance(weights, Tensor) or weights.shape != per_sample_loss.shape:
        shape = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise ValueError(f"weights must be a [B] tensor matching per_sample_loss {tuple(per_sample_loss.shape)}; "
                         f"got {shape}. Index the dataset weights with the batch's indices.")
    w = weights.detach().to(device=per_sample_loss.device, dtype=per_sample_loss.dtype)
    return (w * per_sample_loss).sum() / per_sample_loss.shape[0]
