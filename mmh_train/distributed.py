"""The few collectives the monitor needs, with a single-process default.

Lightning's DDP strategies and accelerate both run on ``torch.distributed``, so one implementation
serves both: :func:`default_ops` picks it when a process group is initialized. Every rank must make the
same calls in the same order (collectives block until all ranks arrive).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["DistributedOps", "LocalOps", "TorchDistributedOps", "default_ops"]


class DistributedOps:
    """Interface: ``rank``, ``world_size`` and an in-place-free sum over ranks."""

    rank: int = 0
    world_size: int = 1

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """The element-wise sum of ``tensor`` over all ranks (same shape, on every rank)."""
        raise NotImplementedError

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on at least one."""
        return bool(self.all_reduce_sum(torch.tensor([float(flag)])).item() > 0)


@dataclass
class LocalOps(DistributedOps):
    """One process: the sum over ranks is the tensor itself."""

    rank: int = 0
    world_size: int = 1

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        return tensor.clone()


class TorchDistributedOps(DistributedOps):
    """``torch.distributed`` collectives; NCCL groups get their tensors moved to the current GPU."""

    def __init__(self) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("torch.distributed is not initialized; use LocalOps() for a single process.")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        nccl = dist.get_backend() == "nccl"
        self.device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        out = tensor.detach().to(self.device, copy=True)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.to(tensor.device)


def default_ops() -> DistributedOps:
    """``TorchDistributedOps`` inside an initialized process group, else ``LocalOps``."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return TorchDistributedOps()
    return LocalOps()
