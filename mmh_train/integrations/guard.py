"""MemorizationGuard: the monitor, the labels and the three remedies for a plain (accelerate) loop.

    guard = MemorizationGuard(monitor, stopper=MemorizationStopper("od_fraction", patience=2))
    accelerator.register_for_checkpointing(guard)
    for step, (x0, _, index) in enumerate(loader, start=1):
        loss = guard.weighted_loss(per_sample_loss, index) + guard.penalty(denoiser, x0, step)
        accelerator.backward(loss); optimizer.step(); optimizer.zero_grad()
        guard.maybe_check(denoiser, step)          # every rank, same steps (collectives inside)
        if guard.should_stop:
            break

``denoiser`` wraps the network as :func:`~mmh_train.raw_network` sees it:
``mmh_train.diffusers_denoiser(mmh_train.raw_network(model), noise_scheduler)``; it unwraps DDP and
``torch.compile`` and bypasses accelerate's mixed-precision wrapper without removing it from the model that
trains (``accelerator.unwrap_model(model, keep_fp32_wrapper=False)`` removes it for good: never use it here).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..audit import audit_csv
from ..data.indexed import check_indices
from ..io import write_text_atomic
from ..distributed import DistributedOps, default_ops
from ..monitor import CheckResult, MemorizationMonitor
from ..parameterizations import as_denoiser
from ..remedies import AdaptiveDuplicateWeights, PenaltySchedule, penalty_on_rows, weighted_loss
from .stopping import MemorizationStopper

__all__ = ["MemorizationGuard"]


class MemorizationGuard:
    """Bundles a monitor with optional remedies; every part is optional except the monitor.

    Args:
        monitor: a :class:`~mmh_train.monitor.MemorizationMonitor`.
        weights: duplicate-aware per-sample weights (adapted when the monitor labels DD).
        penalty: schedule of the LID penalty (its weight stays 0 until OD appears, unless always on).
        stopper: early stopping on one of the monitor's metrics.
        restore_best_weights: with a stopper, keep a CPU copy of the networks' weights at the best check
            (the first, on ties) and load it into them when the stopper stops training, like
            :class:`~mmh_train.callbacks.MemorizationEarlyStopping`. Costs one copy of the weights in memory.
        penalty_sigma, penalty_probes, penalty_subset: FLIPD settings inside the penalty; ``penalty_sigma=None``
            (default) takes the monitor's primary σ, where the per-point targets were measured.
        seed: the penalty's probes come from a generator seeded with ``seed + rank``.
        distributed: collectives; default ``torch.distributed`` when initialized.
    """

    def __init__(self, monitor: MemorizationMonitor, *, weights: AdaptiveDuplicateWeights | None = None,
                 penalty: PenaltySchedule | None = None, stopper: MemorizationStopper | None = None,
                 penalty_sigma: float | None = None, penalty_probes: int = 1, penalty_subset: int | None = 16, seed: int = 0,
                 distributed: DistributedOps | None = None, restore_best_weights: bool = False) -> None:
        if not isinstance(monitor, MemorizationMonitor):
            raise TypeError(f"monitor must be a mmh_train.MemorizationMonitor; got {type(monitor).__name__}.")
        if restore_best_weights and stopper is None:
            raise ValueError("restore_best_weights=True needs a stopper: pass stopper=MemorizationStopper(...).")
        self.monitor, self.weights, self.schedule, self.stopper = monitor, weights, penalty, stopper
        self.penalty_sigma = monitor.sigmas[0] if penalty_sigma is None else penalty_sigma
        self.penalty_probes, self.penalty_subset = penalty_probes, penalty_subset
        self.seed, self.distributed = seed, distributed
        self.should_stop = False
        self.restore_best_weights = restore_best_weights
        self.best_weights: list[dict[str, Tensor]] | None = None  # per network of the denoiser, on CPU
        self.restored_step: int | None = None
        self.last_result: CheckResult | None = None
        self._generator: torch.Generator | None = None
        self._generator_state: Tensor | None = None  # restored lazily on the device of the first batch

    def _ops(self) -> DistributedOps:
        return self.distributed or default_ops()

    def maybe_check(self, denoiser: Any, step: int, *, epoch: int | None = None, epoch_end: bool = False) -> CheckResult | None:
        """Runs the monitor at its cadence and feeds the remedies and the stopper with the result."""
        networks = as_denoiser(denoiser).modules() if self.restore_best_weights else []
        if self.restore_best_weights and not networks:  # before any work
            raise TypeError("restore_best_weights=True needs a denoiser around an nn.Module (e.g. "
                            "mmh_train.diffusers_denoiser(unet, scheduler)); this one wraps a plain callable, "
                            "whose weights the guard cannot copy.")
        result = self.monitor.maybe_check(denoiser, step, epoch=epoch, epoch_end=epoch_end)
        if result is None:
            return None
        self.last_result = result
        if self.weights is not None:
            self.weights.update(result)
        if self.schedule is not None:
            self.schedule.update(result)
        if self.stopper is not None and self.stopper.update(result.metrics, step, self._ops()):
            self.should_stop = True
        if self.restore_best_weights:
            if self.stopper.improved:
                self.best_weights = [{k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
                                     for net in networks]
            if self.should_stop and self.best_weights is not None and self.restored_step is None:
                for net, weights in zip(networks, self.best_weights):
                    net.load_state_dict(weights)
                self.restored_step = self.stopper.best_step
        return result

    def write_audit(self, path: str | os.PathLike) -> Path:
        """Writes the per-sample audit table of the latest check to ``path`` (CSV, atomically; rank 0 only).

        One row per probe: its LID_θ at every check, the verdict (label, score, p-value, rule), whether the
        data duplicate it and its duplicate group (see :func:`mmh_train.audit.audit_csv`). Call it after
        ``maybe_check`` returned a result, e.g. ``if guard.maybe_check(den, step): guard.write_audit(path)``.
        """
        if self.last_result is None:
            raise RuntimeError("no check has run yet: call guard.maybe_check(...) first; the audit table is "
                               "the per-sample record of the checks.")
        path = Path(path)
        if self._ops().rank == 0:
            write_text_atomic(path, audit_csv(self.monitor, self.last_result))
        return path

    def weighted_loss(self, per_sample_loss: Tensor, indices: Tensor | None) -> Tensor:
        """Σ w[index]·loss / B with the duplicate weights; the plain mean without them."""
        if self.weights is None:
            return per_sample_loss.mean()
        indices = check_indices(indices, len(self.weights.weights), allow_repeats=True)
        w = self.weights.weights.to(per_sample_loss.device)[indices.to(per_sample_loss.device)]
        return weighted_loss(per_sample_loss, w.to(per_sample_loss.dtype))

    def penalty(self, denoiser: Any, x: Tensor, step: int, indices: Tensor | None = None) -> Tensor:
        """weight(step) · LID penalty on the batch ``x`` (``[B, ...]``); exactly 0 (no extra work) while off.

        A per-point schedule (``PenaltySchedule(n_points=N)``) acts only on the rows whose dataset index
        (``indices [B]``) the monitor labelled OD, each with its own target at the σ that decided it; a
        global one on every row at ``penalty_sigma``.
        """
        if self.schedule is not None and self.schedule.per_point and indices is None:  # before any point is flagged
            raise ValueError("the per-point LID penalty needs the batch's dataset indices: call "
                             "guard.penalty(denoiser, x0, step, indices=index) (wrap the dataset in "
                             "mmh_train.data.IndexedDataset), or build PenaltySchedule without n_points.")
        weight = self.schedule.weight(step) if self.schedule is not None else 0.0
        if weight == 0.0:
            return torch.zeros((), device=x.device, dtype=x.dtype)
        if self._generator is None:
            self._generator = torch.Generator(device=x.device).manual_seed(self.seed + self._ops().rank)
            if self._generator_state is not None:  # resumed: the saved stream, on the batch's device
                self._generator.set_state(self._generator_state)
        if indices is not None:
            indices = check_indices(indices, len(self.schedule.point_target) if self.schedule.per_point else None,
                                    allow_repeats=True)
        rows, target, sigma = self.schedule.targets_for(indices, x.shape[0])
        return penalty_on_rows(denoiser, x, self.penalty_sigma if sigma is None else sigma, rows, target, weight,
                               n_probes=self.penalty_probes, subset=self.penalty_subset, generator=self._generator)

    def state_dict(self) -> dict[str, Any]:
        """Everything to resume (for ``accelerator.register_for_checkpointing``)."""
        return {
            "monitor": self.monitor.state_dict(),
            "weights": self.weights.state_dict() if self.weights is not None else None,
            "penalty": self.schedule.state_dict() if self.schedule is not None else None,
            "stopper": self.stopper.state_dict() if self.stopper is not None else None,
            "should_stop": self.should_stop,
            "best_weights": self.best_weights,
            "restored_step": self.restored_step,
            "generator": self._generator.get_state() if self._generator is not None else self._generator_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.monitor.load_state_dict(state["monitor"])
        for part, key in ((self.weights, "weights"), (self.schedule, "penalty"), (self.stopper, "stopper")):
            if part is not None and state[key] is not None:
                part.load_state_dict(state[key])
        self.should_stop = state["should_stop"]
        self.best_weights, self.restored_step = state.get("best_weights"), state.get("restored_step")
        self._generator, self._generator_state = None, state["generator"]
        if self.monitor.history:
            self.last_result = self.monitor.result()
