"""The distance test of :func:`mmh_train.memorized_points`: do a training point's nearest samples lie closer
to it than chance allows? (science.md §7)

The count test asks whether more samples than control points land in the ball B(x_j, r_j), r_j = ρ·δ_j. It
ignores *where* in the ball they land, so with a small control (M ≈ G/10) it needs dozens of samples before
a count is significant, however exactly they copy x_j. This test asks the other question: given the c_j
samples in the ball, are the nearest of them piled up at its centre?

What it assumes. Near x_j the data distribution is locally uniform on a d_j-dimensional piece at the scale
of the ball (x_j, a draw of it, lies on the piece). If the model generalizes, its samples in the ball are
then c_j independent draws whose normalized distances u = (‖g − x_j‖ / r_j)^{d_j} are Uniform(0, 1), and
the k-th nearest sample's u_(k) ~ Beta(k, c_j − k + 1):

    p_k = P(u_(k) ≤ observed) = P(X ≥ k),   X ~ Binomial(c_j, (t_(k) / r_j)^{d_j}),   k = 1 … K

with t_(k) the distance to the k-th nearest sample (K = ``MAX_RANK`` = 5, or c_j if fewer). The point's
p-value is min(1, K · min_k p_k) (Bonferroni over the ranks scanned), so one exact copy, or (on a piece of
dimension ≥ 2) five samples within a few hundredths of the spacing, are evidence whatever the control's
size. Conditioning on c_j makes the
test indifferent to how much mass the model puts near x_j overall (that is the count test's question);
only the shape of the pile at x_j matters. Positions given the counts are independent of the counts under
the null, so this p-value is independent of the count test's.

How d_j is chosen. The training points other than x_j and the control points are draws of the data
distribution that no model touched. Their k = ``DIMENSION_NEIGHBOURS`` (40) nearest to x_j give the
Levina–Bickel statistic S_j = Σ_{i<k} log(T_k / T_i); under the same local uniformity d·S_j ~ Gamma(k − 1, 1)
exactly, and the test uses the one-sided lower confidence bound

    d_j = Gamma(k − 1, 1).ppf(``DIMENSION_LEVEL`` = 0.05) / S_j        (≈ 0.75 × the MLE at k = 40)

capped at the ambient dimension. A smaller d makes the predicted chance pile larger, so erring low only
costs power (mostly on 1- and 2-dimensional pieces); erring high by a factor f raises a p-value p to about
p^f. The neighbours span a larger scale than the ball's centre; where the data carry noise off their
manifold the dimension grows at small scales and the test is more conservative still. It is blind to
atoms: data that themselves hold near-duplicates at scales far below the neighbours' (quantized values,
repeated images) put chance samples at x_j that no d predicts.

A point's effect must also be large: at the deciding rank k*, k* ≥ ``min_ratio`` × the chance count
c_j · (t_(k*) / r_j)^{d_j}.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.stats import binom, gamma
from torch import Tensor

from .neighbors import _knn

__all__ = ["DIMENSION_NEIGHBOURS", "DIMENSION_LEVEL", "MAX_RANK", "DistanceTest", "local_dimension",
           "distance_test"]

DIMENSION_NEIGHBOURS = 40
DIMENSION_LEVEL = 0.05
MAX_RANK = 5


@dataclass(frozen=True)
class DistanceTest:
    """Per distinct training point (``[R]``, CPU): ``p_value`` float64, ``enough`` bool (the effect-size
    floor at the deciding rank), ``rank`` long (k*, 0 where no sample is in the ball), ``nearest`` float64
    (distance to the nearest sample), ``dimension`` float64 (d_j)."""

    p_value: Tensor
    enough: Tensor
    rank: Tensor
    nearest: Tensor
    dimension: Tensor


def local_dimension(reps: Tensor, control: Tensor, k: int = DIMENSION_NEIGHBOURS,
                    level: float = DIMENSION_LEVEL) -> Tensor:
    """Lower confidence bound of the local dimension at each training point (``[R]`` float64, CPU).

    Args:
        reps: distinct training points ``[R, D]``.
        control: control points ``[M, D]`` (same dtype and device), none equal to a row of ``reps``.
        k: neighbours among the other training points and the control (fewer when fewer exist, ≥ 2).
        level: one-sided level of the bound: P(d_j > true d) = ``level`` under local uniformity.
    """
    pool = torch.cat([reps, control])
    n_reps = reps.shape[0]
    k = min(k, pool.shape[0] - 1)
    t = _knn(pool, reps, k, torch.arange(n_reps, device=reps.device))[0].double().cpu()
    tiny = torch.finfo(torch.float64).tiny
    s = torch.log(t[:, -1:].clamp(min=tiny) / t[:, :-1].clamp(min=tiny)).sum(1)  # d·S ~ Gamma(k − 1, 1)
    bound = float(gamma.ppf(level, k - 1)) / s.clamp(min=tiny)
    return bound.clamp(max=float(reps.shape[1]))


def distance_test(reps: Tensor, samples: Tensor, control: Tensor, radius: Tensor, count: Tensor,
                  min_ratio: float, max_rank: int = MAX_RANK) -> DistanceTest:
    """The distance test of every distinct training point (see the module docstring).

    Args:
        reps: distinct training points ``[R, D]``.
        samples: model samples ``[G, D]``; control: control points ``[M, D]`` (same dtype and device).
        radius: ``[R]`` float64, the ball's radius r_j (< half the spacing).
        count: ``[R]`` long, c_j: samples within ``radius`` (their nearest training point is x_j).
        min_ratio: the least factor by which the pile at the deciding rank must exceed its chance count.
        max_rank: K, the ranks scanned.
    """
    dimension = local_dimension(reps, control)
    ranks = min(max_rank, samples.shape[0])
    t = _knn(samples, reps, ranks, None)[0].double().cpu()  # [R, K] nearest-sample distances
    radius = radius.cpu()
    u = (t / radius[:, None]).pow(dimension[:, None])  # [R, K] P(a null sample in the ball lies this close)
    k = torch.arange(1, ranks + 1, dtype=torch.long)
    n = count.cpu()[:, None].expand_as(t)
    inside = (k[None, :] <= n) & (t < radius[:, None])
    p_k = torch.from_numpy(binom.sf((k - 1).numpy()[None, :], n.numpy(), u.clamp(max=1.0).numpy()))
    p_k = torch.where(inside, p_k.double(), torch.ones_like(p_k, dtype=torch.float64))
    best, arg = p_k.min(1)
    deciding = arg + 1
    chance = n[:, 0].double() * u.gather(1, arg[:, None])[:, 0]
    found = inside.any(1)
    return DistanceTest(p_value=(ranks * best).clamp(max=1.0), rank=torch.where(found, deciding, 0),
                        enough=found & (deciding.double() >= min_ratio * chance), nearest=t[:, 0],
                        dimension=dimension)
