"""Tests for mmh_train.copies: the nearest-neighbour ratio against a torch.cdist brute force, copy
detection on exact and noisy copies, fresh samples, duplicated training points, the control (chance rate,
excess and its interval) and bad inputs."""

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


def test_copies_are_detected_and_fresh_samples_are_not():
    train = _points(200, 32, 4)
    exact = train[:20]
    noisy = train[20:50] + 1e-3 * _points(30, 32, 5)
    fresh = _points(100, 32, 6)
    report = detect_copies(torch.cat([exact, noisy]), train)
    assert isinstance(report, CopyReport) and report.method == "ratio"
    assert report.copy_rate == 1.0 and bool(report.is_copy.all())
    assert report.nearest.tolist() == list(range(50)) and report.nearest.dtype == torch.long
    assert bool((report.score[:20] == 0).all())  # identical to a training point → score 0
    assert bool((report.nearest_count == 1).all())
    assert detect_copies(fresh, train).copy_rate <= 0.05


def test_default_threshold():
    train = _points(50, 4, 7)
    assert detect_copies(train[:2], train).threshold == pytest.approx(1 / 3)
    assert detect_copies(train[:2], train, threshold=0.1).threshold == 0.1


def test_calibrated_method_is_refused_with_the_reason():
    train = _points(50, 4, 7)
    with pytest.raises(ValueError, match=r"'calibrated' was removed.*57-66 %.*control="):
        detect_copies(train[:2], train, method="calibrated")


def test_copies_of_a_duplicated_training_point_are_still_detected():
    train = _points(100, 16, 8)
    train = torch.cat([train[:40], train[7:8].repeat(5, 1), train[40:]])  # index 7 now has 5 more copies
    generated = torch.stack([train[7], train[7] + 1e-3, train[50] + 1e-3])
    report = detect_copies(generated, train)
    assert report.is_copy.tolist() == [True, True, True]
    assert report.nearest.tolist() == [7, 7, 50]  # index into the original rows, lowest of the group
    assert report.nearest_count.tolist() == [6, 6, 1]
    assert torch.equal(train[report.nearest[0]], train[7])


# --------------------------------------------------------------------------- the control


def _plane_points(n: int, seed: int) -> torch.Tensor:
    """Uniform points on a 2-d square embedded in R^6: a generalizer's chance rate is large there."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.rand(n, 2, generator=g, dtype=torch.float64), torch.zeros(n, 4, dtype=torch.float64)], 1)


def test_control_measures_the_chance_rate_of_a_perfect_generalizer():
    train = _plane_points(100, 20)
    fresh, control = _plane_points(4000, 21), _plane_points(4000, 22)
    report = detect_copies(fresh, train, control=control)
    # On a 2-d piece the ratio test fires by chance about (1/3)^2 ≈ 11 % of the time ...
    assert 0.06 < report.copy_rate < 0.16 and 0.06 < report.control_rate < 0.16
    # ... and the control takes it out: the excess of fresh draws is ~0, inside its interval.
    low, high = report.excess_interval
    assert report.excess_rate == pytest.approx(report.copy_rate - report.control_rate)
    assert low < 0.0 < high and high - low < 0.04
    assert report.n_generated == 4000 and report.n_control == 4000
    assert "control" in report.summary() and "excess" in report.summary()


def test_control_counts_the_same_test():
    train = _plane_points(60, 23)
    control = _plane_points(300, 24)
    report = detect_copies(train[:30] + 1e-6, train, control=control)
    expected = float((_brute_ratio(control, train) < 1 / 3).double().mean())
    assert report.control_rate == pytest.approx(expected)
    assert report.copy_rate == 1.0 and report.excess_rate == pytest.approx(1.0 - expected)
    assert report.excess_interval[0] > 0.5  # copies far above chance


def test_without_a_control_the_report_says_so():
    train = _points(50, 4, 7)
    report = detect_copies(train[:3], train)
    assert report.control_rate is None and report.excess_rate is None and report.excess_interval is None
    assert "no control" in report.summary()


# --------------------------------------------------------------------------- bad inputs

TRAIN = _points(10, 4, 12)


@pytest.mark.parametrize("generated, train, kwargs, error, match", [
    ([[0.0] * 4], TRAIN, {}, TypeError, r"generated must be a torch.Tensor"),
    (TRAIN[:2], TRAIN.long(), {}, TypeError, r"train has dtype torch.int64.*floating"),
    (TRAIN[:0], TRAIN, {}, ValueError, r"generated is an empty batch"),
    (TRAIN[:2], TRAIN[:, :3], {}, ValueError, r"4 features but training points have 3.*same space"),
    (torch.full((2, 4), math.nan), TRAIN, {}, ValueError, r"generated has NaN or Inf in 2 row"),
    (TRAIN[:2], TRAIN[:1].repeat(5, 1), {}, ValueError, r"at least 2 distinct points.*only 1.*5 rows"),
    (TRAIN[:2], TRAIN, {"method": "l2"}, ValueError, r"method='l2'.*\('ratio',\)"),
    (TRAIN[:2], TRAIN, {"threshold": 0.0}, ValueError, r"threshold must be finite and > 0.*default 1/3"),
    (TRAIN[:2], TRAIN, {"threshold": math.nan}, ValueError, r"threshold must be finite"),
    (TRAIN[:2], TRAIN, {"threshold": "1/3"}, TypeError, r"threshold must be a number > 0 or None"),
    (TRAIN[:2], TRAIN, {"control": TRAIN[3:6]}, ValueError, r"3 of 3 control points are exact copies of training"),
    (TRAIN[:2], TRAIN, {"control": TRAIN[:2, :3] + 5}, ValueError, r"control points have 3 features"),
    (TRAIN[:2], TRAIN, {"control": torch.full((2, 4), math.nan)}, ValueError, r"control has NaN or Inf"),
    (TRAIN[:2], TRAIN, {"confidence": 1.0}, ValueError, r"confidence must be in \(0, 1\)"),
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
