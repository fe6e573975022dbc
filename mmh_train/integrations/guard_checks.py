"""The guard's own argument checks: each refuses bad input before any work, with the fix in its message."""

from __future__ import annotations

import warnings
from typing import Any

from ..probes import dataset_size
from ..remedies import AdaptiveDuplicateWeights, PenaltySchedule
from .stopping import MemorizationStopper

__all__ = ["check_part_types", "check_penalty_subset", "check_step_order", "check_stopper_and_weights"]


def check_part_types(*, weights: Any, penalty: Any, stopper: Any) -> None:
    """The constructor's parts are objects, not names or tensors."""
    if weights is not None and not isinstance(weights, (str, AdaptiveDuplicateWeights)):
        raise TypeError(f"weights must be AdaptiveDuplicateWeights(...) or 'survey'; got {type(weights).__name__}. "
                        f"For per-sample weights of your own, multiply the loss yourself.")
    if penalty is not None and not isinstance(penalty, PenaltySchedule):
        raise TypeError(f"penalty must be a PenaltySchedule(...); got {type(penalty).__name__}.")
    if stopper is not None and not isinstance(stopper, MemorizationStopper):
        hint = f"MemorizationStopper({stopper!r})" if isinstance(stopper, str) else "MemorizationStopper(...)"
        raise TypeError(f"stopper must be a MemorizationStopper; got {type(stopper).__name__}. Pass {hint}.")


def check_penalty_subset(subset: Any) -> None:
    """``penalty_subset``: points of each batch the penalty measures (≥ 1), or None for all of them."""
    if subset is not None and (isinstance(subset, bool) or not isinstance(subset, int) or subset < 1):
        raise ValueError(f"penalty_subset must be an integer ≥ 1 (points of each batch the penalty measures) or "
                         f"None (every point); got {subset!r}.")


def check_step_order(step: int, last: int | None) -> int:
    """The training step of a ``maybe_check`` call, which may repeat (accumulation, epoch ends) but never go back:
    a per-epoch counter restarts each epoch, and the guard would skip every later epoch's checks."""
    if last is not None and step < last:
        raise ValueError(f"maybe_check got step {step} after step {last}: pass the global training step, which "
                         f"never goes back (a per-epoch counter restarts each epoch, and every later epoch's checks "
                         f"would be skipped), e.g. epoch * len(loader) + i, or accelerate's global_step.")
    return step


def check_stopper_and_weights(m: Any, stopper: MemorizationStopper | None,
                              weights: AdaptiveDuplicateWeights | None) -> None:
    """Early stopping on a metric the monitor ``m`` can produce; duplicate weights sized for its training set."""
    if stopper is not None:
        metric = stopper.monitor
        if m is None:
            raise ValueError("early stopping acts on the checks of a monitor; add mmh_train.callbacks.LIDMonitor(...) "
                             "to the Trainer's callbacks (plain loops: MemorizationGuard(monitor, ...)).")
        if metric in ("od_fraction", "dd_fraction") and not m.labels_anything:
            raise ValueError(f"{metric} needs labels, but the monitor labels nothing (reference=None); give it "
                             f"held-out data (the default rule) or reference='data', or stop on collapse.")
        if metric in ("od_fraction", "dd_fraction") and m.rule != "heldout_null" and m.reference.kind == "data":
            warnings.warn(f"early stopping on {metric} with labels from the model-free rule (no held-out data): "
                          f"its margins were set on 10-d toys and do not transfer to images; give the monitor "
                          f"held-out data (MemorizationMonitor(train, heldout, ...)) for calibrated labels.",
                          RuntimeWarning, stacklevel=4)
        if metric == "lid_gap" and not len(m.heldout_index):
            raise ValueError("lid_gap compares train and held-out probes, but the monitor has no held-out data; "
                             "pass heldout_data=..., or stop on od_fraction or collapse.")
    if weights is not None and m is not None and len(weights.weights) != dataset_size(m.train_data):
        raise ValueError(f"the duplicate weights cover {len(weights.weights)} points but the monitor's "
                         f"training set has {dataset_size(m.train_data)}; build both on the same dataset.")
