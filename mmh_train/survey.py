"""One pass over the training set before the first check: its comparison view, duplicates and spacing.

What the verdicts need from the data alone (no model):

- **duplicate groups** (the DD side of a verdict): exact copies in the comparison view, and near-copies,
  linked where two points are closer than ``near_ratio`` times the distance to their ``k``-th nearest
  distinct neighbour. The radius is sized against each point's own neighbourhood, so one ratio works on a
  10-d toy, 64-d digits and reduced images alike, in dense and sparse regions; a group is the connected
  component of the links. Chance links need a point's nearest neighbour within ``near_ratio`` of its k-th:
  about k·near_ratio^d of the points on a d-dimensional piece (0.4 % at d = 2 with the defaults; on a 1-d
  piece ~20 %, where near-duplicates are not separable from neighbours by distance alone).
- **spacing**: the median over the training probes of the distance to the nearest other distinct training
  point, in data units. A memorizing denoiser collapses at σ below the spacing, so the default noise
  levels are fixed fractions of it (:data:`SPACING_FRACTIONS`), from the data's own scale.

Distances in the view are rescaled to data units by √(D / F) (exact for differences that are constant over
each averaged block).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from .neighbors import knn
from .probes import InputFn, gather_points
from .remedies.duplicate_groups import DuplicateGroups, find_duplicate_groups
from .views import comparison_view

__all__ = ["DataSurvey", "survey_training_data", "near_duplicate_groups", "sigma_grid", "SPACING_FRACTIONS"]

#: Default noise levels as fractions of the training set's spacing (calibrated on seed 100; BENCHMARKS.md).
SPACING_FRACTIONS: tuple[float, ...] = (0.3, 0.5, 0.8)


@dataclass(frozen=True)
class DataSurvey:
    """What one pass over the training set found.

    Attributes:
        view: ``[N, F]`` every training point in the comparison view (float32, CPU).
        groups: duplicate groups over the N training points.
        spacing: median nearest-distinct-neighbour distance of the probed points, in data units.
        scale: √(D / F), data units per view unit.
    """

    view: Tensor
    groups: DuplicateGroups
    spacing: float
    scale: float


def near_duplicate_groups(view: Tensor, *, near_ratio: float = 0.02, k: int = 10) -> DuplicateGroups:
    """Exact and near-duplicate groups of the points ``view [N, F]``.

    Two points are linked when equal, or when their distance is at most ``near_ratio`` × the smaller of
    their distances to the ``k``-th nearest distinct point (copies merged first). ``near_ratio = 0`` finds
    exact copies only.
    """
    if isinstance(near_ratio, bool) or not isinstance(near_ratio, (int, float)) or not 0 <= near_ratio < 1:
        raise ValueError(f"near_ratio must lie in [0, 1) (0.02: closer than 2% of the local spacing); got {near_ratio!r}.")
    exact = find_duplicate_groups(view)
    if near_ratio == 0 or exact.n_groups < 3:
        return exact
    first = torch.full((exact.n_groups,), view.shape[0], dtype=torch.long)
    first.scatter_reduce_(0, exact.group, torch.arange(view.shape[0]), reduce="amin")
    reps = view[first]
    kk = min(k, exact.n_groups - 1)
    dist, index = knn(reps, None, kk)
    local = dist[:, -1]  # distance to the k-th nearest distinct point
    radius = near_ratio * torch.minimum(local[:, None], local[index])
    close = dist <= radius
    if not bool(close.any()):
        return exact
    rows, cols = torch.nonzero(close, as_tuple=True)
    pairs = torch.stack([rows, index[rows, cols]], 1)
    parent = torch.arange(exact.n_groups)  # union-find over the exact groups, joined by the close pairs
    for a, b in pairs.tolist():  # few pairs: near-copies are rare by construction
        ra, rb = _root(parent, a), _root(parent, b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = torch.tensor([_root(parent, g) for g in range(exact.n_groups)])
    merged = roots[exact.group].float()[:, None]
    return find_duplicate_groups(merged)


def _root(parent: Tensor, i: int) -> int:
    while int(parent[i]) != i:
        i = int(parent[i])
    return i


def sigma_grid(spacing: float, fractions: Sequence[float] = SPACING_FRACTIONS) -> list[float]:
    """The default noise levels: ``fractions`` of the training set's ``spacing`` (largest first is primary)."""
    if not (math.isfinite(spacing) and spacing > 0):
        raise ValueError(f"the training set's spacing must be finite and > 0 to choose noise levels; got {spacing!r} "
                         f"(every point a copy of another?). Pass sigma= explicitly.")
    return [float(f * spacing) for f in sorted(fractions, reverse=True)]


def survey_training_data(data: Tensor | Sequence[Any], probe_index: Tensor, *, input_fn: InputFn | None = None,
                         near_ratio: float = 0.02, batch_size: int = 256) -> DataSurvey:
    """Streams the training set once (in batches, global RNGs preserved) into its comparison view.

    Args:
        data: the training set, a tensor ``[N, ...]`` or a map-style dataset.
        probe_index: ``[P]`` dataset indices of the training probes (whose spacing sets σ).
        input_fn: as for the monitor.
        near_ratio: see :func:`near_duplicate_groups`.
        batch_size: items read per batch.
    """
    n = len(data) if not isinstance(data, Tensor) else data.shape[0]
    parts, ambient = [], None
    for start in range(0, n, batch_size):
        batch = gather_points(data, torch.arange(start, min(start + batch_size, n)), input_fn)
        ambient = batch[0].numel()
        parts.append(comparison_view(batch))
    view = torch.cat(parts)
    scale = math.sqrt(ambient / view.shape[1])
    groups = near_duplicate_groups(view, near_ratio=near_ratio)
    spacing = _probe_spacing(view, groups, probe_index) * scale
    return DataSurvey(view=view, groups=groups, spacing=spacing, scale=scale)


def _probe_spacing(view: Tensor, groups: DuplicateGroups, probe_index: Tensor) -> float:
    """Median over the probes of the distance to the nearest point of another duplicate group (view units)."""
    if groups.n_groups < 2:
        return math.nan
    first = torch.full((groups.n_groups,), view.shape[0], dtype=torch.long)
    first.scatter_reduce_(0, groups.group, torch.arange(view.shape[0]), reduce="amin")
    probe_groups = groups.group[probe_index]
    dist, index = knn(view[first], view[probe_index], 2)
    own = index[:, 0] == probe_groups  # the nearest representative is the probe's own group: take the next
    nearest = torch.where(own, dist[:, 1], dist[:, 0])
    return float(nearest.median())
