"""DuplicateReweighting: each group of (near-)duplicates weighs as much as one sample."""

from __future__ import annotations

from typing import Any, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from typing_extensions import override

from mmh_train.probes import dataset_size, gather_points
from mmh_train.remedies import AdaptiveDuplicateWeights, DistributedWeightedSampler, find_duplicate_groups

from .mixin import require_mixin
from .runtime import guard_for

__all__ = ["DuplicateReweighting"]


class DuplicateReweighting(Callback):
    """Finds duplicate groups in the training set once and gives each group a total weight.

    The weights are the guard's (:func:`~mmh_train.callbacks.guard_of`): the monitor's checks down-weight
    DD-labelled groups there. They reach training as per-sample loss weights through
    :meth:`MemorizationMixin.mmh_weighted_loss` (default; DDP-trivial), or as a sampler:
    build the train loader with :meth:`sampler` and ``Trainer(use_distributed_sampler=False)``.

    Args:
        train_data: tensor ``[N, ...]`` or map-style dataset (the same indexing as the loader's indices), read
            whole to find the groups; ``None`` (default) takes the groups of the LIDMonitor's streamed survey of
            the data, the same groups its DD verdicts use (then ``radius`` and ``features`` do not apply).
        radius: near-duplicate radius in pixel space (or in ``features`` space); 0 finds exact copies only.
        features: ``[N, F]`` features to measure nearness in (e.g. embeddings), optional.
        group_weight: total weight of a group, in samples (default 1: a group weighs one sample).
        cap: alternatively, a group of m copies weighs min(m, cap).
        dd_factor: when set, multiply the weights of every group that the LIDMonitor labels DD by this
            factor, once per group (adaptive reweighting).
        seed: the sampler's shared seed (identical on every rank).
    """

    def __init__(self, train_data: Tensor | Sequence[Any] | None = None, *, radius: float = 0.0, features: Tensor | None = None,
                 group_weight: float = 1.0, cap: float | None = None, dd_factor: float | None = None,
                 seed: int = 0) -> None:
        super().__init__()
        if dd_factor is not None and not 0.0 <= dd_factor <= 1.0:
            raise ValueError(f"dd_factor must lie in [0, 1] (a multiplier for DD-labelled groups); got {dd_factor}.")
        self.train_data, self.radius, self.features = train_data, radius, features
        self.group_weight, self.cap, self.dd_factor, self.seed = group_weight, cap, dd_factor, seed
        self.adaptive: AdaptiveDuplicateWeights | None = None
        self._sampler: DistributedWeightedSampler | None = None
        self._pushed: Tensor | None = None  # the weights the sampler draws with
        self.guard = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(radius=self.radius, group_weight=self.group_weight, cap=self.cap,
                                        dd_factor=self.dd_factor)

    def _ensure(self) -> AdaptiveDuplicateWeights:
        if self.adaptive is None:
            if self.train_data is not None:
                data = gather_points(self.train_data, torch.arange(dataset_size(self.train_data)))
                groups = find_duplicate_groups(data, radius=self.radius, features=self.features)
            elif self.guard is not None and self.guard.monitor is not None:
                groups = self.guard.monitor.data_survey().groups
            else:
                raise ValueError("DuplicateReweighting() without train_data takes the LIDMonitor's duplicate groups: "
                                 "add an LIDMonitor to the Trainer, or pass the training data "
                                 "(DuplicateReweighting(train_data)); a sampler needs train_data.")
            self.adaptive = AdaptiveDuplicateWeights(groups, group_weight=self.group_weight, cap=self.cap,
                                                     dd_factor=self.dd_factor)
        return self.adaptive

    @property
    def weights(self) -> Tensor:
        """``[N]`` current per-sample weights (mean 1)."""
        return self._ensure().weights

    def sampler(self, num_samples: int | None = None) -> DistributedWeightedSampler:
        """A weighted sampler drawing the same sequence on every rank from ``seed`` and keeping its shard."""
        if self._sampler is None:
            self._sampler = DistributedWeightedSampler(self.weights, num_samples, seed=self.seed)
            self._pushed = self.weights
        return self._sampler

    @override
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        require_mixin(pl_module, "DuplicateReweighting")
        self.guard = guard_for(trainer, pl_module)
        if self.train_data is not None:
            self.guard.attach(weights=self._ensure())

    @override
    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self.guard.attach(weights=self._ensure())  # every callback has attached its part by now (the monitor)

    @override
    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._sampler is not None and self._pushed is not self.weights:
            self._push()  # the guard down-weighted DD groups at a check

    @override
    def state_dict(self) -> dict[str, Any]:
        return self._ensure().state_dict()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._ensure().load_state_dict(state_dict)
        if self.guard is not None:
            self.guard.attach(weights=self.adaptive)
        if self._sampler is not None:
            self._push()

    def _push(self) -> None:
        self._sampler.set_weights(self.weights)
        self._pushed = self.weights
