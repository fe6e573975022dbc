"""Reading a per-check history: each column's latest measured value (NaN marks "not measured then").

Under a probe budget a check measures only some probes; a probe's value at a check is the one it had at its
most recent check that measured it. Every reader of a history (the monitor, the collapse score, the
report) goes through :func:`forward_fill`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["forward_fill", "latest_measured"]


def forward_fill(history: Tensor) -> Tensor:
    """``[C, N]`` → ``[C, N]``: each entry replaced by its column's latest non-NaN value up to that row.

    Entries before a column's first measurement stay NaN. Dtype and device are kept.
    """
    if history.numel() == 0:
        return history.clone()
    measured = ~torch.isnan(history)
    rows = torch.arange(history.shape[0], device=history.device)[:, None].expand_as(history)
    last = torch.where(measured, rows, torch.full_like(rows, -1)).cummax(dim=0).values
    out = history.gather(0, last.clamp(min=0))
    return out.masked_fill(last < 0, math.nan)


def latest_measured(history: Tensor) -> Tensor:
    """The last non-NaN value along the first axis of ``history [C, N]`` → ``[N]`` (NaN where there is none)."""
    if history.shape[0] == 0:
        return torch.full(history.shape[1:], math.nan, dtype=history.dtype, device=history.device)
    return forward_fill(history)[-1]
