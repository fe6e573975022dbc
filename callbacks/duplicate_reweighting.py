"""DuplicateReweighting: each group of (near-)duplicates weighs as much as one sample."""

from __future__ import annotations

from typing import Any, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from typing_extensions import override

from mmh_train.memorization import DD
from mmh_train.probes import dataset_size, gather_points
from mmh_train.remedies import DistributedWeightedSampler, downweight, duplicate_weights, find_duplicate_groups

from .lid_monitor import LIDMonitor
from .mixin import require_mixin

__all__ = ["DuplicateReweighting"]


class DuplicateReweighting(Callback):
    """Finds duplicate groups in the training set once and gives each group a total weight.

    The weights reach training as per-sample loss weights through
    :meth:`MemorizationMixin.mmh_weighted_loss` (default; DDP-trivial), or as a sampler:
    build the train loader with :meth:`sampler` and ``Trainer(use_distributed_sampler=False)``.

    Args:
        train_data: tensor ``[N, ...]`` or map-style dataset (the same indexing as the loader's indices).
        radius: near-duplicate radius in pixel space (or in ``features`` space); 0 finds exact copies only.
        features: ``[N, F]`` features to measure nearness in (e.g. embeddings), optional.
        group_weight: total weight of a group, in samples (default 1: a group weighs one sample).
        cap: alternatively, a group of m copies weighs min(m, cap).
        dd_factor: when set, multiply the weights of every group that the LIDMonitor labels DD by this
            factor after each check (adaptive reweighting).
        seed: the sampler's shared seed (identical on every rank).
    """

    def __init__(self, train_data: Tensor | Sequence[Any], *, radius: float = 0.0, features: Tensor | None = None,
                 group_weight: float = 1.0, cap: float | None = None, dd_factor: float | None = None,
                 seed: int = 0) -> None:
        super().__init__()
        if dd_factor is not None and not 0.0 <= dd_factor <= 1.0:
            raise ValueError(f"dd_factor must lie in [0, 1] (a multiplier for DD-labelled groups); got {dd_factor}.")
        self.train_data, self.radius, self.features = train_data, radius, features
        self.group_weight, self.cap, self.dd_factor, self.seed = group_weight, cap, dd_factor, seed
        self.groups = None
        self.weights: Tensor | None = None
        self._sampler: DistributedWeightedSampler | None = None
        self._last_check_step: int | None = None
        self.downweighted: Tensor | None = None  # [N] bool: groups already multiplied by dd_factor

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(radius=self.radius, group_weight=self.group_weight, cap=self.cap,
                                        dd_factor=self.dd_factor)

    def _ensure_weights(self) -> Tensor:
        if self.weights is None:
            data = gather_points(self.train_data, torch.arange(dataset_size(self.train_data)))
            self.groups = find_duplicate_groups(data, radius=self.radius, features=self.features)
            self.weights = duplicate_weights(self.groups, group_weight=self.group_weight, cap=self.cap)
        return self.weights

    def sampler(self, num_samples: int | None = None) -> DistributedWeightedSampler:
        """A weighted sampler drawing the same sequence on every rank from ``seed`` and keeping its shard."""
        if self._sampler is None:
            self._sampler = DistributedWeightedSampler(self._ensure_weights(), num_samples, seed=self.seed)
        return self._sampler

    @override
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        require_mixin(pl_module, "DuplicateReweighting")
        pl_module._mmh_sample_weights = self._ensure_weights()
        for callback in trainer.callbacks:
            if isinstance(callback, LIDMonitor):
                callback.duplicate_groups = self.groups.group

    def _monitor(self, trainer: "pl.Trainer") -> LIDMonitor | None:
        return next((cb for cb in trainer.callbacks if isinstance(cb, LIDMonitor)), None)

    @override
    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        monitor = self._monitor(trainer) if self.dd_factor is not None else None
        result = monitor.last_result if monitor is not None else None
        if result is None or result.labels is None or result.step == self._last_check_step:
            return
        self._last_check_step = result.step
        dd_points = result.train_index[result.labels.label == DD]
        in_dd_group = torch.isin(self.groups.group, self.groups.group[dd_points])
        if self.downweighted is None:
            self.downweighted = torch.zeros_like(in_dd_group)
        new = in_dd_group & ~self.downweighted  # each group is down-weighted once, not at every check
        if not bool(new.any()):
            return
        self.downweighted |= new
        self.weights = downweight(self.weights, new, self.dd_factor)
        pl_module._mmh_sample_weights = self.weights
        if self._sampler is not None:
            self._sampler.set_weights(self.weights)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "last_check_step": self._last_check_step, "downweighted": self.downweighted}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._ensure_weights()
        self.weights, self._last_check_step = state_dict["weights"], state_dict["last_check_step"]
        self.downweighted = state_dict.get("downweighted")
        if self._sampler is not None and self.weights is not None:
            self._sampler.set_weights(self.weights)
