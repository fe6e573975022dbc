"""Where the monitor's LID* of each training probe comes from (the user's choice, the data by default)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from .lid.reference import reference_lid
from .neighbors import knn

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

    def for_probes(self, *, train_index: Tensor, probes: Tensor, n_train: int,
                   training_points: Callable[[], Tensor], latest: Tensor | None = None) -> Tensor | None:
        """``[P]`` float LID* of the training probes.

        Args:
            train_index: ``[P]`` dataset indices of the training probes.
            probes: ``[P + Q, ...]`` the probes' inputs, training probes first.
            n_train: the training set's size.
            training_points: returns every training point ``[N, ...]`` (called once, for ``"data"``).
            latest: ``[P + Q]`` the latest LID_θ of every probe (for ``"heldout"``).
        """
        if self.kind is None:
            return None
        P = len(train_index)
        if isinstance(self.kind, Tensor):
            if self.kind.shape[0] != n_train:
                raise ValueError(f"the known reference has {self.kind.shape[0]} entries but the training set has "
                                 f"{n_train} points; give one LID per training index.")
            return self.kind[train_index].float()
        if self.kind == "data":
            if self.cached is None:
                self.cached = reference_lid(training_points().float(), probes[:P].float(), **self.options).float()
            return self.cached
        if self._neighbours is None:
            points = probes.float()
            k = min(self.options.get("k", 5), len(points) - P)
            self._neighbours = knn(points[P:], points[:P], k, exclude_self=False)[1]
        if latest is None:
            latest = torch.full((len(probes),), float("nan"))
        return latest[P:][self._neighbours].nanmean(1)

    def state_dict(self) -> dict[str, Any]:
        return {"cached": None if self.cached is None else self.cached.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cached = state["cached"]
