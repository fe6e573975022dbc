"""Probe sets: which training and held-out points the monitor measures, chosen once by dataset index."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from .context import preserve_global_rng, seed_global_rng

__all__ = ["PROBE_VIEW_SEED", "InputFn", "derived_seed", "default_input", "dataset_size", "gather_points", "choose_probe_indices", "interleave"]

#: Maps one dataset item to its model input tensor.
InputFn = Callable[[Any], Tensor]
#: The seed of the one fixed draw of a dataset's augmentation that the monitor reads (see :func:`gather_points`).
PROBE_VIEW_SEED = 0
_INPUT_KEYS = ("x", "image", "images", "pixel_values", "input", "sample")


def default_input(item: Any) -> Tensor:
    """The model input inside a dataset item: the item itself, the first of a tuple, or a known dict key."""
    if isinstance(item, Tensor):
        return item
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], Tensor):
        return item[0]
    if isinstance(item, dict):
        for key in _INPUT_KEYS:
            if isinstance(item.get(key), Tensor):
                return item[key]
    raise TypeError(f"cannot find the model input in a dataset item of type {type(item).__name__}; pass "
                    f"input_fn=lambda item: ... returning the input tensor (dict keys tried: {', '.join(_INPUT_KEYS)}).")


def dataset_size(data: Tensor | Sequence[Any]) -> int:
    """Number of points in a tensor ``[N, ...]`` or a map-style dataset."""
    if isinstance(data, Tensor):
        return data.shape[0]
    try:
        return len(data)
    except TypeError as error:
        raise TypeError(f"the monitor needs a tensor [N, ...] or a map-style dataset with __len__; got "
                        f"{type(data).__name__} (an IterableDataset has no stable indices).") from error


def gather_points(data: Tensor | Sequence[Any], indices: Tensor, input_fn: InputFn | None = None) -> Tensor:
    """The model inputs of ``data`` at ``indices`` as one float tensor ``[len(indices), ...]`` on the CPU.

    Items of a dataset are read as one fixed draw of its augmentation: the global RNGs (torch, NumPy,
    Python) are reseeded with :data:`PROBE_VIEW_SEED` before every item and restored afterwards. So a
    dataset with random augmentation (a random flip or crop in ``__getitem__``) gives the monitor the same
    probes at every read, copies in the data stay copies (every item gets the same random numbers: one
    flip flips them all), and the training run's random stream is not shifted. For a view without any
    augmentation pass the dataset built without it, or ``input_fn`` that undoes it.
    """
    if isinstance(data, Tensor):
        return data[indices.to(data.device)].detach().cpu()
    fn = input_fn or default_input
    points = []
    with preserve_global_rng():
        for i in indices.tolist():
            seed_global_rng(PROBE_VIEW_SEED)
            points.append(torch.as_tensor(fn(data[int(i)])))
    return torch.stack(points).detach().cpu()


def derived_seed(*parts: int) -> int:
    """A seed fixed by integer ``parts`` (e.g. seed, check, batch, σ index; or seed, rank, step): the same on
    every rank that passes the same parts and after a resume, without any generator state to save."""
    value = 0
    for part in parts:
        value = (value * 1_000_003 + int(part)) % (2**61 - 1)
    return value


def choose_probe_indices(n_total: int, n_probes: int, generator: torch.Generator, *, name: str) -> Tensor:
    """``n_probes`` distinct indices in ``[0, n_total)``, drawn with ``generator``, sorted."""
    if n_probes > n_total:
        raise ValueError(f"{name}={n_probes} is larger than the dataset ({n_total} points); pass at most "
                         f"{n_total}, or None to probe every point.")
    return torch.randperm(n_total, generator=generator)[:n_probes].sort().values


def interleave(n_train: int, n_heldout: int) -> Tensor:
    """A rotation order over ``n_train + n_heldout`` positions that mixes both sets proportionally.

    With a budget below the probe count, each check then measures train and held-out probes in the same
    proportion, instead of all train probes first.
    """
    keys = torch.cat([(torch.arange(n_train) + 0.5) / max(n_train, 1), (torch.arange(n_heldout) + 0.5) / max(n_heldout, 1)])
    return torch.sort(keys, stable=True).indices
