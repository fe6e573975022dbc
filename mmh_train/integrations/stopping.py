"""Early stopping on the monitor's metrics for plain loops, in Lightning EarlyStopping's vocabulary."""

from __future__ import annotations

import math
from typing import Any, Mapping

__all__ = ["MemorizationStopper", "METRIC_MODES", "DEFAULT_TOLERANCE", "default_tolerance"]

#: Metrics the monitor produces, with the direction in which memorization grows.
METRIC_MODES = {"od_fraction": "min", "lid_gap": "min", "collapse": "min", "dd_fraction": "min", "lid_train": "max"}
#: The value at which a metric means "no memorization": checks on its good side never count toward patience.
#: 0 for the label fractions, the train/held-out gap and the collapse; none for LID_θ itself (never below 0,
#: so a tolerance of 0 would hold every check as healthy and the stopper could never stop).
DEFAULT_TOLERANCE = {"od_fraction": 0.0, "dd_fraction": 0.0, "lid_gap": 0.0, "collapse": 0.0}


def default_tolerance(metric: str) -> float | None:
    """The default ``tolerance`` of a metric (with or without the ``mmh/`` prefix): 0, or None for lid_train."""
    return DEFAULT_TOLERANCE.get(metric.removeprefix("mmh/"))


class MemorizationStopper:
    """Patience on one memorization metric, decided identically on every rank.

    A check whose metric is within ``tolerance`` (on the good side) never counts toward patience: an OD
    fraction that stays at 0 cannot "improve" and must not stop training. The default (``"auto"``) is
    :data:`DEFAULT_TOLERANCE`: 0, except None for ``lid_train``. Otherwise it behaves like
    Lightning's ``EarlyStopping``: ``patience`` checks without an improvement of at least ``min_delta``
    stop training (the best check is the latest healthy one, a check within ``tolerance`` no worse than the
    best, so that the weights kept are the most trained ones without memorization; otherwise the first best); a non-finite value stops at once when ``check_finite``; ``stopping_threshold`` and
    ``divergence_threshold`` stop at once.

    Args:
        monitor: one of :data:`METRIC_MODES` (with or without the ``mmh/`` prefix).
        mode: ``"min"`` or ``"max"``; default: the metric's natural direction.
        patience, min_delta, tolerance, check_finite, stopping_threshold, divergence_threshold: as above.
    """

    def __init__(self, monitor: str = "od_fraction", *, mode: str | None = None, patience: int = 3,
                 min_delta: float = 0.0, tolerance: float | None | str = "auto", check_finite: bool = True,
                 stopping_threshold: float | None = None, divergence_threshold: float | None = None) -> None:
        key = monitor.removeprefix("mmh/")
        if key not in METRIC_MODES:
            raise ValueError(f"monitor={monitor!r} is not a memorization metric; choose one of {', '.join(sorted(METRIC_MODES))}.")
        mode = mode or METRIC_MODES[key]
        if mode not in ("min", "max"):
            raise ValueError(f"mode={mode!r} is not supported; choose 'min' or 'max'.")
        if not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience must be an integer ≥ 0 (checks without improvement); got {patience!r}.")
        self.monitor, self.mode, self.patience, self.min_delta = key, mode, patience, abs(min_delta)
        if isinstance(tolerance, str) and tolerance != "auto":
            raise ValueError(f"tolerance={tolerance!r}; pass a number, None or 'auto'.")
        self.tolerance = default_tolerance(key) if tolerance == "auto" else tolerance
        self.check_finite = check_finite
        self.stopping_threshold, self.divergence_threshold = stopping_threshold, divergence_threshold
        self.best = math.inf if mode == "min" else -math.inf
        self.wait_count = 0
        self.stopped_step: int | None = None
        self.reason: str | None = None
        self.best_step: int | None = None  # the step of the best check so far (the latest healthy one; else the first best)
        self.improved = False              # whether the last check improved on the best

    def _better(self, a: float, b: float) -> bool:
        return a < b if self.mode == "min" else a > b

    def _decide(self, value: float) -> str | None:
        """The reason to stop at this value, or None; updates best and wait_count."""
        if not math.isfinite(value):
            return f"{self.monitor} = {value} is not finite" if self.check_finite else None
        if self.stopping_threshold is not None and self._better(value, self.stopping_threshold):
            if self._better(value, self.best):  # the check that reached the goal is the best one so far
                self.best, self.improved = value, True
            return f"{self.monitor} = {value:.4g} reached stopping_threshold {self.stopping_threshold}"
        if self.divergence_threshold is not None and self._better(self.divergence_threshold, value):
            return f"{self.monitor} = {value:.4g} diverged past {self.divergence_threshold}"
        improved = self._better(value + (self.min_delta if self.mode == "min" else -self.min_delta), self.best)
        tolerated = self.tolerance is not None and not self._better(self.tolerance, value)
        # a healthy check no worse than the best is the better one: more training, no more memorization
        self.improved = improved or (tolerated and not self._better(self.best, value))
        if improved:
            self.best = value
        if improved or tolerated:
            self.wait_count = 0
            return None
        self.wait_count += 1
        if self.wait_count >= self.patience:
            return f"{self.monitor} did not improve for {self.wait_count} checks (best {self.best:.4g})"
        return None

    def update(self, metrics: Mapping[str, Any], step: int, distributed: Any = None) -> bool:
        """Feeds one check's metrics; returns True (on every rank) when training should stop.

        Args:
            metrics: ``CheckResult.metrics``, or Lightning's ``trainer.callback_metrics`` (``mmh/`` keys, tensor
                values), like ``EarlyStopping`` reads them; a missing metric (not available yet) is skipped.
            step: the training step of the check.
            distributed: a :class:`~mmh_train.distributed.DistributedOps` to OR the decision over ranks.
        """
        self.improved = False
        values = {str(key).removeprefix("mmh/"): value for key, value in metrics.items()}
        if self.monitor not in values:
            return False
        reason = self._decide(float(values[self.monitor]))
        if self.improved:
            self.best_step = step
        stop = reason is not None
        if distributed is not None:
            stop = distributed.any(stop)
        if stop and self.stopped_step is None:
            self.stopped_step, self.reason = step, reason or "another rank decided to stop"
        return stop

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait_count": self.wait_count, "stopped_step": self.stopped_step, "reason": self.reason,
                "best_step": self.best_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait_count = state["best"], state["wait_count"]
        self.stopped_step, self.reason = state["stopped_step"], state["reason"]
        self.best_step = state.get("best_step")
