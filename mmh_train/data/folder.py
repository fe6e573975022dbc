"""Any folder of images (PIL) as small square ``[-1, 1]`` tensors, for users' own data.

    data = load_image_folder("path/to/images", size=32)        # [N, 3, 32, 32], data.files[i] is image i
    loader = DataLoader(ImageFolderDataset(data), batch_size=32, shuffle=True)   # (image, 0, i)

Files are found recursively and read in sorted order of their relative paths (``/``-separated), so the
same folder always gives the same rows. Extensions (any case): ``.png .jpg .jpeg .bmp .webp .gif``;
other files, and files or folders whose name starts with ``.`` (e.g. macOS ``._x.png`` / ``.DS_Store``),
are ignored. Each image is turned upright (EXIF orientation), its transparency (if any) is laid over
white, it is converted to RGB (``channels=3``) or grayscale (``channels=1``; ITU-R 601 luma), centre-cropped
to a square (the shorter side; the extra row/column of an odd margin goes to the bottom/right) and resized
to ``size × size`` with Lanczos filtering. An animated GIF gives its first frame. Pixels 0..255 map to
``[-1, 1]`` by ``x / 127.5 − 1``.

Everything is held in memory: ``N × channels × size² × 4`` bytes (10,000 RGB images at 64 px: 492 MB).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .image_set import ImageSet

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderData", "ImageFolderDataset", "find_image_files", "load_image_folder"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif")
"""File extensions read as images (compared case-insensitively)."""


@dataclass(frozen=True, eq=False)
class ImageFolderData(ImageSet):
    """Images read from a folder.

    Attributes:
        images: ``[N, C, size, size]`` float32 in ``[−1, 1]``.
        files: the ``N`` image paths relative to the folder (``/``-separated), in sorted order.
        index: ``[N]`` long, each image's row in the folder's full sorted file list; a stable identity
            for the image (``arange(N)`` for a whole folder, other rows after :meth:`select`). The
            position in this object (0..N−1) is the dataset index that :class:`ImageFolderDataset` returns.
    """

    images: Tensor
    files: tuple[str, ...]
    index: Tensor

    def select(self, rows: Tensor) -> "ImageFolderData":
        """The images at positions ``rows`` (a 1-D long tensor), with their files and index."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        return ImageFolderData(images=self.images[rows], files=tuple(self.files[int(r)] for r in rows),
                               index=self.index[rows].clone())


class ImageFolderDataset(Dataset):
    """Map-style view of :class:`ImageFolderData`; item ``i`` is ``(image [C, size, size], 0, i)``.

    There are no labels: the second element is always 0 (the ``(x, label, index)`` layout of the other
    data sets). ``i`` is the position in the data set (0..N−1), which is what per-sample statistics
    index by; ``data.files[i]`` names the image.
    """

    def __init__(self, data: ImageFolderData) -> None:
        if not isinstance(data, ImageFolderData):
            raise TypeError(f"ImageFolderDataset wraps an ImageFolderData (from load_image_folder()); "
                            f"got {type(data).__name__}.")
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        j = range(len(self.data))[i]  # normalises negative indices, raises IndexError out of range
        return self.data.images[j], 0, j


def find_image_files(path: str | os.PathLike) -> list[str]:
    """The image files under ``path`` (recursively), relative and ``/``-separated, in sorted order.

    Reads no image. Hidden files and folders (names starting with ``.``) are skipped; symbolic links to
    folders are not followed.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        NotADirectoryError: ``path`` is not a folder.
        ValueError: no file with an image extension was found (the message lists them).
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist; pass the path of a folder of "
                                f"images (absolute, or relative to {os.getcwd()}).")
    if not root.is_dir():
        raise NotADirectoryError(f"{str(root)!r} is a file, not a folder; pass the folder that holds the images.")
    found = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        for name in names:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append((Path(folder) / name).relative_to(root).as_posix())
    if not found:
        raise ValueError(f"no image files in {str(root)!r} or its subfolders; images need one of the "
                         f"extensions {', '.join(IMAGE_EXTENSIONS)} (any case). Point it at the folder that "
                         f"holds them, or convert them to PNG.")
    return sorted(found)


def load_image_folder(path: str | os.PathLike, *, size: int = 32, channels: int = 3,
                      max_images: int | None = None) -> ImageFolderData:
    """Reads every image under ``path`` as ``[N, channels, size, size]`` float32 in ``[−1, 1]``.

    See the module docstring for which files are read and how each is converted.

    Args:
        path: a folder; images are found recursively.
        size: side length ≥ 8 of the square output. For a ``UNet2DModel`` with n down-blocks pick a
            multiple of 2^(n−1) (e.g. 32 or 64).
        channels: 3 (RGB) or 1 (grayscale).
        max_images: keep only the first ``max_images`` files in sorted order; all when None.

    Returns:
        An :class:`ImageFolderData`.

    Raises:
        ValueError: a bad ``size``/``channels``/``max_images``, no image files, or a file PIL cannot
            read (the message names it) — all but the last before any image is read.
        FileNotFoundError / NotADirectoryError: ``path`` is missing or not a folder.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an integer ≥ 8 (pixels per side); got {size!r}. For a UNet2DModel "
                         f"with n down-blocks pick a multiple of 2^(n−1), e.g. 32 or 64.")
    if isinstance(channels, bool) or channels not in (1, 3):
        raise ValueError(f"channels must be 3 (RGB) or 1 (grayscale); got {channels!r}.")
    if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int)
                                   or max_images < 1):
        raise ValueError(f"max_images must be a positive integer or None (all images); got {max_images!r}.")
    files = find_image_files(path)[:max_images]
    root = Path(path)
    images = torch.empty(len(files), channels, size, size, dtype=torch.float32)
    for row, name in enumerate(files):
        images[row] = _read(root / name, size, channels)
    return ImageFolderData(images=images, files=tuple(files), index=torch.arange(len(files)))


def _read(file: Path, size: int, channels: int) -> Tensor:
    """One image file → ``[channels, size, size]`` in ``[−1, 1]``."""
    from PIL import Image, ImageOps

    try:
        with Image.open(file) as image:
            image.draft("RGB" if channels == 3 else "L", (size, size))  # JPEG: decode at a reduced scale ≥ size
            image = ImageOps.exif_transpose(image)
            image = _flatten(image).convert("RGB" if channels == 3 else "L")
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read the image {str(file)!r} ({type(error).__name__}: {error}); delete or "
                         f"re-save that file, or move it out of the folder.") from None
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != size:
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))
    pixels = pixels.unsqueeze(0) if channels == 1 else pixels.permute(2, 0, 1)
    return pixels.float() / 127.5 - 1.0


def _flatten(image):
    """Lays an image with transparency over white; others are returned as they are."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba)
    return image
