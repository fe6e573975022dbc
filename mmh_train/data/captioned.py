"""Images with one caption each, for text-to-image fine-tuning: a folder, or a small built-in set.

A folder follows diffusers' ``ImageFolder`` convention: a ``metadata.jsonl`` beside the images with one JSON
object per line, ``{"file_name": "cat/01.png", "text": "a photo of a cat"}`` (the caption key is
``caption_column``). A DreamBooth-style set has no captions: pass ``instance_prompt`` and every image gets it.

    data = load_captioned_folder("path/to/folder")                 # [N, 3, H, W], data.captions[i]
    data = load_captioned_folder("dog/", instance_prompt="a photo of sks dog", size=64)
    data = captioned_digits(64, size=16)                           # no download: "a photo of the digit 3"

Everything that can be wrong with a folder (no captions, a caption line naming a missing image, images of
mixed sizes) raises before any image is decoded, with the fix in the message. Images are RGB in ``[−1, 1]``,
read as :func:`~mmh_train.data.folder.load_image_folder` reads them (EXIF turned upright, transparency over
white); with ``size`` each is centre-cropped to a square and resized, without it every image must already
have one common square size.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .folder import _read, find_image_files
from .image_set import ImageSet

__all__ = ["CaptionedImages", "METADATA_FILE", "load_captioned_folder", "captioned_digits", "digit_caption"]

METADATA_FILE = "metadata.jsonl"
"""diffusers' caption file: one ``{"file_name": ..., "<caption_column>": ...}`` object per line."""


@dataclass(frozen=True, eq=False)
class CaptionedImages(ImageSet):
    """Images and their captions.

    Attributes:
        images: ``[N, 3, H, W]`` float32 in ``[−1, 1]``.
        captions: the ``N`` captions, ``captions[i]`` for ``images[i]``.
        files: the ``N`` image names (relative paths in a folder; ``digits/<row>`` for the built-in set).
        index: ``[N]`` long, a stable identity of each image (its row in the folder's sorted list).
    """

    images: Tensor
    captions: tuple[str, ...]
    files: tuple[str, ...]
    index: Tensor

    def select(self, rows: Tensor) -> "CaptionedImages":
        """The images at positions ``rows`` (1-D long), with their captions, files and index."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        return CaptionedImages(images=self.images[rows], captions=tuple(self.captions[int(r)] for r in rows),
                               files=tuple(self.files[int(r)] for r in rows), index=self.index[rows].clone())


def _read_metadata(root: Path, caption_column: str) -> dict[str, str]:
    """``metadata.jsonl`` as {relative file name: caption}; every line checked, errors name the line."""
    captions: dict[str, str] = {}
    path = root / METADATA_FILE
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not JSON ({error.msg}); each line must be one object like "
                             f'{{"file_name": "01.png", "{caption_column}": "a photo of ..."}}.') from None
        if not isinstance(entry, dict) or "file_name" not in entry or caption_column not in entry:
            keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise ValueError(f"{path}, line {number}: needs the keys 'file_name' and {caption_column!r}; got {keys}. "
                             f"Name the caption key with caption_column (data.caption_column=...).")
        if not isinstance(entry[caption_column], str):
            raise ValueError(f"{path}, line {number}: the caption {caption_column!r} must be a string; got "
                             f"{type(entry[caption_column]).__name__}.")
        name = Path(str(entry["file_name"])).as_posix()
        if name in captions:
            raise ValueError(f"{path}, line {number}: {name!r} is listed a second time; one line per image (a "
                             f"second caption would silently replace the first).")
        captions[name] = entry[caption_column]
    if not captions:
        raise ValueError(f"{path} lists no image; add one line per image: "
                         f'{{"file_name": "01.png", "{caption_column}": "a photo of ..."}}.')
    if not any(caption.strip() for caption in captions.values()):
        raise ValueError(f"every caption in {path} is empty: the model would train unconditionally and LID(z | c) "
                         f"would equal LID(z). Fill the {caption_column!r} values, or give one caption to every "
                         f"image with instance_prompt (data.instance_prompt=...) and no {METADATA_FILE}.")
    return captions


def _image_sizes(root: Path, files: list[str]) -> dict[tuple[int, int], list[str]]:
    """(width, height) → files, reading only the headers (no pixel is decoded)."""
    from PIL import Image

    sizes: dict[tuple[int, int], list[str]] = {}
    for name in files:
        try:
            with Image.open(root / name) as image:
                sizes.setdefault(tuple(image.size), []).append(name)
        except (OSError, ValueError, SyntaxError) as error:
            raise ValueError(f"cannot read the image {str(root / name)!r} ({type(error).__name__}: {error}); "
                             f"delete or re-save it, or remove its line from {METADATA_FILE}.") from None
    return sizes


def load_captioned_folder(path: str | os.PathLike, *, size: int | None = None, caption_column: str = "text",
                          instance_prompt: str | None = None, max_images: int | None = None) -> CaptionedImages:
    """Reads a folder of images with captions (``metadata.jsonl``) or one ``instance_prompt`` for all.

    Args:
        path: the folder.
        size: centre-crop and resize every image to ``size × size``; ``None`` keeps the images as they are,
            which needs one common square size.
        caption_column: the caption key in ``metadata.jsonl``.
        instance_prompt: the caption of every image (DreamBooth-style sets); used only when the folder has
            no ``metadata.jsonl``.
        max_images: the first ``max_images`` images in sorted order; all when ``None``.

    Raises:
        ValueError: no captions and no ``instance_prompt``; a caption line naming a missing image; mixed
            image sizes without ``size``; an unreadable image. All before any pixel is decoded.
        FileNotFoundError / NotADirectoryError: ``path`` is missing or not a folder.
    """
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 8):
        raise ValueError(f"size must be an integer ≥ 8 (pixels per side) or None (keep the images' size); got {size!r}.")
    root = Path(path)
    files = find_image_files(root)
    if (root / METADATA_FILE).is_file():
        captions = _read_metadata(root, caption_column)
        present = set(files)
        missing = sorted(name for name in captions if name not in present)
        if missing:
            raise ValueError(f"{root / METADATA_FILE} names {len(missing)} image(s) that are not in the folder "
                             f"(first: {', '.join(missing[:3])}); add them, or delete their lines. file_name is "
                             f"relative to the folder, e.g. \"cat/01.png\".")
        files = sorted(captions)  # the captioned images; others in the folder are not training data
    elif instance_prompt:
        captions = {name: instance_prompt for name in files}
    else:
        raise ValueError(f"{str(root)!r} has no {METADATA_FILE} and no instance prompt was given, so its images have "
                         f"no captions. Add {METADATA_FILE} with one line per image, "
                         f'{{"file_name": "01.png", "{caption_column}": "a photo of ..."}} (diffusers\' ImageFolder '
                         f"convention), or give one prompt for every image (data.instance_prompt=\"a photo of sks "
                         f"dog\") for a DreamBooth-style set.")
    files = files[:max_images]
    if size is None:
        sizes = _image_sizes(root, files)
        if len(sizes) > 1:
            found = "; ".join(f"{w}×{h}: {len(names)} (e.g. {names[0]})" for (w, h), names in sorted(sizes.items()))
            raise ValueError(f"the images in {str(root)!r} have mixed sizes ({found}); latents of one batch need one "
                             f"size. Pass a size (data.size=512) to centre-crop and resize every image to it.")
        (width, height), = sizes
        if width != height:
            raise ValueError(f"the images in {str(root)!r} are {width}×{height}, not square; pass a size "
                             f"(data.size={min(width, height)}) to centre-crop and resize them.")
        size = width
    images = torch.empty(len(files), 3, size, size, dtype=torch.float32)
    for row, name in enumerate(files):
        images[row] = _read(root / name, size, 3)
    return CaptionedImages(images=images, captions=tuple(captions[name] for name in files), files=tuple(files),
                           index=torch.arange(len(files)))


def digit_caption(label: int) -> str:
    """The built-in set's caption of a digit: ``"a photo of the digit 3"``."""
    return f"a photo of the digit {int(label)}"


def captioned_digits(n: int | None = None, *, size: int = 16, rows: Tensor | None = None) -> CaptionedImages:
    """sklearn's 8×8 digits (offline) as RGB images ``[n, 3, size, size]`` captioned with their class.

    Args:
        n: the first ``n`` digits (of 1797); all when ``None``. Ignored when ``rows`` is given.
        size: side length ≥ 8; the 8×8 digit is upsampled (bilinear) to fill it.
        rows: which digits, by row of sklearn's table (e.g. a seeded permutation's slice).
    """
    from .digits import load_digits

    everything = load_digits(size=8)
    rows = torch.arange(len(everything.labels))[:n] if rows is None else torch.as_tensor(rows, dtype=torch.long)
    images = torch.nn.functional.interpolate(everything.images[rows], size=(size, size), mode="bilinear",
                                             align_corners=False).clamp(-1, 1).expand(-1, 3, -1, -1).contiguous()
    labels = everything.labels[rows]
    return CaptionedImages(images=images, captions=tuple(digit_caption(int(c)) for c in labels),
                           files=tuple(f"digits/{int(r)}" for r in rows), index=rows.clone())
