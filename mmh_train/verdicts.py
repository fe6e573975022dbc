"""Per-point memorization verdicts calibrated against held-out points (science.md §1 and §7).

Held-out points are not memorized by construction, so the LID_θ a model reads on held-out points near a
training point is that point's null: it brings the data set's dimension, the network's bias and the
estimator's noise with it, on every data set. For each training probe i and noise level σ_s:

    m_s(i)    = mean LID_θ(·; σ_s) over the k held-out probes nearest to i         (the local null)
    drop_s(i) = (m_s(i) − LID_θ(i; σ_s)) / max(|m_s(i)|, 1)                      (relative collapse)

Every held-out probe j gets the same drop against its k nearest *other* held-out probes: a sample of the
statistic under "not memorized". Per σ, the drop is standardised against that sample,

    z_s(i) = (drop_s(i) − median_j drop_s(j)) / (1.4826 · MAD_j drop_s(j)),   j over i's ``scale_k`` nearest,

(the estimator's noise differs between regions, e.g. it grows with the local dimension). The noise levels
are combined by the largest z (a memorizer collapses below the training points' spacing, at whichever σ
resolves it) with a Bonferroni correction, p(i) = min(1, S · Φ̄(max_s z_s(i))), and the p-values go through
Benjamini–Hochberg at level ``fdr``. A point is memorized where BH rejects **and** the drop is large at some
level (significance and size): where the local null at that σ reads a dimension (≥ 1), LID_θ fell to at most
``1 − min_drop`` = 30 % of it; where it reads below 1, as an image UNet not yet fitted does (FLIPD far below
zero on every image), there is no dimension to lose, and LID_θ must lie :data:`MIN_SPREADS` (4) robust
standard deviations of the nearby held-out LIDs below the null. In that regime a collapse still lowers
LID_θ: the training images of a memorizing 16×16 UNet read −131 where unseen ones read −16 (docs/science.md
§7). Memorized points that the data duplicate (a duplicate group) are DD, the others OD. Points are
*ranked* by the mean drop over the levels (an effect size).

How these were chosen (BENCHMARKS.md, "Validity suite"): the scale (``standardise``: local, global, or the
rule of 2026-12-02, local then rescaled by the held-out probes' own z), the combination (``combine``: the
largest z, or an intersection–union test that asks for the collapse at every level), where the size must
hold (``size_at``), ``min_drop`` and ``min_spreads`` maximize the suite's objective over planted and natural
memorization on toy mixtures and digits, MLPs and a convolutional UNet, DDPM and flow matching; leaving each
family out of the choice, the chosen values moved only between neighbouring grid points. The rescaled rule of
2026-12-02 labelled none of a collapsed far piece (LID_θ 1 where held-out points of the piece read 4).

The normal tail on a robust z is an approximation; the tests check the false-discovery rate on a
generalizing oracle and on held-out points split in two, and docs/science.md §7 gives the measured rates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from .chance import benjamini_hochberg
from .memorization import DD, NONE, OD, MemorizationLabels
from .neighbors import knn

__all__ = ["local_null", "relative_drop", "robust_z", "combine_noise_levels", "calibrated_labels", "check_verdict_options",
           "NullStatistics", "null_statistics", "decide",
           "local_spread", "large_enough", "at_level", "MAD_TO_SD", "MIN_DROP", "MIN_SPREADS"]

#: 1.4826 · MAD estimates a normal distribution's standard deviation.
MAD_TO_SD = 1.482602218505602
#: The defaults, chosen by the validity suite on every family (benchmarks/validity.py; BENCHMARKS.md,
#: "Validity suite"): where the null reads a dimension, LID_θ at most 30 % of it (``min_drop`` 0.7); where it
#: reads below 1, LID_θ this many robust standard deviations of the nearby held-out LIDs below the null.
MIN_DROP = 0.7
MIN_SPREADS = 4.0
_TINY_SCALE = 1e-6
#: How a drop is standardised: ``"local"`` against the null drops of its ``scale_k`` nearest held-out probes;
#: ``"global"`` against all of them; ``"local_rescaled"`` local, then rescaled by the held-out probes' own local z.
STANDARDISE = ("local", "global", "local_rescaled")
#: How the noise levels are combined (see :func:`combine_noise_levels`).
COMBINE = ("max", "all")
#: Where the size condition must hold: at one level at least, at every level, or at the deciding level.
SIZE_AT = ("any", "every", "deciding")


def local_null(lid_heldout: Tensor, heldout_view: Tensor, query_view: Tensor | None, k: int) -> Tensor:
    """Mean held-out LID_θ near each query, per noise level, over the held-out probes measured there.

    Args:
        lid_heldout: ``[S, Q]`` LID_θ of the held-out probes at S noise levels (NaN: not measured).
        heldout_view: ``[Q, F]`` the held-out probes in the comparison view.
        query_view: ``[P, F]`` the queries in the same view, or ``None`` for the held-out probes themselves,
            each against its nearest *other* measured held-out probes (leave-one-out).
        k: neighbours averaged (clipped to the number measured).

    Returns:
        ``[S, P]`` (or ``[S, Q]``) float64; NaN where too few held-out probes were measured at a level (none
        for a query; fewer than two for leave-one-out) or where the held-out probe itself was not measured.
    """
    levels = lid_heldout.shape[0]
    n = heldout_view.shape[0] if query_view is None else query_view.shape[0]
    out = torch.full((levels, n), math.nan, dtype=torch.float64)
    for s in range(levels):
        measured = torch.nonzero(torch.isfinite(lid_heldout[s])).flatten()
        values = lid_heldout[s, measured].double()
        if query_view is None:
            if len(measured) < 2:
                continue
            _, index = knn(heldout_view[measured], None, min(k, len(measured) - 1), exclude_self=True)
            out[s, measured] = values[index.cpu()].mean(-1)
        elif len(measured):
            _, index = knn(heldout_view[measured], query_view, min(k, len(measured)))
            out[s] = values[index.cpu()].mean(-1)
    return out


def relative_drop(lid: Tensor, null: Tensor) -> Tensor:
    """(null − lid) / max(|null|, 1): the fraction of the local null's dimension the model lost (any shape)."""
    return (null - lid) / null.abs().clamp(min=1.0)


def robust_z(drop: Tensor, null_drop: Tensor, neighbours: Tensor | None = None) -> Tensor:
    """Standardises ``drop [S, P]`` against the null sample ``null_drop [S, Q]`` (median and 1.4826·MAD).

    Args:
        neighbours: ``[P, K]`` indices into the null sample: standardise each point against its own K
            nearest null values (the estimator's noise differs between regions, e.g. grows with the local
            dimension); None uses the whole sample for every point.

    Returns ``[S, P]`` float64; NaN where ``drop`` is NaN or a null sample has no finite value.
    """
    sample = null_drop[:, None, :] if neighbours is None else null_drop[:, neighbours]  # [S, P or 1, K]
    centre = sample.nanmedian(dim=-1).values
    mad = (sample - centre[..., None]).abs().nanmedian(dim=-1).values
    scale = (MAD_TO_SD * mad).clamp(min=_TINY_SCALE)
    return (drop - centre) / scale


def combine_noise_levels(z: Tensor, how: str = "max") -> tuple[Tensor, Tensor, Tensor]:
    """One statistic and one-sided normal p-value per point from its z at every measured noise level.

    Args:
        z: ``[S, P]`` standardised drops (NaN where not measured).
        how: ``"max"``: the largest z, p = min(1, S' · Φ̄(z)) (Bonferroni over the S' finite levels: evidence
            at any level); ``"all"``: the smallest z, p = Φ̄(z) (an intersection–union test: the point must
            collapse at every level, as a memorized point does at every σ below its spacing, while a point that
            merely lies near a memorized one drops only at the levels whose noise reaches it).

    Returns:
        ``(score [P], p_value [P], level [P])``: the deciding z (NaN where none), its p-value (1 where none),
        and the index of the level that gave it (−1 where none).
    """
    if how not in COMBINE:
        raise ValueError(f"how must be one of {COMBINE}; got {how!r}.")
    finite = torch.isfinite(z)
    fill = -math.inf if how == "max" else math.inf
    filled = torch.where(finite, z, torch.full_like(z, fill))
    score, level = filled.max(0) if how == "max" else filled.min(0)
    levels = finite.sum(0).clamp(min=1).double() if how == "max" else torch.ones(z.shape[1], dtype=torch.float64)
    tail = 0.5 * torch.special.erfc(score.double() / math.sqrt(2.0))
    p_value = (levels * tail).clamp(max=1.0)
    none = ~finite.any(0)
    score = torch.where(none, torch.full_like(score, math.nan), score)
    p_value = torch.where(none, torch.ones_like(p_value), p_value)
    level = torch.where(none, torch.full_like(level, -1), level)
    return score, p_value, level


def calibrated_labels(lid_train: Tensor, lid_heldout: Tensor, train_view: Tensor, heldout_view: Tensor, *,
                      duplicated: Tensor | None = None, k: int = 5, scale_k: int = 100, fdr: float = 0.05,
                      min_drop: float = MIN_DROP, min_spreads: float = MIN_SPREADS, standardise: str = "local",
                      combine: str = "max", size_at: str = "any", sigmas: Sequence[float] | None = None) -> MemorizationLabels:
    """OD/DD verdicts of training probes against the model's own LID_θ on nearby held-out probes.

    Args:
        lid_train: ``[S, P]`` LID_θ of the training probes at S noise levels (row 0 is the primary σ whose
            values fill ``lid_model``); ``[P]`` for one level. NaN where not measured.
        lid_heldout: ``[S, Q]`` (or ``[Q]``) LID_θ of the held-out probes at the same levels.
        train_view, heldout_view: ``[P, F]`` / ``[Q, F]`` the probes in the view where "near" is measured
            (the data, or a deterministic reduction of images; see :mod:`mmh_train.views`).
        duplicated: ``[P]`` bool, whether the data duplicate each training probe (a duplicate group of two
            or more); None means no point is.
        k: held-out neighbours in each local null (≥ 1; clipped to the number of held-out probes measured).
        scale_k: held-out neighbours whose null drops set each point's local centre and scale.
        fdr: Benjamini–Hochberg level in (0, 1) over the tested training probes (a finite statistic at some
            level; ``measured`` in the result).
        min_drop: the smallest relative drop below the local null that counts, in [0, 1).
        min_spreads: the size condition where the local null reads below 1 (see :func:`large_enough`).
        standardise: how a drop's scale is found (see :data:`STANDARDISE`).
        combine: how the noise levels are combined (see :func:`combine_noise_levels`).
        size_at: ``"any"``: the size condition must hold at one noise level at least; ``"every"``: at each;
            ``"deciding"``: at the level whose z decided.
        sigmas: the S noise levels (for ``labels.sigma``); None leaves it unset.

    Returns:
        :class:`~mmh_train.MemorizationLabels` with ``rule="heldout_null"``: ``score`` (the mean relative
        drop over the levels, for ranking; higher = more memorized), ``z`` (the deciding standardised drop),
        ``p_value``, ``drop`` (at the deciding level), ``sigma`` and ``null`` there, and ``duplicated`` per
        probe; ``lid_ref`` is the local null at the primary σ and ``od_gap`` its difference from ``lid_model``.
    """
    lid_train, lid_heldout = _as_levels(lid_train, "lid_train"), _as_levels(lid_heldout, "lid_heldout")
    p, q = lid_train.shape[1], lid_heldout.shape[1]
    if lid_train.shape[0] != lid_heldout.shape[0]:
        raise ValueError(f"lid_train and lid_heldout must be measured at the same noise levels; got "
                         f"{lid_train.shape[0]} and {lid_heldout.shape[0]} rows.")
    _check_view(train_view, p, "train_view")
    _check_view(heldout_view, q, "heldout_view")
    if train_view.reshape(p, -1).shape[1] != heldout_view.reshape(q, -1).shape[1]:
        raise ValueError("train_view and heldout_view must live in the same space (same number of features).")
    check_verdict_options(k=k, scale_k=scale_k, fdr=fdr, min_drop=min_drop, min_spreads=min_spreads,
                          standardise=standardise, combine=combine, size_at=size_at)
    if q < 2:
        raise ValueError(f"a held-out null needs at least 2 held-out probes (each is compared with its nearest "
                         f"others); got {q}. Pass more held-out points, or use reference='data'.")
    if duplicated is None:
        duplicated = torch.zeros(p, dtype=torch.bool)
    if not isinstance(duplicated, Tensor) or duplicated.shape != (p,):
        raise ValueError(f"duplicated must be a bool tensor of shape [{p}] (one flag per training probe).")
    duplicated = duplicated.bool().cpu()

    stats = null_statistics(lid_train, lid_heldout, train_view, heldout_view, k=k, scale_k=scale_k,
                            standardise=standardise)
    if sigmas is not None and len(sigmas) != lid_train.shape[0]:
        raise ValueError(f"sigmas has {len(sigmas)} levels but the LIDs were measured at {lid_train.shape[0]}.")
    return decide(stats, duplicated, fdr=fdr, min_drop=min_drop, min_spreads=min_spreads, combine=combine,
                  size_at=size_at, sigmas=sigmas)


@dataclass(frozen=True)
class NullStatistics:
    """What the verdicts are decided from, per noise level and training probe (``[S, P]`` float64, CPU):
    ``lid`` (LID_θ), ``null`` (the local held-out null), ``drop`` (relative drop), ``z`` (standardised drop),
    ``spread`` (robust standard deviation of the nearby held-out LIDs)."""

    lid: Tensor
    null: Tensor
    drop: Tensor
    z: Tensor
    spread: Tensor


def null_statistics(lid_train: Tensor, lid_heldout: Tensor, train_view: Tensor, heldout_view: Tensor, *, k: int = 5,
                    scale_k: int = 100, standardise: str = "local") -> NullStatistics:
    """The statistics of :func:`calibrated_labels` (checked inputs ``[S, P]``, ``[S, Q]``, ``[P, F]``, ``[Q, F]``)."""
    p, q = lid_train.shape[1], lid_heldout.shape[1]
    train_view, heldout_view = train_view.reshape(p, -1).cpu(), heldout_view.reshape(q, -1).cpu()
    lid_train, lid_heldout = lid_train.double().cpu(), lid_heldout.cpu()
    null_train = local_null(lid_heldout, heldout_view, train_view, k)
    null_heldout = local_null(lid_heldout, heldout_view, None, k)
    drop = relative_drop(lid_train, null_train)
    null_drop = relative_drop(lid_heldout.double(), null_heldout)
    kk = min(scale_k, q - 1)
    _, near_train = knn(heldout_view, train_view, kk)
    if standardise == "global":
        z = robust_z(drop, null_drop)
    elif standardise == "local":  # each point against the null drops of its scale_k nearest held-out probes
        z = robust_z(drop, null_drop, near_train)
    else:  # then recentred and rescaled by the held-out probes' own local z (leave-one-out)
        _, near_held = knn(heldout_view, None, kk)
        z = robust_z(robust_z(drop, null_drop, near_train), robust_z(null_drop, null_drop, near_held))
    return NullStatistics(lid=lid_train, null=null_train, drop=drop, z=z, spread=local_spread(lid_heldout, near_train))


def decide(stats: NullStatistics, duplicated: Tensor, *, fdr: float = 0.05, min_drop: float = MIN_DROP,
           min_spreads: float = MIN_SPREADS, combine: str = "max", size_at: str = "any",
           sigmas: Sequence[float] | None = None) -> MemorizationLabels:
    """Labels from :class:`NullStatistics`: significance (BH over the combined p-values) and size."""
    drop, null_train = stats.drop, stats.null
    p = drop.shape[1]
    z_best, p_value, level = combine_noise_levels(stats.z, combine)
    # the ranking score: the mean relative drop over the measured levels (an effect size; the test decides
    # the labels). It ranked memorized toy points better than the z (calibration seed 100).
    finite = torch.isfinite(drop)
    score = torch.where(finite, drop, torch.zeros_like(drop)).sum(0) / finite.sum(0).clamp(min=1)
    score = torch.where(finite.any(0), score, torch.full_like(score, math.nan))
    tested = torch.isfinite(z_best)
    measured = tested  # a probe with a finite statistic at some level: tested, labelled and counted
    rejected = torch.zeros(p, dtype=torch.bool)
    if bool(tested.any()):
        rejected[tested] = benjamini_hochberg(p_value[tested], fdr)
    # the size condition per level ([S, P]), met at one level at least ("any": a memorized point's collapse is
    # deepest where σ is smallest, while at the largest σ its neighbours' mass still pulls LID_θ up), at
    # every measured level ("every"), or at the deciding one
    sized = large_enough(drop, null_train, null_train - stats.lid, stats.spread, min_drop, min_spreads)
    if size_at == "any":
        sized = sized.any(0)
    elif size_at == "every":
        sized = (sized | ~finite).all(0) & finite.any(0)
    else:  # "deciding": at the level whose z decided (the rule of 2026-12-02)
        sized = at_level(sized.double(), level) == 1.0
    memorized = rejected & sized
    decided_sigma = None
    if sigmas is not None:
        table = torch.tensor([float(s) for s in sigmas], dtype=torch.float64)
        decided_sigma = torch.where(level >= 0, table[level.clamp(min=0)], torch.full((p,), math.nan, dtype=torch.float64))
    label = torch.full((p,), NONE, dtype=torch.long)
    label[memorized & ~duplicated] = OD
    label[memorized & duplicated] = DD
    lid_model, lid_ref = stats.lid[0], null_train[0]
    od_gap = torch.where(measured, lid_ref - lid_model, torch.full_like(lid_ref, math.nan))
    return MemorizationLabels(label=label, od_gap=od_gap, lid_model=lid_model, lid_ref=lid_ref, measured=measured,
                              score=score, p_value=p_value, drop=at_level(drop, level), duplicated=duplicated,
                              sigma=decided_sigma, null=at_level(null_train, level), z=z_best, rule="heldout_null")


def local_spread(lid_heldout: Tensor, neighbours: Tensor) -> Tensor:
    """``[S, P]`` robust standard deviation (1.4826·MAD) of the held-out LID_θ over each point's ``neighbours [P, K]``
    (indices into the ``Q`` held-out probes of ``lid_heldout [S, Q]``), float64."""
    sample = lid_heldout.double()[:, neighbours]  # [S, P, K]
    centre = sample.nanmedian(dim=-1).values
    return MAD_TO_SD * (sample - centre[..., None]).abs().nanmedian(dim=-1).values


def large_enough(drop: Tensor, null: Tensor, gap: Tensor, spread: Tensor, min_drop: float,
                 min_spreads: float = MIN_SPREADS) -> Tensor:
    """The size condition of a verdict (``[P]`` each, at the deciding level), beside its significance.

    Where the local null reads a dimension (≥ 1), LID_θ must have lost at least ``min_drop`` of it. Where it
    reads below 1 (an image model not yet fitted: FLIPD far below zero on training and held-out points alike)
    there is no dimension to lose, and the point must instead lie at least :data:`MIN_SPREADS` robust standard
    deviations of the nearby held-out LIDs below the null: outside the bulk of what unseen points read.
    """
    dimension = null >= 1.0
    return torch.where(dimension, drop >= min_drop, gap >= min_spreads * spread) & torch.isfinite(drop)


def at_level(values: Tensor, level: Tensor) -> Tensor:
    """``[P]``: ``values [S, P]`` at each point's ``level [P]`` (NaN where the level is −1)."""
    picked = values.gather(0, level.clamp(min=0)[None]).squeeze(0)
    return torch.where(level >= 0, picked, torch.full_like(picked, math.nan))


def check_verdict_options(*, k: int = 5, scale_k: int = 100, fdr: float = 0.05, min_drop: float = MIN_DROP,
                          min_spreads: float = MIN_SPREADS, standardise: str = "local", combine: str = "max",
                          size_at: str = "any") -> None:
    """The options of :func:`calibrated_labels`, checked (the monitor calls it before any work)."""
    for name, value in (("k", k), ("scale_k", scale_k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer ≥ 1 (held-out neighbours per local null); got {value!r}.")
    if isinstance(fdr, bool) or not isinstance(fdr, (int, float)) or not 0.0 < fdr < 1.0:
        raise ValueError(f"fdr must lie in (0, 1), e.g. 0.05; got {fdr!r}.")
    if isinstance(min_drop, bool) or not isinstance(min_drop, (int, float)) or not 0.0 <= min_drop < 1.0:
        raise ValueError(f"min_drop must lie in [0, 1) (0.7, the default: LID_θ at most 30 % of the local null); got {min_drop!r}.")
    if isinstance(min_spreads, bool) or not isinstance(min_spreads, (int, float)) or not 0.0 <= min_spreads < math.inf:
        raise ValueError(f"min_spreads must be a finite number ≥ 0 (robust standard deviations of the held-out "
                         f"LIDs; default {MIN_SPREADS}); got {min_spreads!r}.")
    if standardise not in STANDARDISE:
        raise ValueError(f"standardise must be one of {STANDARDISE}; got {standardise!r}.")
    if combine not in COMBINE:
        raise ValueError(f"combine must be one of {COMBINE}; got {combine!r}.")
    if size_at not in SIZE_AT:
        raise ValueError(f"size_at must be one of {SIZE_AT}; got {size_at!r}.")


def _as_levels(lid: Any, name: str) -> Tensor:
    if not isinstance(lid, Tensor) or not lid.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor of LID values, [S, N] or [N]; got "
                        f"{type(lid).__name__ if not isinstance(lid, Tensor) else lid.dtype}.")
    if lid.dim() == 1:
        lid = lid[None]
    if lid.dim() != 2 or lid.shape[1] == 0:
        raise ValueError(f"{name} must have shape [S, N] (noise levels × probes) or [N]; got {tuple(lid.shape)}.")
    if bool(torch.isinf(lid).any()):
        raise ValueError(f"{name} holds ±Inf; mark unmeasured probes with NaN (an Inf LID means the model or the "
                         f"precision overflowed).")
    return lid


def _check_view(view: Any, n: int, name: str) -> None:
    if not isinstance(view, Tensor) or not view.is_floating_point() or view.dim() < 2 or view.shape[0] != n:
        raise ValueError(f"{name} must be a floating tensor [{n}, F] (one row per probe); got "
                         f"{tuple(view.shape) if isinstance(view, Tensor) else type(view).__name__}.")
    if not bool(torch.isfinite(view).all()):
        raise ValueError(f"{name} holds NaN or Inf; probes must be finite points.")
