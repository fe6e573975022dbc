"""Tests for mmh_train.memorization: the MMH labels rule branch by branch, and the collapse signal."""

from __future__ import annotations

import math

import pytest
import torch

from mmh_train.memorization import (
    DD,
    LABEL_NAMES,
    NONE,
    OD,
    MemorizationLabels,
    classify_memorization,
    collapse_score,
    collapsed,
)

nan = math.nan


def _t(*values: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def test_label_codes():
    assert LABEL_NAMES == ("none", "od", "dd")
    assert (NONE, OD, DD) == (0, 1, 2)


def test_absolute_rule_branches():
    # OD; none (gap = margin, not beyond); none (model above LID*); DD; DD (model at 0.5 + 1.0);
    # none (LID* small but the model reads high)
    model = _t(2.0, 4.0, 6.0, 0.0, 1.5, 3.0)
    ref = _t(5.0, 5.0, 5.0, 0.0, 0.5, 0.2)
    out = classify_memorization(model, ref)
    assert isinstance(out, MemorizationLabels)
    assert out.label.tolist() == [OD, NONE, NONE, DD, DD, NONE]
    assert out.label.dtype == torch.long
    assert out.names == ["od", "none", "none", "dd", "dd", "none"]
    torch.testing.assert_close(out.od_gap, ref - model)
    assert bool(out.measured.all())


def test_absolute_margin_and_dd_threshold_options():
    model, ref = _t(4.5, 0.9), _t(5.0, 0.8)
    assert classify_memorization(model, ref).label.tolist() == [NONE, NONE]  # 0.8 > dd_threshold 0.5
    out = classify_memorization(model, ref, od_margin=0.25, dd_threshold=1.0)
    assert out.label.tolist() == [OD, DD]
    # dd_margin narrows the model's tolerance for DD: 0.9 > 0.8 + 0.05, so not DD.
    assert classify_memorization(model, ref, dd_threshold=0.8, dd_margin=0.05).label.tolist() == [NONE, NONE]
    assert classify_memorization(model, ref, od_margin=0.0).label.tolist() == [OD, NONE]


def test_relative_rule():
    # OD (40% below); none (10% below); DD; none (LID* small, model high); OD at LID* < 1 (33% below)
    model = _t(6.0, 9.0, 0.1, 4.0, 0.6)
    ref = _t(10.0, 10.0, 0.0, 0.3, 0.9)
    out = classify_memorization(model, ref, od_margin=0.25, relative=True)
    assert out.label.tolist() == [OD, NONE, DD, NONE, OD]
    # Gap is relative, with the denominator floored at one dimension.
    torch.testing.assert_close(out.od_gap, _t(0.4, 0.1, -0.1, -3.7, 0.3))
    # DD in relative mode: model tolerance defaults to one dimension above dd_threshold.
    assert classify_memorization(_t(1.4, 1.6), _t(0.0, 0.0), od_margin=0.5, relative=True).label.tolist() == [DD, NONE]


def test_relative_gap_agrees_with_the_rule_for_ref_at_least_one():
    gen = torch.Generator().manual_seed(0)
    ref = 1.0 + 9.0 * torch.rand(500, generator=gen, dtype=torch.float64)
    model = ref * 1.5 * torch.rand(500, generator=gen, dtype=torch.float64)
    out = classify_memorization(model, ref, od_margin=0.3, relative=True)
    assert torch.equal(out.label == OD, out.od_gap > 0.3)


def test_small_reference_but_model_high_is_none():
    out = classify_memorization(_t(3.0, 8.0), _t(0.0, 0.4))
    assert out.label.tolist() == [NONE, NONE]
    assert out.counts() == {"none": 2, "od": 0, "dd": 0}


def test_nan_marks_unmeasured_points():
    model = _t(nan, 1.0, 2.0, 0.0, 7.0)
    ref = _t(5.0, nan, 5.0, 0.0, 7.0)
    out = classify_memorization(model, ref)
    assert out.measured.tolist() == [False, False, True, True, True]
    assert out.label.tolist() == [NONE, NONE, OD, DD, NONE]
    assert torch.isnan(out.od_gap[:2]).all() and not torch.isnan(out.od_gap[2:]).any()
    assert out.n_measured == 3
    assert out.counts() == {"none": 1, "od": 1, "dd": 1}  # unmeasured points are not counted
    assert out.fraction("od") == pytest.approx(1 / 3)
    assert out.fraction("none") == pytest.approx(1 / 3)


def test_every_point_nan_is_an_error():
    with pytest.raises(ValueError, match="every probe is NaN.*check sigma / the model"):
        classify_memorization(_t(nan, 1.0), _t(2.0, nan))


def test_counts_fraction_and_top():
    model = _t(1.0, 5.0, 0.3, 2.0, 0.1, 0.0, 9.0, 3.0)
    ref = _t(6.0, 6.0, 0.0, 8.0, 0.0, 0.0, 9.0, 9.0)
    out = classify_memorization(model, ref)
    # gaps: 5, 1 (none), DD, 6, DD, DD, 0 (none), 6 (OD, ties with index 3)
    assert out.label.tolist() == [OD, NONE, DD, OD, DD, DD, NONE, OD]
    assert out.counts() == {"none": 2, "od": 3, "dd": 3}
    assert sum(out.fraction(name) for name in LABEL_NAMES) == pytest.approx(1.0)
    assert out.top(2).tolist() == [3, 7]           # largest gaps first, ties by index
    assert out.top(10, kind="od").tolist() == [3, 7, 0]
    assert out.top(2, kind="dd").tolist() == [5, 4]  # lowest lid_model first
    assert out.top(1, kind="dd").dtype == torch.long
    assert len(out) == 8


def test_float32_and_mixed_dtypes():
    out = classify_memorization(_t(1.0, 5.0, dtype=torch.float32), _t(4.0, 5.0))
    assert out.od_gap.dtype == torch.float64 and out.label.tolist() == [OD, NONE]


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("model, ref, error, match", [
    ([1.0, 2.0], _t(1.0, 2.0), TypeError, r"lid_model must be a torch.Tensor"),
    (torch.tensor([1, 2]), _t(1.0, 2.0), TypeError, r"floating dtype.*\.float\(\)"),
    (_t(1.0, 2.0).reshape(2, 1), _t(1.0, 2.0), ValueError, r"must be 1-D.*reshape\(-1\)"),
    (_t(), _t(), ValueError, "lid_model is empty"),
    (_t(1.0, 2.0), _t(1.0, 2.0, 3.0), ValueError, r"same points.*\(2,\) and \(3,\)"),
    (_t(1.0, math.inf), _t(1.0, 2.0), ValueError, r"lid_model has ±Inf.*NaN instead"),
    (_t(1.0, 2.0), _t(-math.inf, 2.0), ValueError, r"lid_ref has ±Inf"),
])
def test_bad_lid_vectors(model, ref, error, match):
    with pytest.raises(error, match=match):
        classify_memorization(model, ref)


@pytest.mark.parametrize("options, error, match", [
    ({"od_margin": -0.1}, ValueError, r"od_margin must be finite and ≥ 0"),
    ({"od_margin": math.nan}, ValueError, r"od_margin must be finite"),
    ({"dd_threshold": -1.0}, ValueError, r"dd_threshold must be finite and ≥ 0"),
    ({"dd_margin": -1.0}, ValueError, r"dd_margin must be finite and ≥ 0"),
    ({"od_margin": "1"}, TypeError, r"od_margin must be a number"),
    ({"relative": True}, ValueError, r"relative=True.*in \(0, 1\).*od_margin=0.25"),
    ({"relative": True, "od_margin": 0.0}, ValueError, r"in \(0, 1\)"),
    ({"relative": 1}, TypeError, r"relative must be True or False"),
])
def test_bad_options(options, error, match):
    with pytest.raises(error, match=match):
        classify_memorization(_t(1.0, 2.0), _t(1.0, 2.0), **options)


def test_bad_fraction_and_top_arguments():
    out = classify_memorization(_t(1.0, 2.0), _t(5.0, 2.0))
    with pytest.raises(ValueError, match=r"name='memorized'.*'none', 'od', 'dd'"):
        out.fraction("memorized")
    with pytest.raises(ValueError, match=r"kind='all'.*'od', 'dd'"):
        out.top(3, kind="all")
    with pytest.raises(ValueError, match=r"k must be an integer ≥ 1"):
        out.top(0)


# --------------------------------------------------------------------------- collapse


def test_collapse_score_constant_and_full_drop():
    history = torch.tensor([[4.0, 3.0, 0.2, 5.0],
                            [4.0, 3.0, 0.2, 5.0],
                            [4.0, 1.5, 0.2, 6.0],
                            [4.0, 0.0, 0.0, 7.5]], dtype=torch.float64)
    score = collapse_score(history)
    # constant → 0; 3 → 0 → 1; baseline 0.2 < 1 is floored: drop 0.2 in absolute units; rise → negative.
    torch.testing.assert_close(score, torch.tensor([0.0, 1.0, 0.2, -0.5], dtype=torch.float64))
    assert collapsed(history).tolist() == [False, True, False, False]
    assert collapsed(history, threshold=0.1).tolist() == [False, True, True, False]


def test_collapse_score_skips_nan_gaps():
    history = torch.tensor([[nan, 2.0, nan],
                            [6.0, nan, nan],
                            [nan, 4.0, 1.0],
                            [2.0, 1.0, nan],
                            [nan, nan, 0.0]])
    # col 0: baseline uses its first 2 measured values (6, 2) = 4, no later value → too few.
    # col 1: baseline mean(2, 4) = 3, current 1 → 2/3. col 2: only 2 values → NaN.
    score = collapse_score(history)
    assert math.isnan(score[0]) and math.isnan(score[2])
    assert score[1].item() == pytest.approx(2 / 3)
    torch.testing.assert_close(collapse_score(history, early_checks=1),
                               torch.tensor([(6 - 2) / 6, (2 - 1) / 2, 1.0]))
    assert collapsed(history).tolist() == [False, True, False]
    assert score.dtype == torch.float32


def test_collapse_score_needs_more_checks_than_the_baseline():
    history = torch.tensor([[3.0, 3.0], [0.0, 3.0]])
    assert torch.isnan(collapse_score(history)).all()          # 2 checks, early_checks=2
    assert collapse_score(history, early_checks=1).tolist() == [1.0, 0.0]
    assert collapse_score(torch.full((1, 3), 2.0), early_checks=1).isnan().all()


@pytest.mark.parametrize("history, kwargs, error, match", [
    ([[1.0]], {}, TypeError, r"history must be a torch.Tensor of shape \[C, N\]"),
    (torch.ones(3, 2, dtype=torch.long), {}, TypeError, r"floating dtype.*history.float\(\)"),
    (torch.ones(3), {}, ValueError, r"shape \[C, N\].*history.unsqueeze\(1\)"),
    (torch.ones(0, 3), {}, ValueError, r"C ≥ 1 checks"),
    (torch.tensor([[1.0, math.inf]]), {}, ValueError, r"history has ±Inf"),
    (torch.ones(3, 2), {"early_checks": 0}, ValueError, r"early_checks must be an integer ≥ 1"),
])
def test_collapse_bad_inputs(history, kwargs, error, match):
    with pytest.raises(error, match=match):
        collapse_score(history, **kwargs)


@pytest.mark.parametrize("threshold", [math.nan, math.inf, "0.5", True])
def test_collapsed_bad_threshold(threshold):
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        collapsed(torch.ones(3, 2), threshold=threshold)


def test_detect_dd_false_never_labels_dd():
    labels = classify_memorization(torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.0, 3.0, 3.0]), detect_dd=False)
    assert labels.label.tolist() == [NONE, OD, OD]
