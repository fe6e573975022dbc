"""ImageSet: what every in-memory image collection (digits, an image folder) answers about its images."""

from __future__ import annotations

from torch import Tensor

__all__ = ["ImageSet"]


class ImageSet:
    """Mixin for a dataclass with ``images`` (``[N, C, size, size]``) and ``index`` (``[N]``, a stable
    identity per image): its length, side length and channel count."""

    images: Tensor
    index: Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def size(self) -> int:
        """Side length of the images."""
        return int(self.images.shape[-1])

    @property
    def channels(self) -> int:
        """Channels per image: 1 (grayscale) or 3 (RGB)."""
        return int(self.images.shape[1])
