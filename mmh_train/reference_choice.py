"""Where the monitor's LID* of each training probe comes from (the user's choice, the data by default)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .lid.reference import reference_lid
from .neighbors import knn
from .probes import dataset_size, gather_points

if TYPE_CHECKING:
    from .monitor import MemorizationMonitor

__all__ = ["ReferenceLID", "REFERENCE_KINDS"]

REFERENCE_KINDS = ("data", "heldout")


class ReferenceLID:
    """LID* per training probe.

    - ``"data"``: model-free :func:`~mmh_train.reference_lid` of each probe against the whole training set,
      computed at the first check and cached (exact duplicates read 0: the DD-Mem case).
    - a tensor ``[N]``: known LID per training-set index (toy data).
    - ``"heldout"``: the model's own latest LID on the ``k`` nearest held-out probes of each training probe
      (a generalizing model reads the same on nearby unseen points).
    - ``None``: no reference; the monitor then reports the collapse signal only.
    """

    def __init__(self, kind: str | Tensor | None, options: dict[str, Any]) -> None:
        if isinstance(kind, Tensor):
            if kind.dim() != 1 or not kind.is_floating_point() and kind.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"a known reference must be a 1-D tensor of LID per dataset index; got shape "
                                 f"{tuple(kind.shape)} and dtype {kind.dtype}.")
        elif kind is not None and kind not in REFERENCE_KINDS:
            raise ValueError(f"reference={kind!r} is not supported; choose 'data', 'heldout', a tensor [N] of known "
                             f"LID, or None.")
        allowed = {"data": {"method", "k", "duplicate_radius", "alpha", "variant", "explained"}, "heldout": {"k"}}
        unknown = set(options) - allowed.get(kind if isinstance(kind, str) else "", set())
        if unknown:
            raise TypeError(f"reference_options {sorted(unknown)} do not apply to reference={kind!r}.")
        self.kind, self.options = kind, dict(options)
        self.cached: Tensor | None = None
        self._neighbours: Tensor | None = None

    def for_probes(self, monitor: "MemorizationMonitor", latest: Tensor | None = None) -> Tensor | None:
        """``[P]`` float LID* of the training probes (``latest``: the latest LID of every probe, for "heldout")."""
        if self.kind is None:
            return None
        if isinstance(self.kind, Tensor):
            if self.kind.shape[0] != dataset_size(monitor.train_data):
                raise ValueError(f"the known reference has {self.kind.shape[0]} entries but the training set has "
                                 f"{dataset_size(monitor.train_data)} points; give one LID per training index.")
            return self.kind[monitor.train_index].float()
        if self.kind == "data":
            if self.cached is None:
                every = torch.arange(dataset_size(monitor.train_data))
                data = gather_points(monitor.train_data, every, monitor.input_fn)
                probes = monitor.points()[: len(monitor.train_index)]
                self.cached = reference_lid(data.float(), probes.float(), **self.options).float()
            return self.cached
        return self._heldout_neighbours_lid(monitor, latest)

    def _heldout_neighbours_lid(self, monitor: "MemorizationMonitor", latest: Tensor | None) -> Tensor:
        P = len(monitor.train_index)
        if self._neighbours is None:
            points = monitor.points().float()
            k = min(self.options.get("k", 5), len(monitor.heldout_index))
            self._neighbours = knn(points[P:], points[:P], k, exclude_self=False)[1]
        if latest is None:
            latest = torch.full((monitor.n_probes,), float("nan"))
        return latest[P:][self._neighbours].nanmean(1)

    def state_dict(self) -> dict[str, Any]:
        return {"cached": None if self.cached is None else self.cached.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cached = state["cached"]
