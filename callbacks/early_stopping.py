"""MemorizationEarlyStopping: Lightning's EarlyStopping, acting on the monitor's ``mmh/`` metrics."""

from __future__ import annotations

import copy
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping
from torch import Tensor
from typing_extensions import override

from mmh_train.integrations.stopping import METRIC_MODES, default_tolerance

from .lid_monitor import LIDMonitor

__all__ = ["MemorizationEarlyStopping", "MONITORABLE"]

#: Metrics the monitor logs (``mmh/`` + :data:`mmh_train.integrations.stopping.METRIC_MODES`), with the
#: direction in which memorization grows.
MONITORABLE = {f"mmh/{name}": mode for name, mode in METRIC_MODES.items()}


class MemorizationEarlyStopping(EarlyStopping):
    """Stops training when memorization grows: the OD fraction, the train/held-out LID gap or the collapse.

    Speaks EarlyStopping's vocabulary (``monitor``, ``mode``, ``patience``, ``min_delta``, ``check_finite``,
    ``verbose``, ``stopping_threshold``, ``divergence_threshold``) and runs after every check of the
    :class:`LIDMonitor` in the same Trainer (both step and epoch cadences), not after validation.

    Args:
        monitor: one of :data:`MONITORABLE`; default ``"mmh/od_fraction"``.
        tolerance: values on the good side of it never count toward ``patience`` (an OD fraction that
            stays at 0 cannot "improve", and must not stop training). ``"auto"``: 0, except None for
            ``mmh/lid_train`` (a LID is never below 0, so 0 would never let it stop).
        restore_best_weights: load the weights of the best check when training stops.

    .. note::
        The decision is reduced over ranks with ``trainer.strategy.reduce_boolean_decision``; the metrics
        themselves are already identical on every rank, so all ranks stop on the same step.
    """

    def __init__(self, monitor: str = "mmh/od_fraction", *, mode: Optional[str] = None, patience: int = 3,
                 min_delta: float = 0.0, tolerance: Optional[float] | str = "auto", check_finite: bool = True,
                 verbose: bool = False, stopping_threshold: Optional[float] = None,
                 divergence_threshold: Optional[float] = None, restore_best_weights: bool = False) -> None:
        if monitor not in MONITORABLE:
            raise ValueError(f"monitor={monitor!r} is not a memorization metric; choose one of "
                             f"{', '.join(sorted(MONITORABLE))}.")
        mode = mode or MONITORABLE[monitor]
        if mode not in ("min", "max"):
            raise ValueError(f"mode={mode!r} is not supported; choose 'min' or 'max'.")
        if not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience must be an integer ≥ 0 (checks without improvement); got {patience!r}.")
        super().__init__(monitor=monitor, min_delta=min_delta, patience=patience, verbose=verbose, mode=mode,
                         strict=False, check_finite=check_finite, stopping_threshold=stopping_threshold,
                         divergence_threshold=divergence_threshold)
        if isinstance(tolerance, str) and tolerance != "auto":
            raise ValueError(f"tolerance={tolerance!r}; pass a number, None or 'auto'.")
        self.tolerance = default_tolerance(monitor) if tolerance == "auto" else tolerance
        self.restore_best_weights = restore_best_weights
        self.best_weights: Optional[dict[str, Tensor]] = None
        self.best_step: Optional[int] = None  # training step of the best check so far (the first, on ties)
        self._last_check_step: Optional[int] = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode, tolerance=self.tolerance)

    @staticmethod
    def _monitor_callback(trainer: "pl.Trainer") -> LIDMonitor:
        for callback in trainer.callbacks:
            if isinstance(callback, LIDMonitor):
                return callback
        raise ValueError("MemorizationEarlyStopping acts on the checks of an LIDMonitor; add "
                         "mmh_train.callbacks.LIDMonitor(...) to the Trainer's callbacks.")

    @override
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        monitor = self._monitor_callback(trainer).monitor
        if self.monitor in ("mmh/od_fraction", "mmh/dd_fraction") and not monitor.labels_anything:
            raise ValueError(f"{self.monitor} needs labels, but the LIDMonitor labels nothing (reference=None); give "
                             f"it held-out data (the default rule) or reference='data', or monitor mmh/collapse.")
        if self.monitor == "mmh/lid_gap" and not len(monitor.heldout_index):
            raise ValueError("mmh/lid_gap compares train and held-out probes, but the LIDMonitor has no held-out "
                             "data; pass heldout_data=... to it, or monitor mmh/od_fraction or mmh/collapse.")

    def _within_tolerance(self, current: Tensor) -> bool:
        if self.tolerance is None or not torch.isfinite(current):
            return False
        return bool(current <= self.tolerance) if self.mode == "min" else bool(current >= self.tolerance)

    @override
    def _evaluate_stopping_criteria(self, current: Tensor) -> tuple[bool, Optional[str]]:
        if self._within_tolerance(current) and not self._hits_threshold(current):
            if self.monitor_op(current - self.min_delta, self.best_score.to(current.device)):
                self.best_score = current
            self.wait_count = 0
            return False, None
        return super()._evaluate_stopping_criteria(current)

    def _hits_threshold(self, current: Tensor) -> bool:
        return self.stopping_threshold is not None and bool(self.monitor_op(current, self.stopping_threshold))

    def _on_new_check(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        result = self._monitor_callback(trainer).last_result
        if result is None or result.step == self._last_check_step or trainer.sanity_checking:
            return
        self._last_check_step = result.step
        if self.monitor.removeprefix("mmh/") not in result.metrics:
            return  # not available yet (the collapse needs early_checks + 1 checks)
        current = torch.tensor(result.metrics[self.monitor.removeprefix("mmh/")])
        best_before = self.best_score.clone()
        should_stop, reason = self._evaluate_stopping_criteria(current)
        if not torch.equal(self.best_score, best_before):
            self.best_step = result.step
        if self.restore_best_weights and not torch.equal(self.best_score, best_before):
            self.best_weights = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        should_stop = trainer.strategy.reduce_boolean_decision(should_stop, all=False)
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop:
            self.stopped_epoch = trainer.current_epoch
            self.stopping_reason_message = reason
            self._log_info(trainer, reason or f"{self.monitor} stopped training", self.log_rank_zero_only)

    @override
    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._on_new_check(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._on_new_check(trainer, pl_module)

    @override
    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        return  # acts on monitor checks, not on validation

    @property
    def restored_step(self) -> Optional[int]:
        """The step whose weights were (or will be, at the end of training) loaded back; None if none."""
        if self.restore_best_weights and self.best_weights is not None and self.stopping_reason_message is not None:
            return self.best_step
        return None

    @override
    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.restored_step is not None:
            pl_module.load_state_dict(copy.deepcopy(self.best_weights))

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "last_check_step": self._last_check_step, "best_weights": self.best_weights,
                "best_step": self.best_step}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._last_check_step = state_dict.get("last_check_step")
        self.best_weights = state_dict.get("best_weights")
        self.best_step = state_dict.get("best_step")
