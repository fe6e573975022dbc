"""MMH memorization labels (science.md §1) and the collapse of LID_θ during training.

Two signals, both per training point:

- :func:`classify_memorization` compares the model's LID_θ(x) with the data's LID*(x) and labels each
  point OD-Mem (overfitting-driven: the model's manifold is thinner than the data's), DD-Mem
  (data-driven: the data themselves are (nearly) a point there, e.g. duplicates, and the model agrees)
  or none (generalization).
- :func:`collapse_score` needs no LID*: it compares each point's latest LID_θ with its own LID_θ early in
  training. A point whose LID_θ falls towards 0 is being memorized, whatever its LID*.

Copy detection for generated samples lives in :mod:`mmh_train.copies`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any

import torch
from torch import Tensor

from ._checks import check_choice, check_positive_int
from .history import latest_measured

__all__ = [
    "LABEL_NAMES", "NONE", "OD", "DD",
    "MemorizationLabels", "classify_memorization", "collapse_score", "collapsed",
]

LABEL_NAMES: tuple[str, ...] = ("none", "od", "dd")
NONE, OD, DD = 0, 1, 2
_TOP_KINDS = ("od", "dd")


@dataclass(frozen=True)
class MemorizationLabels:
    """Per-point MMH labels, from :func:`classify_memorization`. All tensors have shape ``[N]``.

    Attributes:
        label: long codes ``NONE = 0``, ``OD = 1``, ``DD = 2`` (names in ``LABEL_NAMES``); unmeasured
            points read ``NONE``.
        od_gap: how far LID_θ falls below LID* (higher = more OD-memorized; for ranking); NaN where
            unmeasured.
        lid_model: LID_θ as given, in the promoted dtype (NaN where not measured).
        lid_ref: LID* as given, in the promoted dtype on ``lid_model``'s device.
        measured: bool, whether both LIDs are known at the point (held-out rule: whether it was tested, i.e.
            has a finite statistic at some noise level).
        rule: which rule made the labels: ``"reference"`` (LID_θ against LID* with absolute or relative
            margins, :func:`classify_memorization`) or ``"heldout_null"`` (calibrated against the model's
            own LID_θ on nearby held-out points, :func:`mmh_train.verdicts.calibrated_labels`).
        score: ``[N]`` float64 memorization score for ranking, higher = more memorized: the mean relative drop
            of LID_θ below the local held-out null over the noise levels (1 = collapsed to 0); None under the
            reference rule, where ``od_gap`` ranks.
        z: ``[N]`` float64, the deciding standardised drop (the smallest over the levels by default; what
            ``p_value`` comes from).
        p_value: ``[N]`` float64 p-value of "not memorized" (before Benjamini–Hochberg), or None.
        drop: ``[N]`` relative drop of LID_θ below the local null at the deciding σ, or None.
        duplicated: ``[N]`` bool, whether the data duplicate the point (what separates DD from OD), or None.
        sigma: ``[N]`` float64, the noise level that decided the point (the deciding z), NaN where unmeasured; None
            under the reference rule.
        null: ``[N]`` float64, the local held-out null at that noise level: the LID a generalizing model
            reads there (what the per-point LID penalty aims for); None under the reference rule.
    """

    label: Tensor
    od_gap: Tensor
    lid_model: Tensor
    lid_ref: Tensor
    measured: Tensor
    score: Tensor | None = None
    z: Tensor | None = None
    p_value: Tensor | None = None
    drop: Tensor | None = None
    duplicated: Tensor | None = None
    sigma: Tensor | None = None
    null: Tensor | None = None
    rule: str = "reference"

    @property
    def ranking(self) -> Tensor:
        """``[N]`` the score to rank points by (higher = more memorized): ``score``, else ``od_gap``."""
        return self.score if self.score is not None else self.od_gap

    def __len__(self) -> int:
        return self.label.shape[0]

    @property
    def names(self) -> list[str]:
        """The label of each point as a name from ``LABEL_NAMES``."""
        return [LABEL_NAMES[code] for code in self.label.tolist()]

    @property
    def n_measured(self) -> int:
        """Number of points where both LIDs are known."""
        return int(self.measured.sum())

    def counts(self) -> dict[str, int]:
        """Number of *measured* points per label, keyed by ``LABEL_NAMES`` (unmeasured points are left out)."""
        measured_labels = self.label[self.measured]
        return {name: int((measured_labels == code).sum()) for code, name in enumerate(LABEL_NAMES)}

    def fraction(self, name: str) -> float:
        """Fraction of the measured points that carry label ``name`` (one of ``LABEL_NAMES``); NaN when no
        point is measured yet (e.g. the first check of a rotation under a budget)."""
        check_choice(name, "name", LABEL_NAMES)
        return self.counts()[name] / self.n_measured if self.n_measured else math.nan

    def top(self, k: int, kind: str = "od") -> Tensor:
        """Indices of the (at most) ``k`` most memorized points of one kind, most memorized first.

        Args:
            k: how many indices to return at most.
            kind: ``"od"``: OD-labelled points by decreasing ``od_gap``; ``"dd"``: DD-labelled points by
                increasing ``lid_model`` (ties by index). Under the held-out rule both rank by decreasing
                ``score``.

        Returns:
            Long tensor ``[min(k, number of points with that label)]`` of point indices.

        .. note:: Only points carrying the label are ranked, so fewer than ``k`` may come back. To rank
           every measured point by the gap, sort ``od_gap`` yourself (NaN marks unmeasured points).
        """
        check_positive_int(k, "k")
        check_choice(kind, "kind", _TOP_KINDS)
        candidates = torch.nonzero(self.label == (OD if kind == "od" else DD)).flatten()
        if self.score is not None:
            key = -self.score[candidates]
        else:
            key = -self.od_gap[candidates] if kind == "od" else self.lid_model[candidates]
        order = torch.sort(key, stable=True).indices[:k]
        return candidates[order]


def classify_memorization(lid_model: Tensor, lid_ref: Tensor, *, od_margin: float = 1.0,
                          relative: bool = False, dd_threshold: float = 0.5,
                          dd_margin: float | None = None, detect_dd: bool = True) -> MemorizationLabels:
    """Labels each point OD-Mem, DD-Mem or none by comparing LID_θ with LID* (science.md §1).

    The rule, point by point:

    - DD (data-driven, only with ``detect_dd``): ``lid_ref <= dd_threshold`` (LID* itself is small, e.g. exact duplicates read 0)
      AND the model agrees: ``lid_model <= dd_threshold + od_margin`` (absolute) — the model also sees
      (nearly) a point. With ``relative=True`` the model's tolerance is ``dd_margin`` (default 1.0, one
      dimension) instead of the fractional ``od_margin``; ``dd_margin`` overrides it in either mode.
    - OD (overfitting-driven): not DD, and ``lid_model < lid_ref - od_margin`` (absolute), or with
      ``relative=True``, ``lid_model < (1 - od_margin) * lid_ref`` (then od_margin must be in (0, 1)).
    - none: otherwise (including LID* small but the model reading high: the model generalizes there).

    A NaN in either input marks the point unmeasured: it is labelled none, its ``od_gap`` is NaN and
    ``measured`` is False there.

    Args:
        lid_model: LID_θ of each point, shape ``[N]`` (e.g. FLIPD), NaN where not measured.
        lid_ref: LID* of each point, shape ``[N]`` (e.g. ``reference_lid``), NaN where not measured.
            Moved to ``lid_model``'s device; both are compared in their promoted dtype.
        od_margin: how far below LID* the model must read to count as OD: in dimensions (≥ 0), or with
            ``relative=True`` as a fraction of LID* in (0, 1).
        relative: compare by the fraction ``(lid_ref − lid_model) / lid_ref`` instead of the difference.
        dd_threshold: LID* at or below this (≥ 0) counts as "the data are a point here".
        dd_margin: the model's tolerance above ``dd_threshold`` for DD, in dimensions (≥ 0); None means
            ``od_margin`` (absolute) or 1.0 (relative).

    Returns:
        :class:`MemorizationLabels`. ``od_gap`` is ``lid_ref − lid_model``, or with ``relative=True``
        ``(lid_ref − lid_model) / max(|lid_ref|, 1)``: the denominator is floored at one dimension so
        that points with LID* near 0 (duplicates) get no unbounded gaps; for LID* ≥ 1 the gap exceeds
        ``od_margin`` exactly where the OD condition holds.

    Raises:
        TypeError: non-tensor or non-floating inputs, non-numeric options.
        ValueError: inputs not 1-D of the same non-zero length, ±Inf entries, every point NaN, negative
            margins or threshold, or a relative ``od_margin`` outside (0, 1).
    """
    _check_lid_vector(lid_model, "lid_model")
    _check_lid_vector(lid_ref, "lid_ref")
    if lid_model.shape != lid_ref.shape:
        raise ValueError(f"lid_model and lid_ref must hold one value per point, the same points in the same "
                         f"order; got shapes {tuple(lid_model.shape)} and {tuple(lid_ref.shape)}. Estimate "
                         f"both at the same probe set.")
    od_margin = _check_non_negative(od_margin, "od_margin")
    dd_threshold = _check_non_negative(dd_threshold, "dd_threshold")
    if not isinstance(relative, bool):
        raise TypeError(f"relative must be True or False; got {relative!r}.")
    if relative and not 0.0 < od_margin < 1.0:
        raise ValueError(f"with relative=True, od_margin is a fraction of LID* and must lie in (0, 1); got "
                         f"{od_margin!r}. Pass e.g. od_margin=0.25 (the model reads 25% below LID*).")
    dd_margin = (od_margin if not relative else 1.0) if dd_margin is None else \
        _check_non_negative(dd_margin, "dd_margin")

    dtype = torch.promote_types(lid_model.dtype, lid_ref.dtype)
    model, ref = lid_model.to(dtype), lid_ref.to(device=lid_model.device, dtype=dtype)
    measured = ~(torch.isnan(model) | torch.isnan(ref))
    if not bool(measured.any()):
        raise ValueError(f"every probe is NaN: no point has both LIDs ({int(torch.isnan(model).sum())} of "
                         f"{model.shape[0]} lid_model and {int(torch.isnan(ref).sum())} lid_ref entries are "
                         f"NaN); check sigma / the model (a diverged network or a noise level of 0 gives NaN "
                         f"FLIPD) and the reference LID.")

    is_dd = measured & (ref <= dd_threshold) & (model <= dd_threshold + dd_margin) & detect_dd
    if relative:
        below = model < (1.0 - od_margin) * ref
        od_gap = (ref - model) / ref.abs().clamp(min=1.0)
    else:
        below = model < ref - od_margin
        od_gap = ref - model
    is_od = measured & ~is_dd & below

    label = torch.full(model.shape, NONE, dtype=torch.long, device=model.device)
    label[is_od] = OD
    label[is_dd] = DD
    od_gap = torch.where(measured, od_gap, torch.full_like(od_gap, math.nan))
    return MemorizationLabels(label=label, od_gap=od_gap, lid_model=model, lid_ref=ref, measured=measured)


def collapse_score(history: Tensor, *, early_checks: int = 2) -> Tensor:
    """How far each point's LID_θ has fallen from its own early value (needs no LID*).

    For each point (column), over its measured checks in order: baseline = mean of the first
    ``early_checks`` values, current = the last value, and

        score = (baseline − current) / max(|baseline|, 1)

    0 means no change, 1 a collapse to 0 from a baseline of at least one dimension, negative a rise.
    The denominator is a relative drop for baselines of one dimension or more; below that it is floored
    at one dimension so that baselines near 0 (points already seen as points, or noisy estimates around
    0) don't turn small absolute changes into huge relative ones.

    Args:
        history: LID_θ per check (rows, oldest first) and point (columns), shape ``[C, N]``, NaN where a
            point was not measured at a check.
        early_checks: how many of each point's first measured values make its baseline (≥ 1).

    Returns:
        Tensor ``[N]`` in ``history``'s dtype; NaN where a point has fewer than ``early_checks + 1``
        measured values.

    Raises:
        TypeError: non-tensor or non-floating history.
        ValueError: history not ``[C, N]`` with C, N ≥ 1, ±Inf entries, or a bad ``early_checks``.
    """
    _check_history(history)
    check_positive_int(early_checks, "early_checks")
    measured = ~torch.isnan(history)
    rank = torch.cumsum(measured.long(), dim=0)  # 1-based position among the point's measured values
    early = measured & (rank <= early_checks)
    baseline = torch.where(early, history, torch.zeros_like(history)).sum(0) / early_checks
    current = latest_measured(history)
    score = (baseline - current) / baseline.abs().clamp(min=1.0)
    enough = measured.sum(0) >= early_checks + 1
    return torch.where(enough, score, torch.full_like(score, math.nan))


def collapsed(history: Tensor, *, threshold: float = 0.5, early_checks: int = 2) -> Tensor:
    """Whether each point's :func:`collapse_score` is at least ``threshold``.

    Args:
        history: LID_θ per check and point, shape ``[C, N]``, NaN where not measured.
        threshold: the smallest score that counts as collapsed (finite; 0.5 = lost half its baseline).
        early_checks: see :func:`collapse_score`.

    Returns:
        Bool tensor ``[N]``; False where the score is NaN (too few measurements).
    """
    if isinstance(threshold, bool) or not isinstance(threshold, Real) or not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number; got {threshold!r}. Pass e.g. threshold=0.5 "
                         f"(LID_θ fell by half of its early value).")
    return collapse_score(history, early_checks=early_checks) >= threshold


# --------------------------------------------------------------------------- validation


def _check_lid_vector(x: Any, name: str) -> None:
    """A 1-D floating, non-empty tensor without ±Inf (NaN marks an unmeasured point)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [N]; got {type(x).__name__}. "
                        f"Convert it with torch.as_tensor({name}, dtype=torch.float32).")
    if not x.is_floating_point():
        raise TypeError(f"{name} has dtype {x.dtype}; LID values need a floating dtype. Pass {name}.float().")
    if x.dim() != 1:
        raise ValueError(f"{name} must be 1-D with one LID per point ([N]); got shape {tuple(x.shape)}. "
                         f"Flatten it with {name}.reshape(-1) if it holds one value per point.")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty; pass at least one point's LID.")
    _check_no_inf(x, name)


def _check_history(history: Any) -> None:
    if not isinstance(history, Tensor):
        raise TypeError(f"history must be a torch.Tensor of shape [C, N] (checks × points); got "
                        f"{type(history).__name__}. Stack the per-check LIDs with torch.stack(rows).")
    if not history.is_floating_point():
        raise TypeError(f"history has dtype {history.dtype}; it needs a floating dtype (NaN marks a point "
                        f"not measured at a check). Pass history.float().")
    if history.dim() != 2 or history.shape[0] == 0 or history.shape[1] == 0:
        raise ValueError(f"history must have shape [C, N] with C ≥ 1 checks (rows) and N ≥ 1 points "
                         f"(columns); got shape {tuple(history.shape)}. For one point use "
                         f"history.unsqueeze(1).")
    _check_no_inf(history, "history")


def _check_no_inf(x: Tensor, name: str) -> None:
    if bool(torch.isinf(x).any()):
        where = torch.nonzero(torch.isinf(x)).squeeze(1 if x.dim() == 1 else ())[:5].tolist()
        raise ValueError(f"{name} has ±Inf at {where}{' ...' if int(torch.isinf(x).sum()) > 5 else ''}; "
                         f"mark points that could not be measured with NaN instead (an Inf LID usually "
                         f"means an overflow: check the precision and sigma).")


def _check_non_negative(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number ≥ 0; got {type(value).__name__}.")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and ≥ 0; got {value!r}.")
    return float(value)
