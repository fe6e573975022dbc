"""MemorizationEarlyStopping: early stopping on the monitor's ``mmh/`` metrics, in EarlyStopping's vocabulary."""

from __future__ import annotations

import os
from typing import Any, Optional

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from mmh_train.integrations.stopping import METRIC_MODES, MemorizationStopper

from .runtime import guard_for

__all__ = ["MemorizationEarlyStopping", "MONITORABLE"]

#: Metrics the monitor logs (``mmh/`` + :data:`mmh_train.integrations.stopping.METRIC_MODES`), with the
#: direction in which memorization grows.
MONITORABLE = {f"mmh/{name}": mode for name, mode in METRIC_MODES.items()}


class MemorizationEarlyStopping(Callback):
    """Stops training when memorization grows: the OD fraction, the train/held-out LID gap or the collapse.

    Speaks EarlyStopping's vocabulary (``monitor``, ``mode``, ``patience``, ``min_delta``, ``check_finite``,
    ``verbose``, ``stopping_threshold``, ``divergence_threshold``) and decides after every check of the
    :class:`LIDMonitor` (step and epoch cadences alike), not after validation. The decision is a
    :class:`~mmh_train.MemorizationStopper` in the module's guard (:func:`~mmh_train.callbacks.guard_of`),
    the same as in plain loops; its ``update`` also reads Lightning's ``trainer.callback_metrics``.

    Args:
        monitor: one of :data:`MONITORABLE`; default ``"mmh/od_fraction"``.
        tolerance: values on the good side of it never count toward ``patience`` (an OD fraction that
            stays at 0 cannot "improve", and must not stop training). ``"auto"``: 0, except None for
            ``mmh/lid_train`` (a LID is never below 0, so 0 would never let it stop).
        restore_best_weights: load the weights of the best check when training stops: ``True`` keeps one CPU
            copy of the denoiser's networks (in memory and in this callback's checkpoint state), a path one
            file there instead.

    .. note::
        The decision is OR-reduced over ranks; the metrics themselves are identical on every rank, so all
        ranks stop on the same step.
    """

    def __init__(self, monitor: str = "mmh/od_fraction", *, mode: Optional[str] = None, patience: int = 3,
                 min_delta: float = 0.0, tolerance: Optional[float] | str = "auto", check_finite: bool = True,
                 verbose: bool = False, stopping_threshold: Optional[float] = None,
                 divergence_threshold: Optional[float] = None,
                 restore_best_weights: bool | str | os.PathLike = False) -> None:
        super().__init__()
        if monitor not in MONITORABLE:
            raise ValueError(f"monitor={monitor!r} is not a memorization metric; choose one of "
                             f"{', '.join(sorted(MONITORABLE))}.")
        self.monitor, self.verbose, self.restore_best_weights = monitor, verbose, restore_best_weights
        self.stopper = MemorizationStopper(monitor, mode=mode, patience=patience, min_delta=min_delta,
                                           tolerance=tolerance, check_finite=check_finite,
                                           stopping_threshold=stopping_threshold,
                                           divergence_threshold=divergence_threshold)
        self.guard = None
        self._announced = False

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.stopper.mode, tolerance=self.stopper.tolerance)

    @property
    def stopping_reason_message(self) -> Optional[str]:
        """Why training stopped (None while it has not)."""
        return self.stopper.reason

    @property
    def best_step(self) -> Optional[int]:
        """The training step of the best check so far (the latest healthy one, else the first best)."""
        return self.stopper.best_step

    @property
    def restored_step(self) -> Optional[int]:
        """The step whose weights were loaded back when training stopped; None if none."""
        return self.guard.restored_step if self.guard is not None else None

    @property
    def best_weights(self) -> Optional[list[dict[str, Any]]]:
        """The kept weights of the best check, one ``state_dict`` per network of the denoiser; None if none."""
        best = self.guard.best if self.guard is not None else None
        return best.load()["networks"] if best is not None and best.available else None

    @override
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        self.guard = guard_for(trainer, pl_module).attach(stopper=self.stopper,
                                                          restore_best_weights=self.restore_best_weights)
        self.guard.restore_on_stop = False  # Lightning may train on after a stop (min_steps): restore at the end

    @override
    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self.guard.validate()  # e.g. a metric the monitor cannot produce, or no monitor at all

    def _announce(self) -> None:
        if self.stopper.reason is not None and not self._announced:
            self._announced = True
            if self.verbose:
                rank_zero_info(f"MemorizationEarlyStopping: {self.stopper.reason}")

    @override
    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._announce()

    @override
    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._announce()
        self.guard.restore_best()  # the best check's weights, if the stopper stopped and kept them

    @override
    def state_dict(self) -> dict[str, Any]:
        return self.guard.part_state("stopper") if self.guard is not None else self.stopper.state_dict()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "best_score" in state_dict:  # written by the callback when it subclassed Lightning's EarlyStopping
            rank_zero_warn("MemorizationEarlyStopping: this checkpoint holds the old early-stopping state; its "
                           "patience and best step are carried over, its best weights are not (they will be kept "
                           "again from the next improving check).")
            state_dict = {"best": float(state_dict["best_score"]), "wait_count": int(state_dict["wait_count"]),
                          "stopped_step": None, "reason": state_dict.get("stopping_reason_message"),
                          "best_step": state_dict.get("best_step"), "should_stop": False, "restored_step": None,
                          "best_weights": None}
        if self.guard is None:  # loaded outside a fit: the stopper alone
            self.stopper.load_state_dict(state_dict)
        else:
            self.guard.load_part_state("stopper", state_dict)
