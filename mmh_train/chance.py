"""Chance and its control: intervals and tests for counts measured against a control (science.md §7).

Every memorization figure mmh_train prints is a count on the model's samples next to the same count on
data no model produced. These are the small formulas that turn such a pair into an honest statement:

- :func:`wilson_interval`: a binomial proportion's confidence interval (Wilson score);
- :func:`difference_interval`: the interval of a difference of two independent proportions (Newcombe's
  hybrid score interval, his method 10), used for "model rate − control rate";
- :func:`conditional_binomial_pvalue`: one-sided exact p-value that a point attracts more model samples
  than control points, given how many of both landed near it;
- :func:`benjamini_hochberg`: the step-up procedure that turns many p-values into discoveries at a stated
  false-discovery rate.

Counts are small integers; everything here runs in float64 (Python floats, SciPy for the binomial tail).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import torch
from scipy.stats import binom
from torch import Tensor

__all__ = ["wilson_interval", "difference_interval", "conditional_binomial_pvalue", "benjamini_hochberg"]


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence!r}.")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k / n.

        centre = (k + z²/2) / (n + z²),   half = z·√(k(n − k)/n + z²/4) / (n + z²)

    Args:
        successes: k, 0 ≤ k ≤ n.
        trials: n ≥ 1.
        confidence: two-sided level, default 0.95 (z = 1.96).

    Returns:
        ``(low, high)`` within [0, 1]; never degenerate at k = 0 or k = n, unlike the Wald interval.
    """
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 ≤ successes ≤ trials and trials ≥ 1; got {successes} of {trials}.")
    z = _z(confidence)
    k, n = float(successes), float(trials)
    centre = (k + z * z / 2.0) / (n + z * z)
    half = z * math.sqrt(k * (n - k) / n + z * z / 4.0) / (n + z * z)
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(k1: int, n1: int, k2: int, n2: int, confidence: float = 0.95) -> tuple[float, float]:
    """Newcombe's hybrid score interval for p1 − p2 of two independent binomial proportions.

        δ = p̂1 − p̂2,   low = δ − √((p̂1 − l1)² + (u2 − p̂2)²),   high = δ + √((u1 − p̂1)² + (p̂2 − l2)²)

    with (l_i, u_i) the Wilson intervals of each proportion (Newcombe 1998, method 10). Good coverage
    at the small rates and unequal sizes of a model's copy rate against its control's.

    Returns:
        ``(low, high)`` within [−1, 1].
    """
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1, confidence)
    l2, u2 = wilson_interval(k2, n2, confidence)
    delta = p1 - p2
    low = delta - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = delta + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return max(-1.0, low), min(1.0, high)


def conditional_binomial_pvalue(count: Tensor, control_count: Tensor, n_samples: int, n_control: int) -> Tensor:
    """One-sided exact p-value of "more model samples than chance" near each point.

    Under the null the model's samples (G of them) and the control points (M) are draws from one
    distribution, so each of the ``count + control_count`` points that landed near a location is a
    model sample with probability π = G / (G + M), whatever the location's density or dimension:

        p = P(X ≥ count),   X ~ Binomial(count + control_count, π)

    Args:
        count: ``[R]`` integer counts of model samples near each location.
        control_count: ``[R]`` integer counts of control points near the same locations.
        n_samples: G ≥ 1.
        n_control: M ≥ 1.

    Returns:
        ``[R]`` float64 p-values in (0, 1]; 1 where nothing landed.
    """
    c = count.detach().cpu().numpy().astype(np.int64)
    total = c + control_count.detach().cpu().numpy().astype(np.int64)
    pi = n_samples / (n_samples + n_control)
    p = binom.sf(c - 1, total, pi)  # P(X ≥ c) = P(X > c − 1); 1 for c = 0
    return torch.from_numpy(np.clip(p, 0.0, 1.0).astype(np.float64))


def benjamini_hochberg(p_values: Tensor, fdr: float) -> Tensor:
    """Benjamini–Hochberg step-up: which of ``R`` hypotheses to reject at false-discovery rate ``fdr``.

    Sort the p-values p_(1) ≤ … ≤ p_(R); reject the hypotheses of the k* smallest, k* the largest k with
    p_(k) ≤ k·fdr / R. When every null is true this rejects anything with probability ≤ fdr.

    Args:
        p_values: ``[R]`` p-values.
        fdr: level in (0, 1).

    Returns:
        ``[R]`` bool, True where rejected ("discovered").
    """
    if not 0.0 < fdr < 1.0:
        raise ValueError(f"fdr must be in (0, 1), e.g. 0.05; got {fdr!r}.")
    p = p_values.detach().cpu().double()
    r = p.numel()
    out = torch.zeros(r, dtype=torch.bool)
    if r == 0:
        return out
    order = torch.argsort(p, stable=True)
    below = p[order] <= fdr * torch.arange(1, r + 1, dtype=torch.float64) / r
    passing = torch.nonzero(below).flatten()
    if passing.numel():
        out[order[: int(passing.max()) + 1]] = True
    return out
