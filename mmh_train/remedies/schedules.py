"""The stateful halves of the remedies, shared by the Lightning callbacks and the plain-loop guard.

Each reacts to the monitor's :class:`~mmh_train.monitor.CheckResult` and has ``state_dict``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..memorization import DD, OD
from .duplicate_groups import DuplicateGroups, downweight, duplicate_weights

__all__ = ["PenaltySchedule", "AdaptiveDuplicateWeights"]


class PenaltySchedule:
    """Where and how strongly the LID penalty acts.

    Two modes:

    - **per point** (``n_points`` given): each training point the monitor labels OD gets the penalty from
      that check on (sticky), with its own target and noise level: under the default rule the local
      held-out null at the σ that decided the verdict (where the model collapsed), otherwise the LID* it
      was compared with (at the penalty's σ). Points never flagged cost nothing and feel nothing.
    - **global** (``n_points=None``): one switch for every point, on once the OD fraction exceeds
      ``od_threshold``, with one target (``target``, or the median LID* of the non-DD probes then).

    In both the weight ramps linearly from 0 to ``max_weight`` over ``ramp_steps`` after switching on.

    Args:
        max_weight: weight once fully on (≥ 0).
        od_threshold: OD fraction that switches the global penalty on.
        ramp_steps: steps from 0 to ``max_weight`` (0: at once).
        always_on: on from step 0 (global mode, or per point for points flagged later).
        target: global mode: LID below which FLIPD is penalized (None: taken when it switches on). Per point:
            a floor for the per-point targets (None: none).
        n_points: the training set's size, for the per-point mode.
        per_point: the per-point mode with the size still unknown (:meth:`set_points` gives it; the guard
            takes it from its monitor); implied by ``n_points``.
    """

    def __init__(self, *, max_weight: float = 0.1, od_threshold: float = 0.05, ramp_steps: int = 0,
                 always_on: bool = False, target: float | None = None, n_points: int | None = None,
                 per_point: bool = False) -> None:
        if not max_weight >= 0:
            raise ValueError(f"max_weight must be ≥ 0; got {max_weight}.")
        if not isinstance(ramp_steps, int) or ramp_steps < 0:
            raise ValueError(f"ramp_steps must be an integer ≥ 0; got {ramp_steps!r}.")
        if n_points is not None and (isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 1):
            raise ValueError(f"n_points must be the training set's size (an integer ≥ 1) or None; got {n_points!r}.")
        self.max_weight, self.od_threshold, self.ramp_steps = float(max_weight), od_threshold, ramp_steps
        self.target = target
        self.activated_at: int | None = 0 if always_on else None
        self.per_point = per_point or n_points is not None
        self.set_points(n_points or 0)

    def set_points(self, n_points: int) -> None:
        """Sizes the per-point state for a training set of ``n_points`` (nothing flagged yet)."""
        # per point: NaN = not flagged; else the point's target (sticky, the first flagging check's value)
        self.point_target = torch.full((n_points,), float("nan"), dtype=torch.float64)
        self.point_sigma = torch.full((n_points,), float("nan"), dtype=torch.float64)  # NaN: the penalty's σ

    def update(self, result: Any | None) -> None:
        """Global: switches on at a check whose OD fraction exceeds the threshold (sticky). Per point: adds
        the newly OD-labelled probes with their targets."""
        if result is None or result.labels is None:
            return
        if self.per_point:
            labels = result.labels
            goal = labels.null if labels.null is not None else labels.lid_ref
            od = (labels.label == OD).cpu() & torch.isfinite(goal.cpu())
            index = result.train_index[od]
            if index.numel() and int(index.max()) >= len(self.point_target):
                raise ValueError(f"the monitor flagged training index {int(index.max())} but the penalty was built "
                                 f"for n_points={len(self.point_target)}; pass the training set's size.")
            new = torch.isnan(self.point_target[index])
            target = goal.cpu()[od].double()
            if self.target is not None:
                target = target.clamp(min=float(self.target))
            self.point_target[index[new]] = target[new]
            if labels.sigma is not None:
                self.point_sigma[index[new]] = labels.sigma.cpu()[od].double()[new]
            if bool(new.any()) and self.activated_at is None:
                self.activated_at = result.step
            return
        if self.activated_at is not None:
            return
        if result.metrics.get("od_fraction", 0.0) > self.od_threshold:
            self.activated_at = result.step
            if self.target is None:
                keep = result.labels.label != DD
                self.target = float(result.labels.lid_ref[keep].nanmedian())

    def targets_for(self, indices: Tensor | None, batch_size: int) -> tuple[Tensor, Tensor | float, Tensor | None]:
        """Which rows of a batch the penalty acts on, their targets and noise levels.

        Returns ``(rows [b] long, target, sigma)``: every row, the global target and None (the penalty's σ);
        or (per point) the rows whose dataset index (``indices [B]``) was flagged, ``[b]`` float64 targets
        and ``[b]`` float64 noise levels (None where the verdicts carried none).
        """
        if not self.per_point:
            if self.target is None:
                raise RuntimeError("the penalty target is unknown: pass target=... or monitor with a reference.")
            return torch.arange(batch_size), float(self.target), None
        if indices is None:
            raise ValueError("the per-point LID penalty needs the batch's dataset indices: pass them (wrap the "
                             "dataset in mmh_train.data.IndexedDataset), or build PenaltySchedule without n_points.")
        target = self.point_target[indices.cpu().long()]
        rows = torch.nonzero(torch.isfinite(target)).flatten()
        sigma = self.point_sigma[indices.cpu().long()][rows]
        return rows, target[rows], (sigma if bool(torch.isfinite(sigma).all()) and sigma.numel() else None)

    def weight(self, step: int) -> float:
        """The penalty's weight at ``step``."""
        if self.activated_at is None:
            return 0.0
        if self.ramp_steps == 0:
            return self.max_weight
        return self.max_weight * min(1.0, max(0, step - self.activated_at) / self.ramp_steps)

    def state_dict(self) -> dict[str, Any]:
        return {"activated_at": self.activated_at, "target": self.target, "point_target": self.point_target.clone(),
                "point_sigma": self.point_sigma.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`; refuses a state of the other mode or another training set's size."""
        saved = state.get("point_target")
        saved_n = 0 if saved is None else len(saved)
        if saved_n != len(self.point_target):
            mode = lambda n: f"per point over {n} points" if n else "global"  # noqa: E731
            raise ValueError(f"this penalty state was saved {mode(saved_n)}, but the schedule is "
                             f"{mode(len(self.point_target))}; build PenaltySchedule with the same n_points (and the "
                             f"controller with the same per_point) as the run that saved it.")
        self.activated_at, self.target = state["activated_at"], state["target"]
        if saved is not None:
            self.point_target = saved.clone()
            self.point_sigma = state["point_sigma"].clone()


class AdaptiveDuplicateWeights:
    """Per-sample weights from duplicate groups, further down-weighting the groups labelled DD (once each).

    Args:
        groups: from :func:`~mmh_train.remedies.find_duplicate_groups`.
        group_weight, cap: as for :func:`~mmh_train.remedies.duplicate_weights`.
        dd_factor: multiplier for a group once the monitor labels one of its probes DD; ``None`` disables.
    """

    def __init__(self, groups: DuplicateGroups, *, group_weight: float = 1.0, cap: float | None = None,
                 dd_factor: float | None = None) -> None:
        if dd_factor is not None and not 0.0 <= dd_factor <= 1.0:
            raise ValueError(f"dd_factor must lie in [0, 1] (a multiplier for DD-labelled groups); got {dd_factor}.")
        self.groups, self.dd_factor = groups, dd_factor
        self.weights = duplicate_weights(groups, group_weight=group_weight, cap=cap)
        self.downweighted = torch.zeros(len(self.weights), dtype=torch.bool)

    def update(self, result: Any | None) -> bool:
        """Down-weights newly DD-labelled groups; returns whether the weights changed."""
        if self.dd_factor is None or result is None or result.labels is None:
            return False
        dd_points = result.train_index[result.labels.label == DD]
        in_dd_group = torch.isin(self.groups.group, self.groups.group[dd_points])
        new = in_dd_group & ~self.downweighted  # each group once, not at every check that sees it
        if not bool(new.any()):
            return False
        self.downweighted |= new
        self.weights = downweight(self.weights, new, self.dd_factor)
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights.clone(), "downweighted": self.downweighted.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weights, self.downweighted = state["weights"], state["downweighted"]

    def __getitem__(self, indices: Tensor) -> Tensor:
        return self.weights[indices]
