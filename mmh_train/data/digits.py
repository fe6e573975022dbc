"""The small real image set: scikit-learn's 8×8 handwritten digits, padded for a UNet.

scikit-learn ships the 1,797 images inside the package (``sklearn.datasets.load_digits``), so this
loader works offline and downloads nothing. Pixels are 0..16 (0 = background); they are mapped to
``[−1, 1]`` by ``x/8 − 1`` so the background is −1, and each image is padded, centred, with −1.

Sizes for ``diffusers.UNet2DModel``: a UNet with n down-blocks halves the resolution n − 1 times
(the last block does not downsample), so it accepts sizes divisible by ``2^(n−1)``: any size for
n = 1, even sizes for n = 2, multiples of 4 for n = 3 (8, 12, 16, ...), multiples of 8 for n = 4
(8, 16, 24, 32, ...). The default 16 suits up to 5 down-blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .image_set import ImageSet

from .._checks import check_positive_int
from .toy import _check_dtype, _resolve_generator

__all__ = ["DigitsData", "DigitsDataset", "load_digits", "NUM_DIGITS"]

NUM_DIGITS = 1797
"""Number of images in scikit-learn's digits set."""


@dataclass(frozen=True, eq=False)
class DigitsData(ImageSet):
    """Digit images with their labels.

    Attributes:
        images: ``[N, 1, size, size]`` in ``[−1, 1]``; background and padding are −1.
        labels: ``[N]`` long, the digit 0..9.
        index: ``[N]`` long, the row of each image in scikit-learn's full set (0..1796), increasing;
            a stable identity for the image. The position in this object (0..N−1) is the dataset
            index that :class:`DigitsDataset` returns.
    """

    images: Tensor
    labels: Tensor
    index: Tensor


class DigitsDataset(Dataset):
    """Map-style view of :class:`DigitsData`; item ``i`` is ``(image [1, size, size], label [], i)``.

    ``i`` is the position in the data set (0..N−1), which is what per-sample statistics index by;
    ``data.index[i]`` maps it back to scikit-learn's row.
    """

    def __init__(self, data: DigitsData) -> None:
        if not isinstance(data, DigitsData):
            raise TypeError(f"DigitsDataset wraps a DigitsData (from load_digits()); got {type(data).__name__}.")
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        j = range(len(self.data))[i]  # normalises negative indices, raises IndexError out of range
        return self.data.images[j], self.data.labels[j], j


def load_digits(*, size: int = 16, subset: int | None = None, generator: torch.Generator | None = None,
                dtype: torch.dtype = torch.float32, resize: str = "pad") -> DigitsData:
    """Loads scikit-learn's digits as ``[N, 1, size, size]`` images in ``[−1, 1]``.

    Args:
        size: side length ≥ 8; the 8×8 digit is padded with −1, centred (an odd margin puts the
            extra row/column at the bottom/right). See the module docstring for UNet-friendly sizes.
        subset: number of images to keep, ``1..1797``; all when None. The subset is drawn with
            ``generator`` and is class-balanced: class counts differ by at most one (while a class
            has images left). Images keep scikit-learn's order.
        generator: CPU generator for the subset; ``torch.Generator().manual_seed(0)`` when None.
            The global RNG is not touched.
        dtype: floating dtype of the images.
        resize: ``"pad"`` (default): the 8×8 digit centred on a −1 background; ``"bilinear"``: the digit
            upsampled to fill ``size × size`` (smooth strokes, every pixel carries the digit; what the
            memorization recipe trains on).

    Returns:
        A :class:`DigitsData`.
    """
    check_positive_int(size, "size")
    if size < 8:
        raise ValueError(f"size must be ≥ 8 (the digits are 8×8 and are padded, never cropped); got {size}. "
                         f"For a UNet2DModel with n down-blocks pick a multiple of 2^(n−1), e.g. 16.")
    check_positive_int(subset, "subset", allow_none=True)
    if resize not in ("pad", "bilinear"):
        raise ValueError(f"resize={resize!r}; choose 'pad' (centred on a −1 background) or 'bilinear' (upsampled).")
    if subset is not None and subset > NUM_DIGITS:
        raise ValueError(f"subset={subset} exceeds the {NUM_DIGITS} digit images; pass at most "
                         f"{NUM_DIGITS} or None for all.")
    _check_dtype(dtype)
    g = _resolve_generator(generator)
    from sklearn.datasets import load_digits as _sklearn_load_digits  # bundled data, no download

    raw = _sklearn_load_digits()
    images = torch.as_tensor(raw.images, dtype=torch.float64)          # [1797, 8, 8], 0..16
    labels = torch.as_tensor(raw.target, dtype=torch.long)
    rows = torch.arange(images.shape[0]) if subset is None else _balanced_subset(labels, subset, g)
    x = images[rows] / 8.0 - 1.0                                        # 0..16 → −1..1
    if resize == "bilinear":
        x = F.interpolate(x.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False).squeeze(1)
    else:
        lo = (size - 8) // 2
        x = F.pad(x, (lo, size - 8 - lo, lo, size - 8 - lo), value=-1.0)
    return DigitsData(images=x.unsqueeze(1).to(dtype).contiguous(), labels=labels[rows].clone(), index=rows)


def _balanced_subset(labels: Tensor, m: int, g: torch.Generator) -> Tensor:
    """Picks m rows, round-robin over the classes in a random order, each class's rows shuffled.

    Returns:
        ``[m]`` long row indices, increasing.
    """
    classes = torch.unique(labels)
    class_order = classes[torch.randperm(len(classes), generator=g)]
    per_class = []
    for c in class_order.tolist():
        rows = torch.nonzero(labels == c).flatten()
        per_class.append(rows[torch.randperm(len(rows), generator=g)])
    picked: list[int] = []
    for rank in range(max(len(r) for r in per_class)):
        for rows in per_class:
            if rank < len(rows):
                picked.append(int(rows[rank]))
        if len(picked) >= m:
            break
    return torch.sort(torch.tensor(picked[:m], dtype=torch.long)).values
