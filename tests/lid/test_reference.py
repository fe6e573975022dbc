"""Tests for the model-free reference LID* (mmh_train.lid.reference)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from mmh_train.lid.reference import local_dimension_methods, reference_lid

METHODS = [("lpca", {}), ("lpca", {"variant": "ratio"}), ("mle", {}), ("twonn", {})]
METHOD_IDS = ["lpca-fo", "lpca-ratio", "mle", "twonn"]


def _subspace(n: int, d: int, ambient: int, seed: int = 0) -> torch.Tensor:
    """Standard Gaussian on a random d-dimensional linear subspace of R^ambient."""
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(ambient, d, generator=g, dtype=torch.float64))
    return (torch.randn(n, d, generator=g, dtype=torch.float64) @ basis.T).float()


def _sphere(n: int, ambient: int, seed: int = 0) -> torch.Tensor:
    """Uniform points on a unit 2-sphere, isometrically placed in R^ambient."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3, generator=g, dtype=torch.float64)
    z = z / z.norm(dim=1, keepdim=True)
    basis, _ = torch.linalg.qr(torch.randn(ambient, 3, generator=g, dtype=torch.float64))
    return (z @ basis.T).float()


MANIFOLDS = {
    "plane-in-R10": (lambda: _subspace(2000, 2, 10), 2),
    "5d-subspace-in-R10": (lambda: _subspace(2000, 5, 10), 5),
    "sphere-in-R3": (lambda: _sphere(2000, 3), 2),
    "sphere-in-R10": (lambda: _sphere(2000, 10), 2),
}


def test_methods_tuple():
    assert local_dimension_methods == ("lpca", "mle", "twonn")


@pytest.mark.parametrize("manifold", list(MANIFOLDS))
@pytest.mark.parametrize(("method", "options"), METHODS, ids=METHOD_IDS)
def test_median_recovers_known_dimension(manifold, method, options):
    make, dim = MANIFOLDS[manifold]
    lid = reference_lid(make(), method=method, **options)
    assert lid.shape == (2000,) and lid.dtype == torch.float32
    assert bool(torch.isfinite(lid).all()) and bool((lid > 0).all())
    tolerance = 0.5 if (method == "lpca" or dim == 2) else 1.0
    assert abs(lid.median().item() - dim) <= tolerance


def test_mle_matches_numpy_formula_with_sklearn_neighbours():
    x = _subspace(400, 3, 8, seed=5).double()
    k = 10
    dists, _ = NearestNeighbors(n_neighbors=k + 1).fit(x.numpy()).kneighbors(x.numpy())
    t = dists[:, 1:]  # drop each point itself
    expected = 1.0 / np.mean(np.log(t[:, -1:] / t[:, :-1]), axis=1)
    np.testing.assert_allclose(reference_lid(x, method="mle", k=k).numpy(), expected, rtol=1e-9)


def test_lpca_and_twonn_match_numpy_formulas():
    x = _subspace(300, 3, 6, seed=6).double()
    k = 8
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(x.numpy()).kneighbors(x.numpy())
    dist, _ = NearestNeighbors(n_neighbors=3).fit(x.numpy()).kneighbors(x.numpy())
    xn, nb = x.numpy(), idx[:, 1:]
    eig = np.stack([np.linalg.eigvalsh(np.cov(xn[row].T, bias=True))[::-1] for row in nb])
    np.testing.assert_array_equal(reference_lid(x, method="lpca", k=k, alpha=0.05).numpy(),
                                  (eig > 0.05 * eig[:, :1]).sum(1))
    log_mu = np.log(dist[:, 2] / dist[:, 1])
    expected = k / (log_mu + log_mu[nb].sum(1))
    np.testing.assert_allclose(reference_lid(x, method="twonn", k=k).numpy(), expected, rtol=1e-9)


@pytest.mark.parametrize(("method", "options"), METHODS, ids=METHOD_IDS)
def test_exact_duplicates_read_zero_and_leave_others_unaffected(method, options):
    x = _subspace(500, 2, 10, seed=1)
    data = torch.cat([x, x[:20], x[:5], x[7:8]])  # 20 points copied, 5 of them twice, x[7] three times
    lid = reference_lid(data, method=method, k=15, **options)
    copied = torch.zeros(len(data), dtype=torch.bool)
    copied[:20] = True
    copied[500:] = True
    assert bool((lid[copied] == 0).all())
    assert bool(torch.isfinite(lid).all()) and bool((lid[~copied] > 0).all())
    # Everyone else reads what they read on the de-duplicated data.
    dedup = reference_lid(x, method=method, k=15, **options)
    torch.testing.assert_close(lid[20:500], dedup[20:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("method", "options"), METHODS, ids=METHOD_IDS)
def test_near_duplicates_read_zero_with_a_radius(method, options):
    g = torch.Generator().manual_seed(2)
    x = _subspace(400, 2, 10, seed=2)
    data = torch.cat([x, x[:30] + 1e-5 * torch.randn(30, 10, generator=g)])
    lid = reference_lid(data, method=method, k=12, duplicate_radius=1e-3, **options)
    near = torch.zeros(len(data), dtype=torch.bool)
    near[:30] = True
    near[400:] = True
    assert bool((lid[near] == 0).all()) and bool((lid[~near] > 0).all())
    # Without the radius nothing crashes or overflows.
    assert bool(torch.isfinite(reference_lid(data, method=method, k=12, **options)).all())


def test_signed_zeros_are_copies():
    x = _subspace(50, 2, 3, seed=4)
    data = torch.cat([x, torch.zeros(1, 3), -torch.zeros(1, 3)])
    lid = reference_lid(data, method="mle", k=5)
    assert lid[50:].tolist() == [0.0, 0.0] and bool((lid[:50] > 0).all())


def test_all_points_duplicated_reads_zero():
    x = _subspace(10, 2, 4)
    lid = reference_lid(torch.cat([x, x]), method="mle", k=5)
    assert torch.equal(lid, torch.zeros(20))


@pytest.mark.parametrize(("method", "options"), METHODS, ids=METHOD_IDS)
def test_query_mode(method, options):
    x = _subspace(600, 2, 10, seed=3)
    data = torch.cat([x, x[:10]])  # x[:10] have copies
    # Querying the data itself gives the same answer as query=None.
    torch.testing.assert_close(reference_lid(data, data, method=method, k=12, **options),
                               reference_lid(data, method=method, k=12, **options), rtol=1e-5, atol=1e-5)
    fresh = _subspace(700, 2, 10, seed=3)[600:]  # same plane (the seed fixes the basis), new points
    query = torch.cat([x[:3], x[50:53], fresh]).reshape(-1, 2, 5)  # any shape with D features
    lid = reference_lid(data, query, method=method, k=12, **options)
    assert lid.shape == (106,) and bool(torch.isfinite(lid).all())
    assert bool((lid[:3] == 0).all()) and bool((lid[3:] > 0).all())
    assert abs(lid[6:].median().item() - 2) <= 0.5


@pytest.mark.parametrize("method", local_dimension_methods)
def test_dtypes(method):
    x = _subspace(300, 2, 5)
    out64 = reference_lid(x.double(), method=method, k=10)
    assert out64.dtype == torch.float64
    assert reference_lid(x, method=method, k=10).dtype == torch.float32
    assert reference_lid(x.half(), method=method, k=10).dtype == torch.float32
    assert reference_lid(x.double(), x[:4].double(), method=method, k=10).dtype == torch.float64


def test_tied_distances_fall_back_to_the_ambient_dimension():
    # The origin's six neighbours ±e_i are all at distance 1: the MLE log-sum is 0 (unbounded).
    eye = torch.eye(3)
    data = torch.cat([torch.zeros(1, 3), eye, -eye])
    lid = reference_lid(data, method="mle", k=6)
    assert lid[0].item() == 3.0 and bool(torch.isfinite(lid).all())
    assert bool(torch.isfinite(reference_lid(data, method="twonn", k=6)).all())


def test_bad_inputs_raise_with_the_fix():
    x = _subspace(30, 2, 4)
    bad = x.clone()
    bad[3, 0] = float("inf")
    with pytest.raises(ValueError, match=r"data has NaN or Inf in 1 row\(s\): \[3\]"):
        reference_lid(bad)
    with pytest.raises(ValueError, match=r"query has NaN or Inf in 1 row\(s\): \[3\]"):
        reference_lid(x, bad, k=5)
    with pytest.raises(TypeError, match="floating dtype"):
        reference_lid(torch.ones(30, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="empty batch"):
        reference_lid(torch.zeros(0, 4))
    with pytest.raises(ValueError, match="query points have 5 features but data points have 4"):
        reference_lid(x, torch.zeros(2, 5), k=5)
    with pytest.raises(ValueError, match="k must be an integer ≥ 1"):
        reference_lid(x, k=0)
    with pytest.raises(ValueError, match="k must be an integer ≥ 1"):
        reference_lid(x, k=2.5)
    with pytest.raises(ValueError, match=r"k=30 needs at least 31 data points.*only 30; pass k ≤ 29"):
        reference_lid(x, k=30)
    with pytest.raises(ValueError, match=r"only 12 after merging copies.*pass k ≤ 11"):
        reference_lid(torch.cat([x[:10]] * 3 + [x[10:12]]), k=15)
    with pytest.raises(ValueError, match="method='pca' is not supported; choose one of 'lpca', 'mle'"):
        reference_lid(x, method="pca")
    for method in local_dimension_methods:
        with pytest.raises(ValueError, match=rf"method='{method}' needs k ≥ 2"):
            reference_lid(x, method=method, k=1)
    for radius in (-0.1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="duplicate_radius must be finite and ≥ 0"):
            reference_lid(x, k=5, duplicate_radius=radius)
    with pytest.raises(TypeError, match="duplicate_radius must be a float"):
        reference_lid(x, k=5, duplicate_radius="0.1")
    with pytest.raises(TypeError, match=r"method='mle' got unknown option\(s\) 'alpha'; it takes no options"):
        reference_lid(x, method="mle", k=5, alpha=0.1)
    with pytest.raises(TypeError, match=r"option\(s\) 'treshold'; its options are 'alpha', 'variant'"):
        reference_lid(x, method="lpca", k=5, treshold=0.1)
    with pytest.raises(ValueError, match="variant='mle' is not supported; choose one of 'fo', 'ratio'"):
        reference_lid(x, k=5, variant="mle")
    with pytest.raises(ValueError, match="alpha must be a number with 0 < alpha < 1"):
        reference_lid(x, k=5, alpha=1.5)
    with pytest.raises(ValueError, match="explained must be a number with 0 < explained ≤ 1"):
        reference_lid(x, k=5, variant="ratio", explained=0.0)
