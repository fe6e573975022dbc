"""The benchmark harness's ranking metrics against scikit-learn and SciPy, ties included."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import rankdata, spearmanr
from sklearn.metrics import roc_auc_score, roc_curve

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import _harness as H  # noqa: E402


@pytest.mark.parametrize("seed", range(20))
def test_ranks_auroc_spearman_and_tpr_match_the_reference_implementations_with_ties(seed):
    rng = np.random.default_rng(seed)
    score = rng.integers(0, 30, size=40).astype(float)  # some values tied, others not
    other = rng.integers(0, 4, size=40).astype(float)
    positive = rng.random(40) < 0.4
    positive[:2] = [True, False]  # both classes present
    t = torch.from_numpy
    np.testing.assert_allclose(H._average_ranks(t(score)).numpy(), rankdata(score))
    assert H.auroc(t(score), t(positive)) == pytest.approx(roc_auc_score(positive, score))
    assert H.spearman(t(score), t(other)) == pytest.approx(spearmanr(score, other).statistic)
    continuous = score + rng.random(40)  # TPR at ≤ 10 % FPR: the best ROC point within the limit
    fpr, tpr, _ = roc_curve(positive, continuous)
    assert H.tpr_at_fpr(t(continuous), t(positive), 0.1) == pytest.approx(tpr[fpr <= 0.1].max())


def test_metrics_are_nan_without_both_classes_and_for_a_constant_side():
    x = torch.arange(5.0)
    assert np.isnan(H.auroc(x, torch.ones(5, dtype=torch.bool)))
    assert np.isnan(H.tpr_at_fpr(x, torch.zeros(5, dtype=torch.bool)))
    assert np.isnan(H.spearman(x, torch.ones(5)))
