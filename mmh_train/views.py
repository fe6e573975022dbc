"""The comparison view: where the verdicts measure "near" and "duplicate" for any kind of data.

Vectors are compared as they are. Images are compared after a deterministic area reduction to at most
``max_side`` pixels a side: nearest neighbours in raw pixels of a large image are dominated by noise-level
differences, while an area average keeps layout and colour, removes sub-pixel jitter and makes a distance
cost O(16·16·C) instead of O(H·W·C). Nothing is learned, downloaded or random, so the view of a point is
the same in every run and on every machine. Random training augmentation never reaches it: the view is
taken of the probe points the monitor reads, not of training batches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["comparison_view", "DEFAULT_MAX_SIDE"]

#: Images larger than this on a side are area-averaged down to it.
DEFAULT_MAX_SIDE = 16


def comparison_view(x: Tensor, *, max_side: int = DEFAULT_MAX_SIDE) -> Tensor:
    """Points in the comparison view, ``[B, F]`` float32 on the CPU.

    Args:
        x: ``[B, D]`` vectors, or ``[B, C, H, W]`` images (any other shape is flattened).
        max_side: images whose height or width exceeds it are area-averaged (``adaptive_avg_pool2d``) to at
            most ``max_side`` × ``max_side``, keeping the aspect ratio's integer part.

    Returns:
        ``[B, F]``: the flattened (reduced) points.
    """
    if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1:
        raise ValueError(f"max_side must be an integer ≥ 1 (pixels a side); got {max_side!r}.")
    x = x.detach().to("cpu", torch.float32)
    if x.dim() == 4 and max(x.shape[-2:]) > max_side:
        h, w = x.shape[-2:]
        scale = max(h, w) / max_side
        x = F.adaptive_avg_pool2d(x, (max(1, round(h / scale)), max(1, round(w / scale))))
    return x.reshape(x.shape[0], -1)
