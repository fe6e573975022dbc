"""MemorizationMixin: the two calls a LightningModule makes in ``training_step``.

A callback cannot replace the loss (and backpropagating from a hook would give each DDP rank different
gradients), so the module calls the remedies that act on the loss itself; the callbacks configure them in
the module's guard (:func:`~mmh_train.callbacks.guard_of`):

    loss = self.mmh_weighted_loss(per_sample_loss, indices) + self.mmh_lid_penalty(x0, indices)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .runtime import guard_of

__all__ = ["MemorizationMixin", "require_mixin"]


def require_mixin(pl_module: Any, callback: str) -> None:
    """Raises a clear error when a remedy callback is used on a module without :class:`MemorizationMixin`."""
    if not isinstance(pl_module, MemorizationMixin):
        raise TypeError(f"{callback} needs its mixin: declare `class {type(pl_module).__name__}"
                        f"(mmh_train.callbacks.MemorizationMixin, pl.LightningModule)` and call "
                        f"self.mmh_weighted_loss(...) / self.mmh_lid_penalty(...) in training_step.")


class MemorizationMixin:
    """Adds :meth:`mmh_weighted_loss` and :meth:`mmh_lid_penalty` to a LightningModule.

    Without the matching callbacks both are inert: weights are 1 and the penalty is 0 (no extra work).
    The module must define ``denoiser()`` (as for :class:`~mmh_train.callbacks.LIDMonitor`).
    """

    def mmh_weighted_loss(self, per_sample_loss: Tensor, indices: Tensor | None) -> Tensor:
        """Σ_b w[index_b]·loss_b / B with the duplicate-aware weights (plain mean without the callback).

        Args:
            per_sample_loss: ``[B]`` loss of each sample of the batch.
            indices: ``[B]`` dataset indices of the batch (wrap the dataset in
                :class:`mmh_train.data.IndexedDataset` to get them).
        """
        guard = guard_of(self)
        return guard.weighted_loss(per_sample_loss, indices) if guard is not None else per_sample_loss.mean()

    def mmh_lid_penalty(self, x: Tensor, indices: Tensor | None = None) -> Tensor:
        """weight · LID penalty on the batch ``x [B, ...]``; 0 (no extra work) while the controller is off.

        With ``LIDPenaltyController(per_point=True)`` it acts only on the rows whose dataset index
        (``indices [B]``) the monitor labelled OD, each with its own target.
        """
        guard = guard_of(self)
        if guard is None or guard.schedule is None:
            return torch.zeros((), device=x.device, dtype=x.dtype)
        return guard.penalty(self.denoiser(), x, self.trainer.global_step, indices)
