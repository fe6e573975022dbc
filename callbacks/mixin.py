"""MemorizationMixin: the two calls a LightningModule makes in ``training_step``.

A callback cannot replace the loss (and backpropagating from a hook would give each DDP rank different
gradients), so the remedies that act on the loss are pure functions the module calls itself; the
callbacks only configure them:

    loss = self.mmh_weighted_loss(per_sample_loss, indices) + self.mmh_lid_penalty(x0, indices)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mmh_train.data.indexed import check_indices
from mmh_train.remedies import penalty_on_rows, weighted_loss

if TYPE_CHECKING:
    from .penalty_controller import LIDPenaltyController

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

    _mmh_sample_weights: Tensor | None = None
    _mmh_penalty: "LIDPenaltyController | None" = None

    def mmh_weighted_loss(self, per_sample_loss: Tensor, indices: Tensor | None) -> Tensor:
        """Σ_b w[index_b]·loss_b / B with the duplicate-aware weights (plain mean without the callback).

        Args:
            per_sample_loss: ``[B]`` loss of each sample of the batch.
            indices: ``[B]`` dataset indices of the batch (wrap the dataset in
                :class:`mmh_train.data.IndexedDataset` to get them).
        """
        if self._mmh_sample_weights is None:
            return per_sample_loss.mean()
        indices = check_indices(indices, len(self._mmh_sample_weights), allow_repeats=True)
        weights = self._mmh_sample_weights.to(per_sample_loss.device)[indices.to(per_sample_loss.device)]
        return weighted_loss(per_sample_loss, weights.to(per_sample_loss.dtype))

    def mmh_lid_penalty(self, x: Tensor, indices: Tensor | None = None) -> Tensor:
        """weight · LID penalty on the batch ``x [B, ...]``; 0 (no extra work) while the controller is off.

        With ``LIDPenaltyController(per_point=True)`` it acts only on the rows whose dataset index
        (``indices [B]``) the monitor labelled OD, each with its own target.
        """
        controller = self._mmh_penalty
        if controller is not None and controller.per_point and indices is None:  # before any point is flagged
            raise ValueError("LIDPenaltyController(per_point=True) needs the batch's dataset indices: call "
                             "self.mmh_lid_penalty(x0, indices) (wrap the dataset in mmh_train.data.IndexedDataset).")
        if controller is None or controller.weight == 0.0:
            return torch.zeros((), device=x.device, dtype=x.dtype)
        schedule = controller.schedule
        if indices is not None and schedule.per_point:
            indices = check_indices(indices, len(schedule.point_target), allow_repeats=True)
        rows, target, sigma = schedule.targets_for(indices, x.shape[0])
        return penalty_on_rows(self.denoiser(), x, controller.sigma if sigma is None else sigma, rows, target,
                               controller.weight,
                               n_probes=controller.n_probes, subset=controller.subset,
                               generator=controller.generator(x.device))
