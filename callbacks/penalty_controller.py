"""LIDPenaltyController: switches the LID penalty on when OD-Mem appears and schedules its weight."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from typing_extensions import override

from mmh_train.memorization import DD

from .lid_monitor import LIDMonitor
from .mixin import require_mixin

__all__ = ["LIDPenaltyController"]


class LIDPenaltyController(Callback):
    """Configures :meth:`MemorizationMixin.mmh_lid_penalty` and sets its weight over training.

    The weight is 0 until the :class:`LIDMonitor` reports an OD fraction above ``od_threshold`` (or from
    the start with ``always_on``), then ramps linearly to ``max_weight`` over ``ramp_steps`` steps.

    Args:
        max_weight: the penalty's weight once fully on.
        od_threshold: OD fraction that switches it on.
        ramp_steps: steps from 0 to ``max_weight`` after switching on.
        always_on: start at ``max_weight`` without waiting for OD.
        sigma: FLIPD's noise level in the penalty.
        target: LID below which FLIPD is penalized; ``None`` uses the median LID* of the monitor's
            training probes that are not DD (requires a monitor with a reference).
        n_probes: Hutchinson probes (1: one forward + one VJP with double backward).
        subset: how many points of each batch the penalty evaluates (cost bound).
        seed: probes come from a generator seeded with ``seed + rank`` (different per rank, resumable).
    """

    def __init__(self, *, max_weight: float = 0.1, od_threshold: float = 0.05, ramp_steps: int = 0,
                 always_on: bool = False, sigma: float = 0.1, target: float | None = None, n_probes: int = 1,
                 subset: int | None = 16, seed: int = 0) -> None:
        super().__init__()
        if not max_weight >= 0:
            raise ValueError(f"max_weight must be ≥ 0; got {max_weight}.")
        if ramp_steps < 0:
            raise ValueError(f"ramp_steps must be ≥ 0; got {ramp_steps}.")
        self.max_weight, self.od_threshold, self.ramp_steps = float(max_weight), od_threshold, ramp_steps
        self.always_on, self.sigma, self.target, self.n_probes, self.subset = always_on, sigma, target, n_probes, subset
        self.seed = seed
        self.activated_at: int | None = 0 if always_on else None
        self.weight = 0.0
        self._generator: torch.Generator | None = None
        self._generator_state: Tensor | None = None
        self._rank = 0

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(max_weight=self.max_weight, od_threshold=self.od_threshold, sigma=self.sigma)

    def generator(self, device: torch.device) -> torch.Generator:
        """The per-rank probe generator (one stream for the whole run, restored on resume)."""
        if self._generator is None:
            self._generator = torch.Generator(device=device).manual_seed(self.seed + self._rank)
            if self._generator_state is not None:
                self._generator.set_state(self._generator_state)
        return self._generator

    def target_for(self, indices: Tensor | None, x: Tensor) -> float:
        """The LID target of the penalty (a float for now: per-point targets need every point's LID*)."""
        if self.target is None:
            raise RuntimeError("the penalty target is unknown: pass target=... or add an LIDMonitor with a reference.")
        return float(self.target)

    @override
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        require_mixin(pl_module, "LIDPenaltyController")
        pl_module._mmh_penalty = self
        self._rank = trainer.global_rank
        if self.target is None and not any(isinstance(cb, LIDMonitor) and cb.monitor.reference.kind is not None
                                           for cb in trainer.callbacks):
            raise ValueError("LIDPenaltyController(target=None) takes the target from an LIDMonitor's reference LID*; "
                             "add LIDMonitor(..., reference='data') or pass target=<the data's LID>.")
        self._update_weight(trainer.global_step)

    def _update_weight(self, step: int) -> None:
        if self.activated_at is None:
            self.weight = 0.0
        elif self.ramp_steps == 0:
            self.weight = self.max_weight
        else:
            self.weight = self.max_weight * min(1.0, (step - self.activated_at) / self.ramp_steps)

    @override
    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        monitor = next((cb for cb in trainer.callbacks if isinstance(cb, LIDMonitor)), None)
        result = monitor.last_result if monitor is not None else None
        if self.activated_at is None and result is not None and result.labels is not None:
            if result.metrics.get("od_fraction", 0.0) > self.od_threshold:
                self.activated_at = trainer.global_step
                if self.target is None:
                    keep = result.labels.label != DD
                    self.target = float(result.labels.lid_ref[keep].nanmedian())
        self._update_weight(trainer.global_step)

    @override
    def state_dict(self) -> dict[str, Any]:
        state = self._generator.get_state() if self._generator is not None else None
        return {"activated_at": self.activated_at, "target": self.target, "generator_state": state}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.activated_at, self.target = state_dict["activated_at"], state_dict["target"]
        self._generator_state = state_dict.get("generator_state")
        self._generator = None
