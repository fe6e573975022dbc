"""Tests for mmh_train.copies: the nearest-neighbour ratio against a torch.cdist brute force, copy
detection on exact and noisy copies, fresh samples, duplicated training points, and bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

from mmh_train.copies import CopyReport, detect_copies, nearest_neighbour_ratio


def _points(n: int, d: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _brute_ratio(generated: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(generated.reshape(len(generated), -1).double(), train.reshape(len(train), -1).double())
    two = d.topk(2, dim=1, largest=False).values
    return two[:, 0] / two[:, 1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ratio_matches_brute_force(dtype):
    train, generated = _points(150, 8, 0, dtype), _points(40, 8, 1, dtype)
    ratio = nearest_neighbour_ratio(generated, train)
    assert ratio.shape == (40,) and ratio.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(ratio.double(), _brute_ratio(generated, train), atol=tol, rtol=tol)
    # Image-shaped points are flattened.
    images = nearest_neighbour_ratio(generated.reshape(40, 2, 2, 2), train.reshape(150, 2, 2, 2))
    torch.testing.assert_close(images, ratio)


def test_ratio_deduplicates_the_training_set():
    train = _points(60, 5, 2, torch.float64)
    with_dupes = torch.cat([train, train[:10], train[:3]])
    generated = torch.cat([train[:5] + 1e-3, _points(10, 5, 3, torch.float64)])
    expected = _brute_ratio(generated, train)
    torch.testing.assert_close(nearest_neighbour_ratio(generated, with_dupes), expected)
    # Without de-duplication a near copy of a duplicated point reads ≈ 1: the copy would be hidden.
    raw = nearest_neighbour_ratio(generated, with_dupes, deduplicate=False)
    torch.testing.assert_close(raw, _brute_ratio(generated, with_dupes))
    assert bool((raw[:3] == 1).all()) and bool((expected[:3] < 0.01).all())


@pytest.mark.parametrize("method", ["ratio", "calibrated"])
def test_copies_are_detected_and_fresh_samples_are_not(method):
    train = _points(200, 32, 4)
    exact = train[:20]
    noisy = train[20:50] + 1e-3 * _points(30, 32, 5)
    fresh = _points(100, 32, 6)
    report = detect_copies(torch.cat([exact, noisy]), train, method=method)
    assert isinstance(report, CopyReport) and report.method == method
    assert report.copy_rate == 1.0 and bool(report.is_copy.all())
    assert report.nearest.tolist() == list(range(50)) and report.nearest.dtype == torch.long
    assert bool((report.score[:20] == 0).all())  # identical to a training point → score 0
    assert bool((report.nearest_count == 1).all())
    assert detect_copies(fresh, train, method=method).copy_rate <= 0.05


def test_default_thresholds_per_method():
    train = _points(50, 4, 7)
    assert detect_copies(train[:2], train).threshold == pytest.approx(1 / 3)
    assert detect_copies(train[:2], train, method="calibrated").threshold == pytest.approx(0.8)
    assert detect_copies(train[:2], train, threshold=0.1).threshold == 0.1


def test_copies_of_a_duplicated_training_point_are_still_detected():
    train = _points(100, 16, 8)
    train = torch.cat([train[:40], train[7:8].repeat(5, 1), train[40:]])  # index 7 now has 5 more copies
    generated = torch.stack([train[7], train[7] + 1e-3, train[50] + 1e-3])
    for method in ("ratio", "calibrated"):
        report = detect_copies(generated, train, method=method)
        assert report.is_copy.tolist() == [True, True, True]
        assert report.nearest.tolist() == [7, 7, 50]  # index into the original rows, lowest of the group
        assert report.nearest_count.tolist() == [6, 6, 1]
        assert torch.equal(train[report.nearest[0]], train[7])


def test_calibrated_score_matches_its_definition():
    train, generated = _points(80, 6, 9, torch.float64), _points(12, 6, 10, torch.float64)
    k = 4
    report = detect_copies(generated, train, method="calibrated", calibration_k=k)
    d = torch.cdist(generated, train)
    nn1 = d.argmin(1)
    own = torch.cdist(train[nn1], train)
    own[torch.arange(12), nn1] = math.inf  # NN1 is not its own neighbour
    scale = own.topk(k, dim=1, largest=False).values.mean(1)
    torch.testing.assert_close(report.score, d.min(1).values / scale)
    assert torch.equal(report.nearest, nn1)
    assert torch.equal(report.is_copy, report.score < 0.8)


def test_calibrated_scale_ignores_duplicates_of_nn1():
    train = _points(40, 6, 11, torch.float64)
    generated = train[3:4] + 0.05
    base = detect_copies(generated, train, method="calibrated")
    duplicated = detect_copies(generated, torch.cat([train, train[3:4].repeat(3, 1)]), method="calibrated")
    torch.testing.assert_close(duplicated.score, base.score)  # duplicates at distance 0 don't shrink the scale


# --------------------------------------------------------------------------- bad inputs

TRAIN = _points(10, 4, 12)


@pytest.mark.parametrize("generated, train, kwargs, error, match", [
    ([[0.0] * 4], TRAIN, {}, TypeError, r"generated must be a torch.Tensor"),
    (TRAIN[:2], TRAIN.long(), {}, TypeError, r"train has dtype torch.int64.*floating"),
    (TRAIN[:0], TRAIN, {}, ValueError, r"generated is an empty batch"),
    (TRAIN[:2], TRAIN[:, :3], {}, ValueError, r"4 features but training points have 3.*same space"),
    (torch.full((2, 4), math.nan), TRAIN, {}, ValueError, r"generated has NaN or Inf in 2 row"),
    (TRAIN[:2], TRAIN[:1].repeat(5, 1), {}, ValueError, r"at least 2 distinct points.*only 1.*5 rows"),
    (TRAIN[:2], TRAIN[:4], {"method": "calibrated"}, ValueError, r"at least 6 distinct.*calibration_k=5"),
    (TRAIN[:2], TRAIN, {"method": "l2"}, ValueError, r"method='l2'.*'ratio', 'calibrated'"),
    (TRAIN[:2], TRAIN, {"threshold": 0.0}, ValueError, r"threshold must be finite and > 0.*0.3333"),
    (TRAIN[:2], TRAIN, {"threshold": math.nan}, ValueError, r"threshold must be finite"),
    (TRAIN[:2], TRAIN, {"threshold": "1/3"}, TypeError, r"threshold must be a number > 0 or None"),
    (TRAIN[:2], TRAIN, {"calibration_k": 0}, ValueError, r"calibration_k must be an integer ≥ 1"),
])
def test_detect_copies_bad_inputs(generated, train, kwargs, error, match):
    with pytest.raises(error, match=match):
        detect_copies(generated, train, **kwargs)


def test_ratio_bad_inputs():
    with pytest.raises(ValueError, match=r"at least 2 distinct points"):
        nearest_neighbour_ratio(TRAIN[:2], TRAIN[:1].repeat(3, 1))
    with pytest.raises(ValueError, match=r"at least 2 points for a second nearest neighbour"):
        nearest_neighbour_ratio(TRAIN[:2], TRAIN[:1], deduplicate=False)
    with pytest.raises(ValueError, match=r"train has NaN or Inf"):
        nearest_neighbour_ratio(TRAIN[:2], torch.full((3, 4), math.inf))
