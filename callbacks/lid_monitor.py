"""LIDMonitor: the Lightning adapter of :class:`mmh_train.monitor.MemorizationMonitor`."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from typing_extensions import override

from mmh_train.monitor import CheckResult, MemorizationMonitor

from .runtime import guard_for

__all__ = ["LIDMonitor"]

DenoiserFn = Callable[["pl.LightningModule"], Any]


class LIDMonitor(Callback):
    """Measures LID_θ on training and held-out probes while the model trains, and labels memorization.

    The check runs in the module's guard (:func:`~mmh_train.callbacks.guard_of`), which feeds the remedy
    callbacks' parts and the stopper; when the stopper says stop, this callback stops the Trainer.

    Logs ``mmh/lid_train``, ``mmh/lid_heldout``, ``mmh/lid_gap``, ``mmh/collapse`` and, with a reference,
    ``mmh/od_fraction`` and ``mmh/dd_fraction``; writes the per-sample audit table (CSV) atomically after
    every check. Every argument not listed here goes to :class:`~mmh_train.monitor.MemorizationMonitor`.

    Args:
        train_data, heldout_data: tensors ``[N, ...]`` or map-style datasets (indexed by dataset index).
        denoiser_fn: ``pl_module -> denoiser``; default calls ``pl_module.denoiser()`` (see
            :func:`mmh_train.diffusers_denoiser`). It receives the raw module, never the DDP wrapper.
        audit_path: CSV path; default ``<trainer.log_dir>/mmh_audit.csv``; ``False`` disables it.

    .. note::
        Under DDP the probes are split over ranks by batch and gathered: every rank must reach the same
        checks, and every rank holds the same table. A check is side-effect free: training with and
        without this callback gives bitwise-identical weights on CPU.

    .. note::
        One LIDMonitor per Trainer: the module's guard holds one monitor, and a second is refused at ``setup``,
        before any work, with the fix named (several noise levels go to one monitor as ``sigma=[...]``). The
        monitor's state sits in the checkpoint where a stateful callback's does (``checkpoint["callbacks"]
        [state_key]``) but is written from ``on_save_checkpoint``, so that Lightning's own check of duplicate
        state keys (raised in ``Trainer(...)`` with no fix named) leaves the refusal to this callback.
    """

    def __init__(self, train_data: Tensor | Sequence[Any], heldout_data: Tensor | Sequence[Any] | None = None, *,
                 denoiser_fn: DenoiserFn | None = None, audit_path: str | os.PathLike | bool | None = None,
                 **monitor_options: Any) -> None:
        super().__init__()
        if audit_path is True:
            audit_path = None
        self.monitor = MemorizationMonitor(train_data, heldout_data, **monitor_options)
        self.denoiser_fn = denoiser_fn
        self.audit_path = audit_path
        self.guard = None

    @property
    @override
    def state_key(self) -> str:
        m = self.monitor
        return self._generate_state_key(sigma=m.sigmas, seed=m.seed, n_train_probes=len(m.train_index),
                                        n_heldout_probes=len(m.heldout_index))

    @property
    def last_result(self) -> CheckResult | None:
        """The latest check's result (None before the first)."""
        return self.guard.last_result if self.guard is not None else None

    @override
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        monitors = [cb for cb in trainer.callbacks if isinstance(cb, LIDMonitor)]
        if len(monitors) > 1:
            raise ValueError(f"this Trainer has {len(monitors)} LIDMonitor callbacks; use one LIDMonitor per Trainer "
                             f"(the module's guard holds one monitor, which the remedies and early stopping read). "
                             f"To watch several noise levels pass sigma=[s1, s2, ...] to one LIDMonitor; to watch "
                             f"more points raise its n_train_probes / n_heldout_probes.")
        if self.denoiser_fn is None and not callable(getattr(pl_module, "denoiser", None)):
            raise TypeError(f"LIDMonitor needs the model as a denoiser: define `def denoiser(self)` on "
                            f"{type(pl_module).__name__} returning e.g. mmh_train.diffusers_denoiser(self.unet, "
                            f"self.scheduler), or pass denoiser_fn=lambda module: ....")
        self.guard = guard_for(trainer, pl_module).attach(monitor=self.monitor)

    @override
    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self.guard.validate()  # every callback has attached its part by now
        every = self.monitor.every_n_steps
        if every is not None and trainer.max_steps and 0 < trainer.max_steps < every:
            warnings.warn(f"LIDMonitor(every_n_steps={every}) with Trainer(max_steps={trainer.max_steps}): no check "
                          f"will run, so nothing is labelled and early stopping cannot act; lower every_n_steps.",
                          RuntimeWarning, stacklevel=2)

    @override
    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self.guard.denoiser = self._denoiser(pl_module)  # what a restore loads into, even before any check
        if self.guard.should_stop:  # resumed from a checkpoint written after the stop
            trainer.should_stop = True

    def _denoiser(self, pl_module: "pl.LightningModule") -> Any:
        return self.denoiser_fn(pl_module) if self.denoiser_fn is not None else pl_module.denoiser()

    def _audit_file(self, trainer: "pl.Trainer") -> Path | None:
        if self.audit_path is False:
            return None
        if self.audit_path is not None:
            return Path(self.audit_path)
        return Path(trainer.log_dir or trainer.default_root_dir) / "mmh_audit.csv"

    def _check(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", *, epoch_end: bool) -> None:
        if trainer.sanity_checking:
            return
        result = self.guard.maybe_check(self._denoiser(pl_module), trainer.global_step, epoch=trainer.current_epoch,
                                        epoch_end=epoch_end)
        if result is None:
            return
        for name, value in result.metrics.items():  # Lightning allows only epoch-level logs at epoch end
            pl_module.log(f"mmh/{name}", float(value), sync_dist=True, on_step=not epoch_end, on_epoch=epoch_end)
        path = self._audit_file(trainer)
        if path is not None:
            self.guard.write_audit(path)
        if self.guard.should_stop:
            trainer.should_stop = True

    @override
    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._check(trainer, pl_module, epoch_end=False)

    @override
    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._check(trainer, pl_module, epoch_end=True)

    @override
    def on_save_checkpoint(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule",
                           checkpoint: dict[str, Any]) -> None:
        checkpoint.setdefault("callbacks", {})[self.state_key] = self.monitor.state_dict()

    @override
    def on_load_checkpoint(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule",
                           checkpoint: dict[str, Any]) -> None:
        state = (checkpoint.get("callbacks") or {}).get(self.state_key)
        if state:
            self.load_monitor_state(state)

    def load_monitor_state(self, state: dict[str, Any]) -> None:
        """Loads a monitor state (what the checkpoint holds under :attr:`state_key`)."""
        if self.guard is None:  # loaded outside a fit: the monitor alone
            self.monitor.load_state_dict(state)
        else:
            self.guard.load_part_state("monitor", state)
