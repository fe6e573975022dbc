"""Index-carrying datasets: per-sample statistics need each sample's dataset index.

The monitor keeps dense per-sample state (LID history, duplicate weights) indexed by the position
of a sample in the training set, so every batch must say which samples it holds. Wrap any
map-style dataset in :class:`IndexedDataset` and the index travels through the default
``DataLoader`` collation (into a ``[B]`` long tensor) and through distributed samplers unchanged.
:func:`check_indices` is the gate the consumers call on a batch's indices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["IndexedDataset", "check_indices"]

_FIX = "wrap the training dataset in mmh_train.data.IndexedDataset so every item carries its index"


class IndexedDataset(Dataset):
    """Wraps a map-style dataset so each item also carries its dataset index.

    Item ``i`` becomes ``(*item, i)`` when the wrapped item is a tuple or list, ``{**item, key: i}``
    when it is a mapping, and ``(item, i)`` otherwise. ``len`` passes through. Negative indices are
    normalised, so the carried index is always in ``0..len−1``.

    .. note::
        A mapping that already has ``key`` raises rather than being overwritten silently; pass
        another ``key``.

    Args:
        dataset: any map-style dataset (``__getitem__`` and ``__len__``).
        key: the key used for mapping items.
    """

    def __init__(self, dataset: Any, *, key: str = "index") -> None:
        if not hasattr(dataset, "__getitem__"):
            raise TypeError(f"IndexedDataset needs a map-style dataset with __getitem__; got "
                            f"{type(dataset).__name__}. Iterable datasets have no stable index.")
        self.dataset = dataset
        self.key = key

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        i = int(index)
        if i < 0:
            i += len(self.dataset)
        item = self.dataset[i]
        if isinstance(item, (tuple, list)):
            return (*item, i)
        if isinstance(item, Mapping):
            if self.key in item:
                raise ValueError(f"the dataset's items already have a {self.key!r} entry; pass "
                                 f"IndexedDataset(dataset, key='sample_index') or another unused key.")
            return {**item, self.key: i}
        return (item, i)


def check_indices(indices: Any, dataset_size: int | None = None, *, allow_repeats: bool = False) -> Tensor:
    """Checks a batch's dataset indices and returns them as a ``[B]`` long tensor.

    Args:
        indices: the batch's indices, ``[B]`` integer tensor (or a sequence of ints).
        dataset_size: number of samples in the dataset; when given, indices must be below it.
        allow_repeats: accept an index that appears twice in the batch. Samplers that draw with
            replacement (``WeightedRandomSampler(replacement=True)``) legitimately do this.

    Returns:
        The indices as a ``[B]`` long tensor on their original device.

    Raises:
        ValueError: indices are missing, not integers, not one-dimensional, negative, out of range,
            or repeated (unless ``allow_repeats``); the message names the fix.
    """
    if indices is None:
        raise ValueError(f"the batch carries no dataset indices (got None); {_FIX}, and pass the "
                         f"index entry of the batch.")
    if dataset_size is not None and (isinstance(dataset_size, bool) or not isinstance(dataset_size, int)
                                     or dataset_size < 1):
        raise ValueError(f"dataset_size must be an integer ≥ 1 or None; got {dataset_size!r}.")
    if not isinstance(indices, Tensor):
        if not isinstance(indices, Sequence) or isinstance(indices, (str, bytes)) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in indices):
            raise ValueError(f"indices must be an integer tensor [B] or a sequence of ints; got "
                             f"{type(indices).__name__}. {_FIX[0].upper() + _FIX[1:]}.")
        indices = torch.tensor(list(indices), dtype=torch.long)
    if indices.dtype == torch.bool or indices.is_floating_point() or indices.is_complex():
        raise ValueError(f"indices must be integers; got dtype {indices.dtype}. The batch entry you "
                         f"passed is probably data or a label, not the index: {_FIX}.")
    if indices.dim() != 1:
        raise ValueError(f"indices must have shape [B]; got {tuple(indices.shape)}. "
                         f"Pass one index per sample (flatten a [B, 1] tensor).")
    idx = indices.long()
    bad = idx < 0 if dataset_size is None else (idx < 0) | (idx >= dataset_size)
    if bool(bad.any()):
        shown = idx[bad][:10].tolist()
        bound = "≥ 0" if dataset_size is None else f"in [0, {dataset_size})"
        raise ValueError(f"indices must be {bound}; got {shown}. Check that the index comes from "
                         f"the same dataset the statistics were sized for ({_FIX}).")
    if not allow_repeats and idx.numel() > 1:
        values, counts = torch.unique(idx, return_counts=True)
        if bool((counts > 1).any()):
            repeated = values[counts > 1][:10].tolist()
            raise ValueError(f"indices repeat within the batch: {repeated}. Repeated indices usually "
                             f"mean the entry is a label or constant rather than the dataset index: "
                             f"{_FIX}. If your sampler draws with replacement, pass allow_repeats=True.")
    return idx
