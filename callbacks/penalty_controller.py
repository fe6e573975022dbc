"""LIDPenaltyController: switches the LID penalty on when OD-Mem appears and schedules its weight."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from typing_extensions import override

from mmh_train.probes import dataset_size
from mmh_train.remedies import PenaltySchedule

from .lid_monitor import LIDMonitor
from .mixin import require_mixin

__all__ = ["LIDPenaltyController"]


class LIDPenaltyController(Callback):
    """Configures :meth:`MemorizationMixin.mmh_lid_penalty` and sets its weight over training.

    The weight is 0 until the :class:`LIDMonitor` reports an OD fraction above ``od_threshold`` (or from
    the start with ``always_on``), then ramps linearly to ``max_weight`` over ``ramp_steps`` steps
    (:class:`mmh_train.remedies.PenaltySchedule`).

    Args:
        max_weight, od_threshold, ramp_steps, always_on, target: see ``PenaltySchedule``; ``target=None``
            takes the median LID* of the monitor's non-DD training probes when the penalty switches on.
        per_point: act only on the points the monitor labels OD, each with its own target (the LID it was
            compared with), instead of on every point once the OD fraction exceeds ``od_threshold``. Needs
            the batch's dataset indices in ``mmh_lid_penalty(x, indices)``.
        sigma: FLIPD's noise level in the penalty; None (default) takes the LIDMonitor's primary σ.
        n_probes: Hutchinson probes (1: one forward + one VJP with double backward).
        subset: how many points of each batch the penalty evaluates (cost bound).
        seed: probes come from a generator seeded with ``seed + rank`` (different per rank, resumable).
    """

    def __init__(self, *, max_weight: float = 0.1, od_threshold: float = 0.05, ramp_steps: int = 0,
                 always_on: bool = False, sigma: float | None = None, target: float | None = None,
                 n_probes: int = 1, subset: int | None = 16, seed: int = 0, per_point: bool = False) -> None:
        super().__init__()
        self.per_point = per_point
        self.schedule = PenaltySchedule(max_weight=max_weight, od_threshold=od_threshold, ramp_steps=ramp_steps,
                                        always_on=always_on, target=target)
        self.sigma, self.n_probes, self.subset, self.seed = sigma, n_probes, subset, seed
        self.weight = 0.0
        self._generator: torch.Generator | None = None
        self._generator_state: Tensor | None = None
        self._rank = 0

    @property
    @override
    def state_key(self) -> str:
        s = self.schedule
        return self._generate_state_key(max_weight=s.max_weight, od_threshold=s.od_threshold, sigma=self.sigma,
                                        per_point=self.per_point)

    @property
    def activated_at(self) -> int | None:
        return self.schedule.activated_at

    @property
    def target(self) -> float | None:
        return self.schedule.target

    def generator(self, device: torch.device) -> torch.Generator:
        """The per-rank probe generator (one stream for the whole run, restored on resume)."""
        if self._generator is None:
            self._generator = torch.Generator(device=device).manual_seed(self.seed + self._rank)
            if self._generator_state is not None:
                self._generator.set_state(self._generator_state)
        return self._generator

    @override
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        require_mixin(pl_module, "LIDPenaltyController")
        if not callable(getattr(pl_module, "denoiser", None)):
            raise TypeError(f"LIDPenaltyController measures LID through the model as a denoiser: define `def "
                            f"denoiser(self)` on {type(pl_module).__name__} returning e.g. "
                            f"mmh_train.diffusers_denoiser(self.unet, self.noise_scheduler).")
        pl_module._mmh_penalty = self
        self._rank = trainer.global_rank
        monitor = next((cb.monitor for cb in trainer.callbacks if isinstance(cb, LIDMonitor)), None)
        if self.sigma is None:
            if monitor is None:
                raise ValueError("LIDPenaltyController(sigma=None) takes the LIDMonitor's primary σ; add an LIDMonitor "
                                 "or pass sigma=<noise level>.")
            self.sigma = monitor.sigmas[0]
        if self.per_point and self.schedule.point_target.numel() == 0:
            if monitor is None:
                raise ValueError("LIDPenaltyController(per_point=True) acts on the points an LIDMonitor labels OD; "
                                 "add an LIDMonitor.")
            self.schedule = PenaltySchedule(max_weight=self.schedule.max_weight, od_threshold=self.schedule.od_threshold,
                                            ramp_steps=self.schedule.ramp_steps, target=self.schedule.target,
                                            always_on=self.schedule.activated_at == 0,
                                            n_points=dataset_size(monitor.train_data))
        if (self.schedule.target is None and not self.per_point
                and not any(isinstance(cb, LIDMonitor) and cb.monitor.labels_anything for cb in trainer.callbacks)):
            raise ValueError("LIDPenaltyController(target=None) takes the target from an LIDMonitor's reference LID*; "
                             "add LIDMonitor(..., reference='data') or pass target=<the data's LID>.")
        self.weight = self.schedule.weight(trainer.global_step)

    @override
    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        # after a resume the schedule was restored after setup: the first step must already carry its weight
        self.weight = self.schedule.weight(trainer.global_step)

    @override
    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        monitor = next((cb for cb in trainer.callbacks if isinstance(cb, LIDMonitor)), None)
        self.schedule.update(monitor.last_result if monitor is not None else None)
        self.weight = self.schedule.weight(trainer.global_step)

    @override
    def state_dict(self) -> dict[str, Any]:
        state = self._generator.get_state() if self._generator is not None else None
        return {**self.schedule.state_dict(), "generator_state": state}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state_dict)
        self._generator_state = state_dict.get("generator_state")
        self._generator = None
