"""Model-free reference LID*: local intrinsic dimension estimated from the data alone.

Three k-nearest-neighbour estimators, each in its own function that reads like its formula:

- ``"lpca"``: local PCA. The covariance of a point's k neighbours (around their mean) has eigenvalues
  λ_1 ≥ … ≥ λ_D; the dimension is #{i : λ_i > α λ_1} (Fukunaga–Olsen, ``variant="fo"``, α = 0.05), or
  the smallest d with (λ_1 + … + λ_d) / Σλ ≥ ``explained`` (``variant="ratio"``).
- ``"mle"``: Levina–Bickel, m(x) = [ (1/(k−1)) Σ_{j<k} log(T_k(x) / T_j(x)) ]⁻¹ with T_j the distance
  to the j-th neighbour.
- ``"twonn"``: local TwoNN. μ_i = r_2(i) / r_1(i) for every data point; LID(x) is the Pareto MLE
  (n − 1) / Σ_{j ∈ {x} ∪ kNN(x)} log μ_j with n = k + 1.

Duplicates are the data-driven memorization case (science.md §4): a point with an exact (or, with
``duplicate_radius > 0``, a near) copy in the data reads LID* = 0. Every other point is estimated on the
de-duplicated data (one representative per duplicate group), so its neighbour distances are distinct
and positive; logs and divisions are guarded besides.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import torch
from torch import Tensor

from .._checks import check_choice, check_points, check_positive_int, check_query
from ..neighbors import _compute_dtype, _knn, _sq_dist_blocks, default_chunk_size

__all__ = ["reference_lid", "local_dimension_methods"]

local_dimension_methods: tuple[str, ...] = ("lpca", "mle", "twonn")

_OPTIONS: dict[str, dict[str, Any]] = {
    "lpca": {"alpha": 0.05, "variant": "fo", "explained": 0.95},
    "mle": {},
    "twonn": {},
}
_LPCA_VARIANTS = ("fo", "ratio")
# Smallest k each method can use: a covariance of one point is 0; the MLE averages over j < k.
_MIN_K = {"lpca": 2, "mle": 2, "twonn": 2}
_BLOCK_BUDGET = 2**24


def reference_lid(data: Tensor, query: Tensor | None = None, *, method: str = "lpca", k: int = 20,
                  duplicate_radius: float = 0.0, **method_options: Any) -> Tensor:
    """Model-free LID* of each point, from its k nearest neighbours in the data.

    Args:
        data: the data set, shape ``[N, ...]`` (points are flattened to ``[N, D]``).
        query: points to estimate at, shape ``[M, ...]``; None estimates at every data point.
        method: one of ``local_dimension_methods``: ``"lpca"``, ``"mle"`` or ``"twonn"``.
        k: number of neighbours (≥ 2, and below the number of distinct data points).
        duplicate_radius: points within this Euclidean distance are copies (0 means exact equality).
            A data point with a copy at another index reads 0; a query reads 0 when ≥ 2 data points
            lie within the radius (one match is the query itself being in the data).
        **method_options: ``"lpca"`` takes ``alpha`` (0.05), ``variant`` (``"fo"`` or ``"ratio"``) and
            ``explained`` (0.95, for ``variant="ratio"``); ``"mle"`` and ``"twonn"`` take none.

    Returns:
        LID* of shape ``[N]`` (query None) or ``[M]``, on ``data``'s device, float64 when the data are
        float64 and float32 otherwise. Duplicates read 0; where an MLE/TwoNN log-sum is 0 (all neighbour
        distances tied) the estimate is unbounded and the ambient dimension D is returned instead.

    Raises:
        TypeError: non-tensor or non-floating points, a non-numeric radius, unknown method options.
        ValueError: empty or non-finite points, mismatched feature counts, bad ``k``, ``method``,
            ``duplicate_radius`` or option values, or too few distinct data points for ``k``.
    """
    check_points(data, "data")
    check_query(query, data)
    check_choice(method, "method", local_dimension_methods)
    check_positive_int(k, "k")
    if k < _MIN_K[method]:
        raise ValueError(f"method={method!r} needs k ≥ {_MIN_K[method]} neighbours; got k={k}. "
                         f"Pass a larger k (e.g. the default k=20).")
    radius = _check_radius(duplicate_radius)
    options = _check_options(method, method_options)
    n = data.shape[0]
    if k >= n:
        raise ValueError(f"k={k} needs at least {k + 1} data points (each point's neighbours exclude "
                         f"itself), but data has only {n}; pass k ≤ {max(n - 1, 1)} or more data.")

    dtype = _compute_dtype(data.dtype)
    x = data.reshape(n, -1).to(dtype)
    q = None if query is None else query.reshape(query.shape[0], -1).to(device=x.device, dtype=dtype)
    has_copy, keep = _duplicate_groups(x, radius)
    reps = x[keep]
    duplicate = has_copy if q is None else _count_within(x, q, radius) >= 2
    lid = torch.zeros(duplicate.shape[0], dtype=dtype, device=x.device)
    todo = torch.nonzero(~duplicate).flatten()
    if todo.numel() == 0:
        return lid
    if k >= reps.shape[0]:
        raise ValueError(f"k={k} needs at least {k + 1} distinct data points, but data has only "
                         f"{reps.shape[0]} after merging copies within duplicate_radius={radius} "
                         f"({n} points in all); pass k ≤ {max(reps.shape[0] - 1, 1)} or more distinct data.")

    all_reps = torch.arange(reps.shape[0], device=x.device)
    if q is None:  # non-duplicate points are their own representatives
        targets = (torch.cumsum(keep, 0) - 1)[todo]
        if method == "twonn":  # every representative's μ is needed, so search from all of them
            rep_dists, rep_index = _knn(reps, reps, k, all_reps)
            dists, index = rep_dists[targets], rep_index[targets]
        else:
            dists, index = _knn(reps, reps[targets], k, targets)
    else:
        dists, index = _query_neighbours(reps, q[todo], k, radius)
        if method == "twonn":
            rep_dists, _ = _knn(reps, reps, 2, all_reps)

    if method == "lpca":
        lid[todo] = _lpca_dimension_blocks(reps, index, **options).to(dtype)
    elif method == "mle":
        lid[todo] = _mle_dimension(dists, ambient=x.shape[1])
    else:
        log_mu = _log_two_nn_ratio(rep_dists[:, :2])
        lid[todo] = _twonn_dimension(_log_two_nn_ratio(dists[:, :2]), log_mu[index], ambient=x.shape[1])
    return lid


# --------------------------------------------------------------------------- estimators


def _lpca_dimension(neighbourhoods: Tensor, alpha: float, variant: str, explained: float) -> Tensor:
    """Local PCA dimension of each neighbourhood ``[B, k, D]`` → long ``[B]``."""
    centred = neighbourhoods - neighbourhoods.mean(1, keepdim=True)
    k, d = centred.shape[1:]
    # The k×k Gram matrix has the same non-zero eigenvalues as the D×D covariance; use the smaller.
    if k <= d:
        scatter = centred @ centred.transpose(1, 2) / k
    else:
        scatter = centred.transpose(1, 2) @ centred / k
    eigenvalues = torch.linalg.eigvalsh(scatter).flip(-1).clamp(min=0.0)  # λ_1 ≥ λ_2 ≥ …
    if variant == "fo":
        return (eigenvalues > alpha * eigenvalues[:, :1]).sum(1)
    total = eigenvalues.sum(1, keepdim=True)
    explained_so_far = eigenvalues.cumsum(1) / total.clamp(min=torch.finfo(total.dtype).tiny)
    dimension = ((explained_so_far < explained).sum(1) + 1).clamp(max=eigenvalues.shape[1])
    return torch.where(total.squeeze(1) > 0, dimension, torch.zeros_like(dimension))


def _lpca_dimension_blocks(points: Tensor, index: Tensor, **options: Any) -> Tensor:
    """:func:`_lpca_dimension` over the neighbourhoods ``points[index]`` (``index [B, k]``), in blocks
    of at most about 2^24 gathered values."""
    block = max(1, _BLOCK_BUDGET // (index.shape[1] * points.shape[1]))
    return torch.cat([_lpca_dimension(points[index[s:s + block]], **options)
                      for s in range(0, index.shape[0], block)])


def _mle_dimension(dists: Tensor, ambient: int) -> Tensor:
    """Levina–Bickel: m = [ (1/(k−1)) Σ_{j<k} log(T_k / T_j) ]⁻¹ from sorted distances ``[B, k]``."""
    log_t = dists.clamp(min=torch.finfo(dists.dtype).tiny).log()
    mean_log_ratio = (log_t[:, -1:] - log_t[:, :-1]).mean(1)
    return _reciprocal_or(mean_log_ratio, ambient)


def _log_two_nn_ratio(two_nearest: Tensor) -> Tensor:
    """log μ = log(r_2 / r_1) ≥ 0 from the two nearest distances ``[B, 2]``."""
    log_r = two_nearest.clamp(min=torch.finfo(two_nearest.dtype).tiny).log()
    return (log_r[:, 1] - log_r[:, 0]).clamp(min=0.0)


def _twonn_dimension(log_mu_self: Tensor, log_mu_neighbours: Tensor, ambient: int) -> Tensor:
    """Pareto MLE over x and its k neighbours: d = (n − 1) / Σ_j log μ_j with n = k + 1.

    ``log_mu_self [B]`` and ``log_mu_neighbours [B, k]``.
    """
    n = log_mu_neighbours.shape[1] + 1
    total = log_mu_self + log_mu_neighbours.sum(1)
    return _reciprocal_or(total / (n - 1), ambient)


def _reciprocal_or(mean_log: Tensor, ambient: int) -> Tensor:
    """1 / mean_log, or the ambient dimension where that is unbounded (mean_log = 0: all ties)."""
    estimate = 1.0 / mean_log
    return torch.where((mean_log > 0) & torch.isfinite(estimate), estimate,
                       torch.full_like(estimate, float(ambient)))


# --------------------------------------------------------------------------- duplicates and neighbours


def _duplicate_groups(x: Tensor, radius: float) -> tuple[Tensor, Tensor]:
    """Copies among the rows of ``x [N, D]``: :func:`~mmh_train.remedies.find_duplicate_groups` at ``radius``.

    Returns ``(has_copy, keep)``, both bool ``[N]``: whether the row's group has another member, and whether
    the row represents its group (its first member). Representatives of different groups are more than
    ``radius`` apart (closer ones would have been linked).
    """
    from ..remedies.duplicate_groups import find_duplicate_groups, first_members  # lid sits below remedies

    groups = find_duplicate_groups(x, radius=radius)
    keep = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    keep[first_members(groups).to(x.device)] = True
    return (groups.size > 1).to(x.device), keep


def _count_within(x: Tensor, q: Tensor, radius: float) -> Tensor:
    """Number of rows of ``x [N, D]`` within ``radius`` of each query ``q [M, D]`` → long ``[M]``."""
    counts = torch.empty(q.shape[0], dtype=torch.long, device=x.device)
    for start, stop, d2 in _sq_dist_blocks(x, q, default_chunk_size(x.shape[0])):
        counts[start:stop] = (d2 <= radius * radius).sum(1)
    return counts


def _query_neighbours(reps: Tensor, q: Tensor, k: int, radius: float) -> tuple[Tensor, Tensor]:
    """k neighbours of non-duplicate queries among the representatives, skipping the (at most one)
    representative within ``radius`` — the query itself when it is a data point."""
    dists, index = _knn(reps, q, k + 1, None)
    is_match = dists <= radius
    position = torch.arange(k + 1, device=q.device)
    order = torch.argsort(is_match.long() * (k + 1) + position, dim=1)[:, :k]
    return dists.gather(1, order), index.gather(1, order)


# --------------------------------------------------------------------------- validation


def _check_radius(radius: Any) -> float:
    if isinstance(radius, bool) or not isinstance(radius, Real):
        raise TypeError(f"duplicate_radius must be a float ≥ 0; got {type(radius).__name__}. "
                        f"Pass 0.0 for exact duplicates only.")
    if not math.isfinite(float(radius)) or radius < 0:
        raise ValueError(f"duplicate_radius must be finite and ≥ 0; got {radius!r}. Pass 0.0 for exact "
                         f"duplicates only, or a small distance below the typical nearest-neighbour gap.")
    return float(radius)


def _check_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    valid = _OPTIONS[method]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        takes = f"its options are {', '.join(map(repr, valid))}" if valid else "it takes no options"
        raise TypeError(f"method={method!r} got unknown option(s) {', '.join(map(repr, unknown))}; {takes}.")
    merged = {**valid, **options}
    if method == "lpca":
        check_choice(merged["variant"], "variant", _LPCA_VARIANTS)
        for name, one_allowed in (("alpha", False), ("explained", True)):
            value = merged[name]
            if (isinstance(value, bool) or not isinstance(value, Real)
                    or not (0 < value < 1 or (one_allowed and value == 1))):
                bound = "≤ 1" if one_allowed else "< 1"
                raise ValueError(f"{name} must be a number with 0 < {name} {bound}; got {value!r} "
                                 f"(default {valid[name]}).")
    return merged
