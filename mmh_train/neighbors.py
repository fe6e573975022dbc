"""Exact k-nearest neighbours in torch, chunked over queries.

Distances are computed on whatever device the data are on (GPU when the data are there), a block of
queries at a time so that a block holds at most about 2^24 distances. Squared distances use the
expanded form ``‖a‖² + ‖b‖² − 2 a·b`` on centred points; pairs that come out small relative to the
norms (where that form cancels badly) are recomputed from exact differences, so identical rows always
read distance exactly 0. The distances ``knn`` returns are recomputed from exact differences too, so
near neighbours keep their precision and tied distances are broken by index.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor

from ._checks import check_points, check_positive_int, check_query

__all__ = ["pairwise_sq_dists", "knn", "default_chunk_size"]

# A block of queries holds at most this many distances (64 MiB in float32).
_BLOCK_BUDGET = 2**24
# Squared distances below tol·(‖a‖² + ‖b‖²) (after centring) are recomputed from exact differences.
# The expanded form errs by about D·eps·(‖a‖² + ‖b‖²) at worst; these bounds leave a wide margin.
_RECOMPUTE_TOL = {torch.float32: 1e-3, torch.float64: 1e-9}


def default_chunk_size(n_data: int) -> int:
    """Number of queries per block so that a block of ``chunk × n_data`` distances stays ≤ 2^24."""
    return max(1, _BLOCK_BUDGET // max(1, n_data))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@contextmanager
def _full_precision_matmul() -> Iterator[None]:
    """Disables TF32/bf16 float32 matmuls for the duration (their error would swamp small distances)."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _sq_dists_centred(a: Tensor, b: Tensor, centre: Tensor, b_c: Tensor, b_sqnorm: Tensor) -> Tensor:
    """Squared distances ``[M, N]`` between the rows of ``a [M, D]`` and ``b [N, D]``.

    ``b_c = b − centre`` and ``b_sqnorm = (b_c * b_c).sum(1)`` are precomputed. The expanded form runs on
    centred points; small entries are recomputed from exact differences of the *uncentred* points, so
    whether a distance is exactly 0 never depends on the centre.
    """
    a_c = a - centre
    a_sqnorm = (a_c * a_c).sum(1)
    d2 = torch.addmm(b_sqnorm.unsqueeze(0), a_c, b_c.T, beta=1.0, alpha=-2.0)
    del a_c
    d2.add_(a_sqnorm.unsqueeze(1))
    scale = a_sqnorm.unsqueeze(1) + b_sqnorm.unsqueeze(0)
    suspect = d2 <= scale.mul_(_RECOMPUTE_TOL[a.dtype])
    del scale
    rows, cols = torch.nonzero(suspect, as_tuple=True)
    step = max(1, _BLOCK_BUDGET // a.shape[1])
    for start in range(0, rows.numel(), step):
        r, c = rows[start:start + step], cols[start:start + step]
        d2[r, c] = (a[r] - b[c]).square().sum(1)
    return d2.clamp_(min=0.0)


def pairwise_sq_dists(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distances between two sets of points.

    Computed in float64 when either input is float64, else in float32, on ``a``'s device. Identical
    rows give exactly 0, and every entry is ≥ 0.

    Args:
        a: points, shape ``[M, D]``.
        b: points, shape ``[N, D]``.

    Returns:
        Tensor ``[M, N]`` with ``out[i, j] = ‖a[i] − b[j]‖²``.

    Raises:
        TypeError / ValueError: non-floating, empty, non-finite inputs or mismatched feature counts.
    """
    check_points(a, "a")
    check_points(b, "b")
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have shapes [M, D] and [N, D] with the same D; got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}. Flatten points with x.reshape(len(x), -1).")
    dtype = _compute_dtype(torch.promote_types(a.dtype, b.dtype))
    a, b = a.to(dtype), b.to(device=a.device, dtype=dtype)
    centre = b.mean(0)
    b_c = b - centre
    with _full_precision_matmul():
        return _sq_dists_centred(a, b, centre, b_c, (b_c * b_c).sum(1))


def _sq_dist_blocks(data: Tensor, query: Tensor, chunk_size: int) -> Iterator[tuple[int, int, Tensor]]:
    """Yields ``(start, stop, d2)`` with ``d2 [stop − start, N]`` the squared distances from
    ``query[start:stop]`` to all of ``data``. Both are ``[·, D]`` in the same dtype and device."""
    centre = data.mean(0)
    data_c = data - centre
    data_sqnorm = (data_c * data_c).sum(1)
    with _full_precision_matmul():
        for start in range(0, query.shape[0], chunk_size):
            stop = min(start + chunk_size, query.shape[0])
            yield start, stop, _sq_dists_centred(query[start:stop], data, centre, data_c, data_sqnorm)


def _smallest_k(d2: Tensor, k: int, query: Tensor, data: Tensor) -> tuple[Tensor, Tensor]:
    """The ``k`` nearest data points of each query in a block, ordered by (distance, index).

    ``d2 [B, N]`` holds the (expanded-form) squared distances from ``query [B, D]`` to ``data [N, D]``,
    with ``inf`` at excluded entries. A window of a few more than k candidates is taken from ``d2``;
    their squared distances are recomputed from exact differences (so ties in the data are ties here,
    and near neighbours are accurate), and the k smallest by (exact value, index) are returned.
    """
    n = d2.shape[1]
    window = min(k + max(4, k // 4), n)
    values, index = torch.topk(d2, min(window + 1, n), dim=1, largest=False, sorted=True)
    if window < n:
        # Rows whose tie at the window's last value runs past the window (e.g. many exact copies)
        # may hold the wrong members of the tie: sort them fully.
        crowded = torch.nonzero(values[:, window] <= values[:, window - 1]).flatten()
        values, index = values[:, :window], index[:, :window]
        if crowded.numel() > 0:
            full_values, full_index = torch.sort(d2[crowded], dim=1, stable=True)
            values[crowded], index[crowded] = full_values[:, :window], full_index[:, :window]
    rows = max(1, _BLOCK_BUDGET // (window * data.shape[1]))
    exact = torch.cat([(query[s:s + rows, None, :] - data[index[s:s + rows]]).square().sum(2)
                       for s in range(0, index.shape[0], rows)])
    exact = torch.where(torch.isfinite(values), exact, values)  # excluded entries stay inf
    # Order by index, then stably by exact value: ties read lower index first.
    by_index = torch.argsort(index, dim=1)
    index, exact = index.gather(1, by_index), exact.gather(1, by_index)
    exact, by_value = torch.sort(exact, dim=1, stable=True)
    return exact[:, :k], index.gather(1, by_value)[:, :k]


def _knn(data: Tensor, query: Tensor, k: int, exclude_index: Tensor | None,
         chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """kNN of ``query [M, D]`` among ``data [N, D]`` (validated, same dtype/device, k ≤ available).

    ``exclude_index [M]`` (or None) names, per query, one data index that may not be a neighbour
    (−1 for none). Returns distances ``[M, k]`` and long indices ``[M, k]``.
    """
    chunk = chunk_size or default_chunk_size(data.shape[0])
    dists = torch.empty(query.shape[0], k, dtype=data.dtype, device=data.device)
    index = torch.empty(query.shape[0], k, dtype=torch.long, device=data.device)
    for start, stop, d2 in _sq_dist_blocks(data, query, chunk):
        if exclude_index is not None:
            excl = exclude_index[start:stop]
            rows = torch.nonzero(excl >= 0).flatten()
            d2[rows, excl[rows]] = float("inf")
        values, index[start:stop] = _smallest_k(d2, k, query[start:stop], data)
        dists[start:stop] = values.sqrt()
    return dists, index


def knn(data: Tensor, query: Tensor | None, k: int, *, exclude_self: bool | None = None,
        chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Exact k nearest neighbours (Euclidean) of each query among the data.

    Points are flattened to ``[N, D]``. Work happens on ``data``'s device (the query is moved there),
    in float64 when the data are float64, else float32. Ties are broken by lower data index first.

    Args:
        data: the points searched, shape ``[N, ...]``.
        query: the points whose neighbours are wanted, shape ``[M, ...]``; None means the data itself.
        k: number of neighbours, 1 ≤ k ≤ number of candidate data points.
        exclude_self: whether query ``i`` may not have data index ``i`` as a neighbour. Exclusion is by
            index, not by distance: an exact duplicate at another index is a neighbour at distance 0.
            Defaults to True when ``query`` is None and False otherwise; True with a query needs M = N.
        chunk_size: number of queries per block; None keeps each block at ≤ 2^24 distances.

    Returns:
        ``(distances, indices)``: ``[M, k]`` distances (not squared) in increasing order and
        ``[M, k]`` long indices into ``data``.

    Raises:
        TypeError / ValueError: bad points (see ``check_points``), mismatched feature counts, bad ``k``
            or ``chunk_size``, or ``k`` larger than the number of available neighbours.
    """
    check_points(data, "data")
    check_query(query, data)
    check_positive_int(k, "k")
    check_positive_int(chunk_size, "chunk_size", allow_none=True)
    n = data.shape[0]
    if exclude_self is None:
        exclude_self = query is None
    if exclude_self and query is not None and query.shape[0] != n:
        raise ValueError(f"exclude_self=True with a query needs one query per data point (query i is "
                         f"data point i); got {query.shape[0]} queries for {n} data points. "
                         f"Pass exclude_self=False.")
    available = n - 1 if exclude_self else n
    if k > available:
        raise ValueError(f"k={k} neighbours requested but only {available} data point(s) are available "
                         f"as neighbours (N={n}{', each point excluding itself' if exclude_self else ''}); "
                         f"pass k ≤ {max(available, 1)} or more data.")
    dtype = _compute_dtype(data.dtype)
    x = data.reshape(n, -1).to(dtype)
    q = x if query is None else query.reshape(query.shape[0], -1).to(device=x.device, dtype=dtype)
    exclude = torch.arange(n, device=x.device) if exclude_self else None
    return _knn(x, q, k, exclude, chunk_size)
