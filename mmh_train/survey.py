"""One pass over the training set before the first check: its comparison view, duplicates and spacing.

What the verdicts need from the data alone (no model):

- **duplicate groups** (the DD side of a verdict): exact copies in the comparison view, and near-copies,
  linked where two points are closer than ``near_ratio`` times the distance to their ``k``-th nearest
  distinct neighbour. The radius is sized against each point's own neighbourhood, so one ratio works on a
  10-d toy, 64-d digits and reduced images alike, in dense and sparse regions; a group is the connected
  component of the links. Chance links need a point's nearest neighbour within ``near_ratio`` of its k-th:
  about k·near_ratio^d of the points on a d-dimensional piece (0.4 % at d = 2 with the defaults; on a 1-d
  piece ~20 %, where near-duplicates are not separable from neighbours by distance alone).
- **spacing** δ: the median over the training probes of the distance to the nearest training point of
  another duplicate group (found in the view, measured on the data). The default noise levels are set so
  that the noise moves a point by a fixed fraction of it: Gaussian noise of level σ in D dimensions moves a
  point by σ√D, so

      σ_s = f_s · δ / √D,   f = :data:`NOISE_FRACTIONS` = √10 · (0.8, 0.5, 0.3) ≈ (2.53, 1.58, 0.95).

  The fractions were calibrated on the 10-d toy mixture (seed 100: single levels 0.3–0.8 × δ ranked the
  memorized points best), where they are the earlier 0.8/0.5/0.3 × δ unchanged; written as the noise's
  length they carry over to images, where a trained but imperfect network shows its fit only at noise that
  leaves the image recognisable. Measured on a 16×16 convolutional UNet (digits, not used to choose them):
  training images separate from held-out ones (AUROC 1.00) at σ ≤ 1 ≈ 0.2·δ, not at 0.8·δ (0.60–0.76);
  the levels above are 0.06–0.16·δ there (BENCHMARKS.md, "Caught in the act").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from .neighbors import knn
from .probes import InputFn, gather_points
from .remedies.duplicate_groups import DuplicateGroups, find_duplicate_groups, first_members, join_groups
from .views import comparison_view

__all__ = ["DataSurvey", "survey_training_data", "near_duplicate_groups", "sigma_grid", "NOISE_FRACTIONS"]

#: Default noise levels: the noise's length σ√D as fractions of the training set's spacing (the 10-d toy's
#: calibrated 0.8/0.5/0.3 × spacing, seed 100, times √10; BENCHMARKS.md).
NOISE_FRACTIONS: tuple[float, ...] = tuple(math.sqrt(10.0) * f for f in (0.3, 0.5, 0.8))


@dataclass(frozen=True)
class DataSurvey:
    """What one pass over the training set found.

    Attributes:
        view: ``[N, F]`` every training point in the comparison view (float32, CPU).
        groups: duplicate groups over the N training points.
        spacing: median distance of the probed points to their nearest point of another group, in data units.
        scale: √(D / F), the ratio of the data's to the view's number of features.
        dim: D, the number of features of one data point (the noise's length is σ√D).
    """

    view: Tensor
    groups: DuplicateGroups
    spacing: float
    scale: float
    dim: int


def near_duplicate_groups(view: Tensor, *, near_ratio: float = 0.02, k: int = 10) -> DuplicateGroups:
    """Exact and near-duplicate groups of the points ``view [N, F]``.

    Two points are linked when equal, or when their distance is at most ``near_ratio`` × the smaller of
    their scales, a point's scale being its distance to the ``k``-th nearest distinct point, floored at a
    tenth of the median scale: a cluster of k or more near-copies would otherwise shrink its own radius to
    nothing and never be linked. ``near_ratio = 0`` finds exact copies only.
    """
    if isinstance(near_ratio, bool) or not isinstance(near_ratio, (int, float)) or not 0 <= near_ratio < 1:
        raise ValueError(f"near_ratio must lie in [0, 1) (0.02: closer than 2% of the local spacing); got {near_ratio!r}.")
    exact = find_duplicate_groups(view)
    if near_ratio == 0 or exact.n_groups < 3:
        return exact
    reps = view[first_members(exact)]
    kk = min(k, exact.n_groups - 1)
    dist, index = knn(reps, None, kk)
    scale = dist[:, -1].clamp(min=0.1 * float(dist[:, -1].median()))
    close = dist <= near_ratio * torch.minimum(scale[:, None], scale[index])
    if not bool(close.any()):
        return exact
    rows, cols = torch.nonzero(close, as_tuple=True)
    first = first_members(exact)  # the pairs link groups: join their first members
    return join_groups(exact, first[rows], first[index[rows, cols]])


def sigma_grid(spacing: float, dim: int, fractions: Sequence[float] = NOISE_FRACTIONS) -> list[float]:
    """The default noise levels σ_s = f_s · spacing / √dim, largest first (the primary level).

    Args:
        spacing: the training set's spacing δ (data units).
        dim: D, the number of features of one point: noise of level σ moves a point by about σ√D.
        fractions: f_s, the noise's length as fractions of δ.
    """
    if not (math.isfinite(spacing) and spacing > 0):
        raise ValueError(f"the training set's spacing must be finite and > 0 to choose noise levels; got {spacing!r} "
                         f"(every point a copy of another?). Pass sigma= explicitly.")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be the number of features of one point (an integer ≥ 1); got {dim!r}.")
    return [float(f * spacing / math.sqrt(dim)) for f in sorted(fractions, reverse=True)]


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
    groups = near_duplicate_groups(view, near_ratio=near_ratio)
    spacing = _probe_spacing(data, view, groups, probe_index, input_fn)
    return DataSurvey(view=view, groups=groups, spacing=spacing, scale=math.sqrt(ambient / view.shape[1]), dim=ambient)


def _probe_spacing(data: Any, view: Tensor, groups: DuplicateGroups, probe_index: Tensor,
                   input_fn: InputFn | None) -> float:
    """Median over the probes of the data-space distance to the nearest point of another duplicate group.

    The neighbour is found in the view; its distance is measured on the data themselves (no assumption on
    how the view scales distances). NaN when every point is in one group.
    """
    if groups.n_groups < 2:
        return math.nan
    largest = int(torch.bincount(groups.group).max())
    k = min(len(groups), largest + 1)
    _, index = knn(view, view[probe_index], k)
    other = groups.group[index] != groups.group[probe_index][:, None]  # the first column is never "other"
    first_other = index.gather(1, other.long().argmax(1, keepdim=True)).squeeze(1)
    probes = gather_points(data, probe_index, input_fn).flatten(1).double()
    neighbours = gather_points(data, first_other, input_fn).flatten(1).double()
    return float((probes - neighbours).norm(dim=1).median())
