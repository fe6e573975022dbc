"""Tests for mmh_train.neighbors: chunked torch kNN against a float64 numpy brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmh_train.neighbors import default_chunk_size, knn, pairwise_sq_dists


def _brute_force(data: torch.Tensor, query: torch.Tensor | None, k: int, exclude_self: bool):
    """Float64 numpy kNN by explicit differences; ties go to the lower index."""
    x = data.reshape(len(data), -1).double().numpy()
    q = x if query is None else query.reshape(len(query), -1).double().numpy()
    d2 = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    if exclude_self:
        np.fill_diagonal(d2, np.inf)
    index = np.argsort(d2, axis=1, kind="stable")[:, :k]
    return np.sqrt(np.take_along_axis(d2, index, 1)), index


def _points(n: int, d: int, dtype: torch.dtype, offset: float = 0.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) + offset).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("offset", [0.0, 50.0])
def test_knn_self_matches_brute_force(dtype, offset):
    x = _points(300, 6, dtype, offset)
    dists, index = knn(x, None, 8, chunk_size=7)
    ref_d, ref_i = _brute_force(x, None, 8, exclude_self=True)
    assert dists.dtype == dtype and index.dtype == torch.long
    assert dists.shape == index.shape == (300, 8)
    np.testing.assert_array_equal(index.numpy(), ref_i)
    tol = 1e-12 if dtype == torch.float64 else 1e-5 * (1 + offset)
    np.testing.assert_allclose(dists.double().numpy(), ref_d, atol=tol, rtol=1e-5)
    assert not (index == torch.arange(300)[:, None]).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_knn_query_matches_brute_force(dtype):
    x, q = _points(200, 4, dtype, seed=1), _points(37, 4, dtype, seed=2)
    dists, index = knn(x, q, 5, chunk_size=3)
    ref_d, ref_i = _brute_force(x, q, 5, exclude_self=False)
    np.testing.assert_array_equal(index.numpy(), ref_i)
    np.testing.assert_allclose(dists.double().numpy(), ref_d, rtol=1e-5, atol=1e-6)


def test_exclude_self_with_query_equals_self_mode():
    x = _points(120, 3, torch.float32)
    d_none, i_none = knn(x, None, 4)
    d_q, i_q = knn(x, x.clone(), 4, exclude_self=True, chunk_size=11)
    assert torch.equal(i_none, i_q) and torch.equal(d_none, d_q)
    # Without exclusion each point is its own nearest neighbour, at distance 0.
    d0, i0 = knn(x, x, 1)
    assert torch.equal(i0[:, 0], torch.arange(120)) and bool((d0 == 0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_duplicates_are_neighbours_at_exactly_zero(dtype):
    x = _points(100, 16, dtype, offset=1000.0)  # a large offset makes the expanded form cancel badly
    x[5] = x[2]
    x[9] = x[2]
    dists, index = knn(x, None, 3, chunk_size=4)
    assert index[2, :2].tolist() == [5, 9] and index[5, :2].tolist() == [2, 9]
    assert index[9, :2].tolist() == [2, 5]
    for row in (2, 5, 9):
        assert dists[row, 0].item() == 0.0 and dists[row, 1].item() == 0.0
        assert dists[row, 2].item() > 0.0
    others = torch.ones(100, dtype=torch.bool)
    others[[2, 5, 9]] = False
    assert bool((dists[others, 0] > 0).all())


def test_ties_broken_by_lower_index():
    data = torch.tensor([[0.0], [1.0], [-1.0], [2.0], [-2.0], [1.0]])
    dists, index = knn(data, None, 2)
    assert index[0].tolist() == [1, 2]  # three candidates (1, 2, 5) at distance 1
    assert dists[0].tolist() == [1.0, 1.0]
    assert index[1].tolist() == [5, 0]  # the copy at distance 0 comes first
    _, index_q = knn(data, torch.tensor([[0.5]]), 3)
    assert index_q[0].tolist() == [0, 1, 5]


def test_many_copies_pick_the_lowest_indices():
    x = _points(80, 5, torch.float32, offset=10.0)
    x[40:70] = x[3]  # 31 equal rows: every one of them has 30 neighbours at distance 0
    dists, index = knn(x, None, 6, chunk_size=9)
    assert index[3].tolist() == list(range(40, 46))
    assert index[50].tolist() == [3] + list(range(40, 45))
    assert bool((dists[40:70] == 0).all())


def test_multi_axis_points_are_flattened():
    x = _points(60, 12, torch.float32).reshape(60, 3, 4)
    d_flat, i_flat = knn(x.reshape(60, -1), None, 5)
    d, i = knn(x, None, 5)
    assert torch.equal(i, i_flat) and torch.equal(d, d_flat)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pairwise_sq_dists(dtype):
    a, b = _points(13, 7, dtype, 30.0, seed=3), _points(17, 7, dtype, 30.0, seed=4)
    b[4] = a[2]
    d2 = pairwise_sq_dists(a, b)
    assert d2.shape == (13, 17) and d2.dtype == dtype
    ref = ((a.double()[:, None] - b.double()[None]) ** 2).sum(-1)
    np.testing.assert_allclose(d2.double().numpy(), ref.numpy(), rtol=1e-5)
    assert d2[2, 4].item() == 0.0 and bool((d2 >= 0).all())
    assert bool((torch.diagonal(pairwise_sq_dists(a, a)) == 0).all())


def test_default_chunk_size_bounds_memory():
    assert default_chunk_size(2**20) * 2**20 <= 2**24
    assert default_chunk_size(10) * 10 <= 2**24 and default_chunk_size(2**30) == 1


def test_bad_inputs_raise_with_the_fix():
    x = _points(10, 3, torch.float32)
    with pytest.raises(ValueError, match=r"k=10 .* only 9 .* pass k ≤ 9"):
        knn(x, None, 10)
    with pytest.raises(ValueError, match="only 10"):
        knn(x, x[:2], 11)
    with pytest.raises(ValueError, match="k must be an integer"):
        knn(x, None, 0)
    with pytest.raises(ValueError, match="chunk_size must be an integer"):
        knn(x, None, 2, chunk_size=0)
    with pytest.raises(ValueError, match="4 features but data points have 3"):
        knn(x, torch.zeros(2, 4), 2)
    with pytest.raises(ValueError, match="one query per data point"):
        knn(x, x[:4], 2, exclude_self=True)
    bad = x.clone()
    bad[7, 1] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or Inf in 1 row\(s\): \[7\]"):
        knn(bad, None, 2)
    with pytest.raises(TypeError, match="dtype torch.int64"):
        knn(torch.zeros(5, 2, dtype=torch.long), None, 2)
    with pytest.raises(ValueError, match="empty batch"):
        knn(torch.zeros(0, 3), None, 1)
    with pytest.raises(ValueError, match="same D"):
        pairwise_sq_dists(x, torch.zeros(2, 5))
