"""Tests for mmh_train.chance against published values and sums written out here."""

from __future__ import annotations

import math

import pytest
import torch

from mmh_train.chance import (benjamini_hochberg, conditional_binomial_pvalue, difference_interval,
                              wilson_interval)


def test_wilson_interval_matches_its_formula_and_edge_values():
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)  # Newcombe (1998), Table I: 0/10
    low, high = wilson_interval(81, 263)  # Newcombe's 81/263: 0.2553 to 0.3662
    assert (low, high) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_difference_interval_matches_newcombe_1998():
    # Newcombe (1998), Table II, method 10: 56/70 − 48/80 = 0.2000, interval 0.0524 to 0.3339.
    assert difference_interval(56, 70, 48, 80) == pytest.approx((0.0524, 0.3339), abs=1e-4)
    # ... and 9/10 − 3/10 = 0.6000, interval 0.1705 to 0.8090.
    assert difference_interval(9, 10, 3, 10) == pytest.approx((0.1705, 0.8090), abs=1e-4)


def test_conditional_binomial_pvalue_is_the_upper_tail():
    count, control, g, m = torch.tensor([0, 3, 7, 12]), torch.tensor([0, 2, 1, 0]), 300, 100
    pi = g / (g + m)

    def tail(c: int, n: int) -> float:
        return sum(math.comb(n, j) * pi ** j * (1 - pi) ** (n - j) for j in range(c, n + 1))

    expected = torch.tensor([tail(int(c), int(c + k)) for c, k in zip(count, control)], dtype=torch.float64)
    p = conditional_binomial_pvalue(count, control, g, m)
    torch.testing.assert_close(p, expected)
    assert p[0] == 1.0 and p.dtype == torch.float64


def test_benjamini_hochberg_step_up():
    p = torch.tensor([0.01, 0.04, 0.03, 0.2, 0.005])
    # sorted 0.005 0.01 0.03 0.04 0.2 against 0.01 0.02 0.03 0.04 0.05 at fdr 0.05: the first four pass
    assert benjamini_hochberg(p, 0.05).tolist() == [True, True, True, False, True]
    # step-up: 0.03 at rank 3 fails its own bound 0.018 at fdr 0.03, but rank 4 (0.04 > 0.024) fails too
    assert benjamini_hochberg(p, 0.03).tolist() == [True, False, False, False, True]
    assert not benjamini_hochberg(torch.rand(100, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.5, 0.05).any()
    with pytest.raises(ValueError, match=r"fdr must be in \(0, 1\)"):
        benjamini_hochberg(p, 0.0)
