"""LIDPenaltyController: switches the LID penalty on when OD-Mem appears and schedules its weight."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from mmh_train.remedies import PenaltySchedule

from .mixin import require_mixin
from .runtime import guard_for

__all__ = ["LIDPenaltyController"]


class LIDPenaltyController(Callback):
    """Configures :meth:`MemorizationMixin.mmh_lid_penalty` and sets its weight over training.

    The schedule lives in the module's guard (:func:`~mmh_train.callbacks.guard_of`), which the monitor's
    checks update. The weight is 0 until the :class:`LIDMonitor` reports an OD fraction above ``od_threshold`` (or from
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
                                        always_on=always_on, target=target, per_point=per_point)
        self.options = {"penalty_sigma": sigma, "penalty_probes": n_probes, "penalty_subset": subset, "seed": seed}
        self.guard = None
        self._step = 0

    @property
    @override
    def state_key(self) -> str:
        s = self.schedule
        return self._generate_state_key(max_weight=s.max_weight, od_threshold=s.od_threshold,
                                        sigma=self.options["penalty_sigma"], per_point=self.per_point)

    @property
    def activated_at(self) -> int | None:
        return self.schedule.activated_at

    @property
    def target(self) -> float | None:
        return self.schedule.target

    @property
    def sigma(self) -> float | None:
        """The penalty's noise level (the monitor's primary σ unless given)."""
        return self.guard.penalty_sigma if self.guard is not None else self.options["penalty_sigma"]

    @property
    def weight(self) -> float:
        """The weight at the latest step the Trainer reached."""
        return self.schedule.weight(self._step)

    @override
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        require_mixin(pl_module, "LIDPenaltyController")
        if not callable(getattr(pl_module, "denoiser", None)):
            raise TypeError(f"LIDPenaltyController measures LID through the model as a denoiser: define `def "
                            f"denoiser(self)` on {type(pl_module).__name__} returning e.g. "
                            f"mmh_train.diffusers_denoiser(self.unet, self.noise_scheduler).")
        self.guard = guard_for(trainer, pl_module).attach(penalty=self.schedule, **self.options)

    @override
    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self.guard.validate()  # every callback has attached its part by now

    @override
    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._step = trainer.global_step

    @override
    def state_dict(self) -> dict[str, Any]:
        if self.guard is None:
            return self.schedule.state_dict()
        return self.guard.part_state("penalty")

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.guard is None:  # loaded outside a fit: the schedule alone
            self.schedule.load_state_dict(state_dict)
        else:
            self.guard.load_part_state("penalty", state_dict)
