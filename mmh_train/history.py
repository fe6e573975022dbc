"""Reading a per-check history: the latest measured value of every column."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["latest_measured"]


def latest_measured(history: Tensor) -> Tensor:
    """The last non-NaN value along the first axis of ``history [C, N]`` → ``[N]`` (NaN where there is none).

    Under a probe budget a check measures only some probes; each probe's latest value is the one it had at
    its most recent check that measured it.
    """
    measured = ~torch.isnan(history)
    last = torch.where(measured, torch.arange(history.shape[0])[:, None], -1).max(0).values
    out = torch.full(history.shape[1:], math.nan, dtype=history.dtype)
    has = last >= 0
    out[has] = history[last[has], torch.nonzero(has).flatten()]
    return out
