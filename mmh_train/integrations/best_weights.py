"""The weights of the best check, kept once: one CPU copy, or one file, and loaded back when training stops.

What is kept is what the run will save: the networks' ``state_dict`` and, when the guard watches an EMA
(diffusers' ``EMAModel``: its ``shadow_params``), the EMA's weights too; restoring loads both, so the
script's final save (of the live model or of the EMA) writes the weights of the best check.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..io import writable_file, write_bytes_atomic

__all__ = ["BestWeights"]

Snapshot = dict[str, Any]  # {"networks": [state_dict per network], "ema": [Tensor] or None}


def _cpu(t: Tensor) -> Tensor:
    return t.detach().to("cpu", copy=True)


def _trained_state(net: nn.Module) -> dict[str, Any]:
    """The entries of ``net.state_dict()`` that training changes: trainable parameters and buffers (all of it when
    no parameter requires grad)."""
    full = net.state_dict()
    trainable = {name for name, p in net.named_parameters() if p.requires_grad}
    if not trainable:
        return full
    keep = trainable | {name for name, _ in net.named_buffers()}
    return {k: v for k, v in full.items() if k in keep}


class BestWeights:
    """One copy of the best check's weights.

    Args:
        where: ``True`` keeps one CPU copy in memory (it also goes into the guard's ``state_dict``, so a resumed
            run can still restore it); a path writes the copy there (atomically, on rank 0) and the state
            holds only the path.
    """

    def __init__(self, where: bool | str | os.PathLike) -> None:
        if where is True:
            self.path: Path | None = None
        elif isinstance(where, (str, os.PathLike)) and str(where):
            self.path = writable_file(where, "restore_best_weights", "best.pt")  # refused before any work
        else:
            raise TypeError(f"restore_best_weights must be True or a file path for the copy; got {where!r}.")
        self.snapshot: Snapshot | None = None
        self.step: int | None = None

    def kept_at(self, where: bool | str | os.PathLike) -> bool:
        """Whether this keeper keeps its copy where ``where`` asks (so attaching again keeps what it holds)."""
        return (self.path is None) if where is True else (self.path is not None and Path(where) == self.path)

    @staticmethod
    def take(networks: Sequence[nn.Module], ema: Any | None) -> Snapshot:
        """A CPU copy of what training changes in each network (``[dict]``, one per network) and the EMA's weights.

        What training changes: the parameters that require grad, and the buffers. A LoRA fine-tune keeps only
        its adapters (megabytes, not the frozen UNet's gigabytes); a network with nothing trainable, all of it.
        """
        return {"networks": [{k: _cpu(v) for k, v in _trained_state(net).items()} for net in networks],
                "ema": [_cpu(p) for p in ema.shadow_params] if ema is not None else None}

    def keep(self, networks: Sequence[nn.Module], ema: Any | None, step: int, *, rank: int = 0) -> None:
        """Copies the current weights as the best (called at a check that improved on the best)."""
        snapshot = self.take(networks, ema)
        self.step = step
        if self.path is None:
            self.snapshot = snapshot
        elif rank == 0:
            buffer = io.BytesIO()
            torch.save(snapshot, buffer)
            write_bytes_atomic(self.path, buffer.getvalue())

    @property
    def available(self) -> bool:
        return self.step is not None

    def load(self) -> Snapshot:
        if self.path is None:
            assert self.snapshot is not None
            return self.snapshot
        if not self.path.is_file():
            raise FileNotFoundError(f"the best weights of step {self.step} were written to {self.path}, which is "
                                    f"gone; keep that file for the length of the run (or restore_best_weights=True).")
        return torch.load(self.path, map_location="cpu", weights_only=True)

    def restore(self, networks: Sequence[nn.Module], ema: Any | None) -> None:
        """Loads the kept weights into the networks (and into the EMA's shadow weights)."""
        snapshot = self.load()
        if len(snapshot["networks"]) != len(networks):
            raise ValueError(f"the best weights hold {len(snapshot['networks'])} networks but the denoiser has "
                             f"{len(networks)}; pass the same denoiser at every check.")
        for net, state in zip(networks, snapshot["networks"]):
            unexpected = net.load_state_dict(state, strict=False).unexpected_keys
            if unexpected:
                raise ValueError(f"the kept weights name {unexpected[:3]} ..., which this network does not have; pass "
                                 f"the same denoiser (the same network) at every check.")
        if ema is not None and snapshot["ema"] is not None:
            with torch.no_grad():
                for shadow, saved in zip(ema.shadow_params, snapshot["ema"]):
                    shadow.copy_(saved)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "path": None if self.path is None else str(self.path),
                "snapshot": self.snapshot if self.path is None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.snapshot = state.get("snapshot") if self.path is None else None
