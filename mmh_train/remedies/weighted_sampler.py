"""A weighted random sampler that is correct under DDP: one shared draw, sharded by position.

``torch.utils.data.WeightedRandomSampler`` draws from the global RNG, so under DDP each rank draws its
own sequence: ranks overlap, and nothing ties their draws to an epoch. Here every rank holds the same
weights and draws the same full index sequence from a private generator seeded with ``seed + epoch``;
rank r keeps positions r, r + R, r + 2R, … of it. The shards are therefore disjoint slices of one
draw, and together they are exactly the draw a single process would make (up to the padding below).
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import torch
from torch import Tensor
from torch.utils.data import Sampler

__all__ = ["DistributedWeightedSampler"]


def _default_replicas_and_rank() -> tuple[int, int]:
    """torch.distributed's world size and rank when a process group is initialized, else (1, 0)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def _check_weights(weights: Any) -> Tensor:
    """A 1-D, non-negative, finite weight vector with a positive sum, as float64 on the CPU."""
    if not isinstance(weights, Tensor):
        weights = torch.as_tensor(weights)
    if weights.dim() != 1 or weights.numel() == 0 or weights.is_complex() or weights.dtype == torch.bool:
        raise ValueError(f"weights must be a non-empty 1-D real tensor [N] (one weight per dataset index); got "
                         f"shape {tuple(weights.shape)} and dtype {weights.dtype}.")
    w = weights.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or not w.sum() > 0:
        raise ValueError("weights must be finite and ≥ 0 with a positive sum.")
    return w


def _draw(weights: Tensor, n: int, replacement: bool, generator: torch.Generator) -> Tensor:
    """``n`` indices drawn ∝ ``weights`` (float64, CPU) from ``generator``.

    With replacement: inverse-CDF sampling (no category limit, unlike ``torch.multinomial``'s 2^24).
    Without: Gumbel top-k, which draws sequentially without replacement ∝ weights.
    """
    if replacement:
        cdf = torch.cumsum(weights, 0)
        u = torch.rand(n, generator=generator, dtype=torch.float64) * cdf[-1]
        return torch.searchsorted(cdf, u, right=True).clamp_(max=weights.numel() - 1)
    u = torch.rand(weights.numel(), generator=generator, dtype=torch.float64).clamp_(min=1e-300)
    keys = torch.log(weights) - torch.log(-torch.log(u))  # log w + Gumbel noise; zero weights read −inf
    return torch.topk(keys, n, sorted=True).indices


class DistributedWeightedSampler(Sampler[int]):
    """Samples dataset indices ∝ ``weights``, one shared draw per epoch split across DDP ranks.

    Each epoch, every rank draws the same ``num_samples`` indices from a ``torch.Generator`` seeded with
    ``seed + epoch`` and keeps ``indices[rank::num_replicas]``. Call :meth:`set_epoch` at the start of
    every epoch (as with ``DistributedSampler``), or every epoch repeats the same draw.

    Args:
        weights: ``[N]`` non-negative weights, identical on every rank (e.g. :func:`duplicate_weights`).
        num_samples: length of the shared draw per epoch (all ranks together); default N.
        seed: base seed; must be the same on every rank.
        num_replicas: number of ranks; default torch.distributed's world size when initialized, else 1.
        rank: this rank; default torch.distributed's rank when initialized, else 0.
        replacement: draw with replacement (default). Without it ``num_samples`` may not exceed the
            number of positive weights.
        drop_last: when ``num_samples`` is not a multiple of ``num_replicas``, drop the tail of the draw
            (True) or pad it by repeating its first indices (False, default, as ``DistributedSampler``),
            so that every rank yields the same number of indices (DDP needs equal step counts).

    .. note::
        Shard only once. In a plain DDP loop (``torchrun``) the defaults shard. ``accelerator.prepare``
        shards the batches of a prepared DataLoader itself: there pass ``num_replicas=1, rank=0`` so every
        rank yields the identical stream for accelerate to split. In Lightning pass
        ``Trainer(use_distributed_sampler=False)`` so it does not wrap this sampler in its own
        ``DistributedSamplerWrapper``.

    .. note::
        The global RNG is never used. Resample the weights only through :meth:`set_weights`, called
        with the same weights on every rank; :meth:`state_dict` carries epoch, seed and weights.
    """

    def __init__(self, weights: Tensor, num_samples: int | None = None, *, seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None, replacement: bool = True,
                 drop_last: bool = False) -> None:
        default_replicas, default_rank = _default_replicas_and_rank()
        num_replicas = default_replicas if num_replicas is None else num_replicas
        rank = default_rank if rank is None else rank
        if isinstance(num_replicas, bool) or not isinstance(num_replicas, int) or num_replicas < 1:
            raise ValueError(f"num_replicas must be an integer ≥ 1; got {num_replicas!r}.")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be an integer in 0..{num_replicas - 1}; got {rank!r}.")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer (the same on every rank); got {seed!r}.")
        self.weights = _check_weights(weights)
        if num_samples is None:
            num_samples = self.weights.numel()
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be an integer ≥ 1 or None; got {num_samples!r}.")
        if drop_last and num_samples < num_replicas:
            raise ValueError(f"drop_last=True with num_samples={num_samples} < num_replicas={num_replicas} "
                             f"leaves every rank empty; draw more samples.")
        self.num_samples, self.seed = num_samples, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.replacement, self.drop_last = bool(replacement), bool(drop_last)
        self._check_without_replacement(self.weights)
        self.epoch = 0

    def _check_without_replacement(self, weights: Tensor) -> None:
        positive = int((weights > 0).sum())
        if not self.replacement and self.num_samples > positive:
            raise ValueError(f"replacement=False cannot draw num_samples={self.num_samples} distinct indices: "
                             f"only {positive} weight(s) are positive. Lower num_samples or pass replacement=True.")

    @property
    def shard_size(self) -> int:
        """Indices yielded per rank per epoch."""
        if self.drop_last:
            return self.num_samples // self.num_replicas
        return math.ceil(self.num_samples / self.num_replicas)

    def __len__(self) -> int:
        return self.shard_size

    def set_epoch(self, epoch: int) -> None:
        """Selects the draw of ``epoch`` (seeded with ``seed + epoch``); call it on every rank."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an integer ≥ 0; got {epoch!r}.")
        self.epoch = epoch

    def set_weights(self, weights: Tensor) -> None:
        """Replaces the weights (same length) from the next iteration on; call it identically on every rank."""
        new = _check_weights(weights)
        if new.shape != self.weights.shape:
            raise ValueError(f"new weights must keep the dataset's length {self.weights.numel()}; got {new.numel()}.")
        self._check_without_replacement(new)
        self.weights = new

    def full_draw(self) -> Tensor:
        """The shared draw of the current epoch, ``[R·shard_size]`` long, identical on every rank."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        indices = _draw(self.weights, self.num_samples, self.replacement, generator)
        total = self.shard_size * self.num_replicas
        if total > indices.numel():  # pad by wrapping around (at most R − 1 indices)
            indices = torch.cat([indices, indices[: total - indices.numel()]])
        return indices[:total]

    def __iter__(self) -> Iterator[int]:
        return iter(self.full_draw()[self.rank::self.num_replicas].tolist())

    def state_dict(self) -> dict[str, Any]:
        """Epoch, seed and weights: enough to reproduce the next epoch's draw after a restart."""
        return {"epoch": self.epoch, "seed": self.seed, "weights": self.weights.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s output (the weights must keep the dataset's length)."""
        missing = {"epoch", "seed", "weights"} - set(state)
        if missing:
            raise KeyError(f"state is missing {sorted(missing)}; pass a DistributedWeightedSampler.state_dict().")
        self.set_weights(state["weights"])
        self.seed = int(state["seed"])
        self.set_epoch(int(state["epoch"]))
