"""Tests for mmh_train.memorized_points: closed-form cases, no training.

- fresh draws of the toy distribution (a perfect generalizer) flag ≤ 1 % of training points on the 2-d,
  4-d and 8-d pieces alike (the ratio test's chance rate differs by 100× between them);
- samples of the closed-form memorizer (the empirical denoiser, sampled with the ODE) flag ~100 %;
- a partial memorizer flags exactly its memorized subset;
- duplicated rows count as one point; the counts match a brute force; bad inputs fail early;
- the distance test: near-exact copies (5–10 samples within 5 % of the spacing) are flagged with a control
  a tenth of the samples, where the count test alone flags none; fresh draws of pieces of dimension
  1, 2, 4 and 8 stay below 1 % flagged at M = G/10 and M = G.
"""

from __future__ import annotations

import math

import pytest
import torch

import mmh_train
from mmh_train.data import affine_mixture
from mmh_train.memorized_distance import local_dimension
from mmh_train.sampling import sample

PER_POINT = 20  # samples (and control points) per training point


def _toy(n: int, seed: int):
    return affine_mixture(n, dims=(2, 4, 8), ambient_dim=10, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n", [64, 256])
def test_fresh_draws_flag_no_piece(n):
    train = _toy(n, seed=n)
    g = torch.Generator().manual_seed(n + 1)
    fresh = train.spec.sample(PER_POINT * n, generator=g)
    control = train.spec.sample(PER_POINT * n, generator=g).x
    result = mmh_train.memorized_points(fresh.x, train.x, control)
    for piece in range(3):
        on_piece = train.component == piece
        assert result.memorized[on_piece].double().mean() <= 0.01, piece
    # the ratio test on the same fresh draws fires on the 2-d piece far more than on the 8-d one
    copies = mmh_train.detect_copies(fresh.x, train.x)
    assert copies.is_copy[fresh.component == 0].double().mean() > 0.05
    assert copies.is_copy[fresh.component == 2].double().mean() < 0.01


@pytest.mark.parametrize("n", [64, 256])
def test_closed_form_memorizer_flags_almost_every_point(n):
    train = _toy(n, seed=10 + n)
    g = torch.Generator().manual_seed(n + 2)
    samples = sample(mmh_train.MemorizerDenoiser(train.x), (PER_POINT * n, 10), steps=32, sigma_min=0.02,
                     generator=g)
    control = train.spec.sample(PER_POINT * n, generator=g).x
    result = mmh_train.memorized_points(samples, train.x, control)
    assert result.fraction >= 0.97
    assert bool((result.p_value[result.memorized] < 0.05).all())


def test_partial_memorizer_flags_exactly_its_subset():
    n = 128
    train = _toy(n, seed=3)
    g = torch.Generator().manual_seed(4)
    subset = torch.zeros(n, dtype=torch.bool)
    subset[torch.randperm(n, generator=g)[:24]] = True
    members = torch.nonzero(subset).flatten()
    copies = train.x[members.repeat_interleave(PER_POINT)]
    copies = copies + 1e-3 * torch.randn(copies.shape, generator=g, dtype=copies.dtype)
    samples = torch.cat([copies, train.spec.sample(PER_POINT * n, generator=g).x])
    control = train.spec.sample(len(samples), generator=g).x
    result = mmh_train.memorized_points(samples, train.x, control)
    assert torch.equal(result.memorized, subset)


def test_counts_radius_and_expected_match_a_brute_force():
    g = torch.Generator().manual_seed(5)
    train = torch.randn(30, 3, generator=g, dtype=torch.float64)
    samples = torch.cat([train[:10] + 0.01 * torch.randn(10, 3, generator=g, dtype=torch.float64),
                         torch.randn(200, 3, generator=g, dtype=torch.float64)])
    control = torch.randn(100, 3, generator=g, dtype=torch.float64)
    with pytest.warns(UserWarning, match="cannot show memorization"):  # 7 samples a point: too few to flag
        result = mmh_train.memorized_points(samples, train, control, radius_fraction=0.3)
    d = torch.cdist(train, train)
    d.fill_diagonal_(math.inf)
    radius = 0.3 * d.min(1).values
    torch.testing.assert_close(result.radius, radius)
    assert torch.equal(result.count, (torch.cdist(train, samples) < radius[:, None]).sum(1))
    assert torch.equal(result.control_count, (torch.cdist(train, control) < radius[:, None]).sum(1))
    torch.testing.assert_close(result.expected, result.control_count.double() * 210 / 100)
    assert result.n_samples == 210 and result.n_control == 100 and result.radius_fraction == 0.3
    torch.testing.assert_close(result.nearest_ratio, torch.cdist(train, samples).min(1).values / d.min(1).values)


def test_duplicated_rows_count_as_one_point():
    train = _toy(64, seed=6)
    x = torch.cat([train.x, train.x[:5], train.x[:5]])  # rows 64..73 repeat rows 0..4
    g = torch.Generator().manual_seed(7)
    samples = torch.cat([train.x[:5].repeat(PER_POINT, 1), train.spec.sample(PER_POINT * 64, generator=g).x])
    control = train.spec.sample(len(samples), generator=g).x
    result = mmh_train.memorized_points(samples, x, control)
    assert result.memorized.shape == (74,)
    assert torch.equal(result.group[64:69], result.group[:5]) and torch.equal(result.group[69:], result.group[:5])
    assert bool(result.memorized[:5].all()) and bool(result.memorized[64:].all())
    assert int(result.memorized[5:64].sum()) == 0
    assert result.fraction == pytest.approx(5 / 64)  # over distinct points
    assert torch.equal(result.count[64:69], result.count[:5])


def test_too_few_samples_warns_that_the_count_cannot_show_memorization():
    train = _toy(64, seed=8)
    control = train.spec.sample(32, generator=torch.Generator().manual_seed(9)).x
    with pytest.warns(UserWarning, match=r"cannot show memorization.*needs at least \d+ samples"):
        result = mmh_train.memorized_points(train.x[:32], train.x, control, method="count")
    assert not result.memorized.any()
    # one exact copy each of the first 32 points: the distance test flags exactly those
    with pytest.warns(UserWarning, match=r"cannot show memorization.*distance test can still flag"):
        result = mmh_train.memorized_points(train.x[:32], train.x, control)
    assert torch.equal(result.memorized, torch.arange(64) < 32) and not result.by_count.any()
    assert bool((result.nearest_ratio[:32] == 0).all())


def _spacing(x):
    d = torch.cdist(x, x)
    d.fill_diagonal_(math.inf)
    return d.min(1).values


@pytest.mark.parametrize("seed", [0, 1])
def test_distance_test_flags_near_copies_with_a_control_a_tenth_of_the_samples(seed):
    n, n_samples, dim = 100, 3000, 16
    train = affine_mixture(n, dims=(2, 4, 8), ambient_dim=dim, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    spacing = _spacing(train.x)
    copied = torch.arange(n).repeat_interleave(torch.randint(5, 11, (n,), generator=g))  # 5–10 copies a point
    copies = train.x[copied] + 0.01 * spacing[copied, None] * torch.randn(len(copied), dim, generator=g)
    samples = torch.cat([copies, train.spec.sample(n_samples - len(copied), generator=g).x])
    control = train.spec.sample(n_samples // 10, generator=g).x
    near = (torch.cdist(train.x, samples) < 0.05 * spacing[:, None]).sum(1) >= 5
    assert int(near.sum()) >= 85
    # the count test alone is blind here: a point would need 80 samples in its ball
    with pytest.warns(UserWarning, match="needs at least 80 samples"):
        assert not mmh_train.memorized_points(samples, train.x, control, method="count").memorized.any()
    with pytest.warns(UserWarning, match="distance test can still flag near-exact copies"):
        result = mmh_train.memorized_points(samples, train.x, control)
    assert result.memorized[near].double().mean() >= 0.95
    assert bool(result.by_distance[result.memorized].all())


@pytest.mark.parametrize("control_fraction", [0.1, 1.0])
def test_distance_test_stays_calibrated_on_fresh_draws_of_mixed_dimension(control_fraction):
    flagged = total = 0
    for seed in range(5):
        train = affine_mixture(100, dims=(1, 2, 4, 8), ambient_dim=16,
                               generator=torch.Generator().manual_seed(100 + seed))
        g = torch.Generator().manual_seed(200 + seed)
        fresh = train.spec.sample(3000, generator=g).x
        control = train.spec.sample(int(3000 * control_fraction), generator=g).x
        result = mmh_train.memorized_points(fresh, train.x, control, method="distance")
        flagged, total = flagged + int(result.memorized.sum()), total + len(result.memorized)
    assert flagged <= 0.01 * total


def test_local_dimension_is_a_lower_bound_on_a_flat_piece():
    g = torch.Generator().manual_seed(13)
    basis = torch.linalg.qr(torch.randn(8, 3, generator=g, dtype=torch.float64))[0]
    points = (torch.rand(1200, 3, generator=g, dtype=torch.float64) - 0.5) @ basis.T
    dims = local_dimension(points[:200], points[200:])
    assert float((dims > 3).double().mean()) <= 0.1
    assert 1.5 < float(dims.median()) < 3


TRAIN = torch.randn(10, 4, generator=torch.Generator().manual_seed(11))
OTHER = torch.randn(10, 4, generator=torch.Generator().manual_seed(12))


@pytest.mark.parametrize("args, kwargs, error, match", [
    ((OTHER, TRAIN, None), {}, ValueError, r"control is required.*held-out"),
    ((OTHER, TRAIN, TRAIN[:3]), {}, ValueError, r"3 of 3 control points are exact copies of training points"),
    ((OTHER, TRAIN, OTHER[:, :2]), {}, ValueError, r"control points have 2 features"),
    ((OTHER[:, :3], TRAIN, OTHER), {}, ValueError, r"samples points have 3 features"),
    ((OTHER, TRAIN[:1].repeat(3, 1), OTHER), {}, ValueError, r"at least 2 distinct points"),
    ((OTHER, TRAIN, OTHER + 1), {"fdr": 0.0}, ValueError, r"fdr must be in \(0, 1\)"),
    ((OTHER, TRAIN, OTHER + 1), {"min_ratio": 0.5}, ValueError, r"min_ratio must be ≥ 1"),
    ((OTHER, TRAIN, OTHER + 1), {"radius_fraction": 0.5}, ValueError, r"radius_fraction must be in \(0, 0.5\)"),
    ((OTHER.long(), TRAIN, OTHER + 1), {}, TypeError, r"samples has dtype torch.int64"),
    ((OTHER, TRAIN, OTHER + 1), {"method": "ratio"}, ValueError, r"method must be one of"),
])
def test_bad_inputs(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        mmh_train.memorized_points(*args, **kwargs)
