"""Plain-loop hooks (accelerate / diffusers-style training loops) over the same monitor and remedies."""

from .guard import MemorizationGuard
from .raw_network import raw_network
from .stopping import METRIC_MODES, MemorizationStopper

__all__ = ["METRIC_MODES", "MemorizationGuard", "MemorizationStopper", "raw_network"]
