"""The stateful halves of the remedies, shared by the Lightning callbacks and the plain-loop guard.

Each reacts to the monitor's :class:`~mmh_train.monitor.CheckResult` and has ``state_dict``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..memorization import DD
from .duplicate_groups import DuplicateGroups, downweight, duplicate_weights

__all__ = ["PenaltySchedule", "AdaptiveDuplicateWeights"]


class PenaltySchedule:
    """Weight of the LID penalty: 0 until the OD fraction exceeds ``od_threshold``, then a linear ramp.

    Args:
        max_weight: weight once fully on (≥ 0).
        od_threshold: OD fraction that switches the penalty on.
        ramp_steps: steps from 0 to ``max_weight`` (0: at once).
        always_on: on from step 0.
        target: LID below which FLIPD is penalized; ``None`` takes the median LID* of the non-DD training
            probes at the check that switches the penalty on.
    """

    def __init__(self, *, max_weight: float = 0.1, od_threshold: float = 0.05, ramp_steps: int = 0,
                 always_on: bool = False, target: float | None = None) -> None:
        if not max_weight >= 0:
            raise ValueError(f"max_weight must be ≥ 0; got {max_weight}.")
        if not isinstance(ramp_steps, int) or ramp_steps < 0:
            raise ValueError(f"ramp_steps must be an integer ≥ 0; got {ramp_steps!r}.")
        self.max_weight, self.od_threshold, self.ramp_steps = float(max_weight), od_threshold, ramp_steps
        self.target = target
        self.activated_at: int | None = 0 if always_on else None

    def update(self, result: Any | None) -> None:
        """Switches on at a check whose OD fraction exceeds the threshold (sticky)."""
        if self.activated_at is not None or result is None or result.labels is None:
            return
        if result.metrics.get("od_fraction", 0.0) > self.od_threshold:
            self.activated_at = result.step
            if self.target is None:
                keep = result.labels.label != DD
                self.target = float(result.labels.lid_ref[keep].nanmedian())

    def weight(self, step: int) -> float:
        """The penalty's weight at ``step``."""
        if self.activated_at is None:
            return 0.0
        if self.ramp_steps == 0:
            return self.max_weight
        return self.max_weight * min(1.0, max(0, step - self.activated_at) / self.ramp_steps)

    def state_dict(self) -> dict[str, Any]:
        return {"activated_at": self.activated_at, "target": self.target}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.activated_at, self.target = state["activated_at"], state["target"]


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
