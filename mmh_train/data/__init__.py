"""Data with known LID for tests and benchmarks, duplicate injection, and the small real image set.

- :mod:`~mmh_train.data.toy`: manifolds with known LID (affine and curved mixtures, sphere, lollipop)
  and the closed-form mixture denoiser.
- :mod:`~mmh_train.data.duplicates`: exact and near-duplicate injection with group bookkeeping.
- :mod:`~mmh_train.data.digits`: scikit-learn's 8×8 digits as padded ``[−1, 1]`` images (offline).
- :mod:`~mmh_train.data.captioned`: images with one caption each (``metadata.jsonl`` folders, captioned digits).
- :mod:`~mmh_train.data.indexed`: a wrapper that makes every item carry its dataset index.
"""

from .captioned import CaptionedImages, captioned_digits, load_captioned_folder
from .digits import NUM_DIGITS, DigitsData, DigitsDataset, load_digits
from .duplicates import DuplicatedData, inject_duplicates, inject_duplicates_in_sample
from .folder import ImageFolderData, ImageFolderDataset, find_image_files, load_image_folder
from .indexed import IndexedDataset, check_indices
from .toy import (
    AffineMixtureSpec,
    ManifoldSample,
    ToyDataset,
    affine_mixture,
    lollipop,
    sphere,
    squiggly_mixture,
)

__all__ = [
    "AffineMixtureSpec",
    "ManifoldSample",
    "ToyDataset",
    "affine_mixture",
    "sphere",
    "squiggly_mixture",
    "lollipop",
    "DuplicatedData",
    "inject_duplicates",
    "inject_duplicates_in_sample",
    "DigitsData",
    "DigitsDataset",
    "load_digits",
    "NUM_DIGITS",
    "IndexedDataset",
    "check_indices",
    "ImageFolderData", "ImageFolderDataset", "find_image_files", "load_image_folder",
    "CaptionedImages", "captioned_digits", "load_captioned_folder",
]
