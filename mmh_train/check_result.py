"""What one check of the monitor measured: the result the callbacks, guard and report read."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from .memorization import MemorizationLabels

__all__ = ["CheckResult"]


@dataclass(frozen=True)
class CheckResult:
    """What one check measured, at the monitor's primary σ.

    Attributes:
        step, epoch: when the check ran.
        train_index: ``[P]`` dataset indices of the training probes; ``heldout_index``: ``[Q]``.
        lid_train: ``[P]`` latest LID_θ of each training probe (NaN if never measured yet).
        lid_heldout: ``[Q]`` latest LID_θ of each held-out probe.
        labels: OD/DD labels of the training probes, or ``None`` without a reference.
        collapse: ``[P]`` drop of each probe's LID from its own early checks (NaN until enough checks).
        n_measured: probes measured in this check (fewer than P + Q under a budget).
        seconds: wall time of the check.
        metrics: the scalars the callbacks log (keys without the ``mmh/`` prefix). ``lid_heldout`` and
            ``lid_gap`` need held-out probes, ``od_fraction``/``dd_fraction`` a reference, ``collapse``
            ``early_checks + 1`` checks; a metric that does not apply is absent.
    """

    step: int
    epoch: int
    train_index: Tensor
    lid_train: Tensor
    heldout_index: Tensor
    lid_heldout: Tensor
    labels: MemorizationLabels | None
    collapse: Tensor
    n_measured: int
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
