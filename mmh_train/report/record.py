"""What a finished run hands to the report: one :class:`RunRecord` holding one :class:`VariantResult` per model.

The records are plain frozen dataclasses of CPU tensors and Python scalars; they are checked by
:func:`validate_record` (called by :func:`~mmh_train.report.write_report`) rather than on construction,
so a recipe can build one field by field and learn everything that is wrong in one error message.

The helpers below (:func:`forward_fill`, :func:`last_lid`, :func:`measured_mask`, :func:`label_counts`,
:func:`top_memorized`) turn the per-check history into the per-probe numbers every part of the report
shares, so the plots, the tables and the summary never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..history import forward_fill as fill_forward
from ..memorization import LABEL_NAMES

__all__ = [
    "VariantResult", "RunRecord", "ReportTable", "RecordError", "validate_record",
    "forward_fill", "last_lid", "final_lid", "measured_mask", "label_counts", "top_memorized", "COPY_THRESHOLD",
]

COPY_THRESHOLD: float = 1.0 / 3.0
"""A generated sample is drawn as a copy when its nearest-neighbour ratio is below this (science.md §6)."""

KINDS: tuple[str, ...] = ("vectors", "images")


@dataclass(frozen=True, eq=False)
class VariantResult:
    """One trained model of a run (e.g. ``"baseline"`` or ``"remedied"``). All tensors on the CPU.

    Attributes:
        name: the variant's name, unique within the run.
        steps: ``[C]`` training step of each check.
        lid_train: ``[C, P]`` LID_θ per check and training probe; NaN where the probe was not measured
            at that check (rotation under a budget).
        lid_heldout: ``[C, Q]`` the same for held-out probes (Q may be 0).
        train_index: ``[P]`` long, dataset index of each training probe (into ``RunRecord.train_x``).
        lid_ref: ``[P]`` what LID_θ was compared with: LID* of the training probes (``rule="reference"``), or
            the LID_θ of their nearest held-out probes (``rule="heldout_null"``); None without labels.
        labels: ``[P]`` long codes (``LABEL_NAMES``: 0 none, 1 od, 2 dd) at the last check, or None.
        od_gap: ``[P]`` how far LID_θ fell below ``lid_ref`` (higher = more OD-memorized), or None.
        samples: ``[S, ...]`` generated samples, each shaped like a training point.
        copy_score: ``[S]`` nearest-neighbour ratio of each sample (lower = more copy-like).
        copy_nearest: ``[S]`` long index into the training set of each sample's nearest neighbour.
        copy_rate: fraction of samples that are copies, as the run computed it.
        copy_control_rate: the same copy test's rate on the held-out points (its chance rate), or None.
        copy_excess_interval: ``(low, high)`` confidence interval of ``copy_rate − copy_control_rate``, or None.
        restored_step: the training step whose weights the samples and final metrics come from, when early
            stopping loaded back an earlier check's weights; None when the model is the last one trained.
        rule: which rule made the labels, ``"reference"`` or ``"heldout_null"`` (see ``MemorizationLabels``).
        score: ``[P]`` the verdicts' ranking score (higher = more memorized), or None (then ``od_gap`` ranks).
        quality: sample-quality numbers, e.g. ``{"sliced_wasserstein": 0.12}``.
        metrics: the monitor's final metrics (``lid_train``, ``lid_heldout``, ``lid_gap``,
            ``od_fraction``, ``dd_fraction``, ``collapse``; absent keys are shown as "—").
        remedies: what each remedy did, e.g. ``{"penalty": "on at step 1500"}``.
        train_seconds: wall time of training.
    """

    name: str
    steps: Tensor
    lid_train: Tensor
    lid_heldout: Tensor
    train_index: Tensor
    lid_ref: Tensor | None
    labels: Tensor | None
    od_gap: Tensor | None
    samples: Tensor
    copy_score: Tensor
    copy_nearest: Tensor
    copy_rate: float
    quality: dict[str, float]
    metrics: dict[str, float]
    remedies: dict[str, str]
    train_seconds: float
    copy_control_rate: float | None = None
    copy_excess_interval: tuple[float, float] | None = None
    restored_step: int | None = None
    rule: str = "reference"
    score: Tensor | None = None

    @property
    def reference_name(self) -> str:
        """What ``lid_ref`` is, for captions: "LID*" or "held-out null"."""
        return "held-out null" if self.rule == "heldout_null" else "LID*"

    @property
    def copy_excess(self) -> float | None:
        """``copy_rate − copy_control_rate`` (copies beyond chance), or None without a control."""
        return None if self.copy_control_rate is None else float(self.copy_rate) - float(self.copy_control_rate)


@dataclass(frozen=True, eq=False)
class RunRecord:
    """Everything the report shows about one run.

    Attributes:
        recipe: the recipe's name (``"toy"``, ``"digits"``, ...).
        kind: ``"vectors"`` (points ``[N, D]``) or ``"images"`` (``[N, C, H, W]`` in ``[-1, 1]``).
        config: the resolved config, printed YAML-style.
        train_x: ``[N, ...]`` the training set.
        heldout_x: ``[M, ...]`` the held-out set (M may be 0).
        variants: the trained models, at least one.
        duplicated: ``[N]`` bool, which training points are injected duplicates, or None if unknown.
        machine: where it ran, e.g. ``"2-core CPU, torch 2.13.0"``.
        command: the command that produced the run.
        audit_csv: file name (relative to the run folder) of the per-sample audit table, or None.
        tables: extra tables a recipe adds (e.g. per-image LID with and without the caption), shown after the
            most memorized points.
    """

    recipe: str
    kind: str
    config: dict
    train_x: Tensor
    heldout_x: Tensor
    variants: list[VariantResult]
    duplicated: Tensor | None
    machine: str
    command: str
    audit_csv: str | None
    tables: tuple["ReportTable", ...] = ()


@dataclass(frozen=True)
class ReportTable:
    """A recipe's own table in the report: a heading, a sentence saying what it shows, a header and rows of text,
    and optionally a picture (a file name relative to the run folder, drawn below the table)."""

    title: str
    text: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    image: str | None = None


class RecordError(ValueError):
    """A :class:`RunRecord` that the report cannot draw; the message lists every problem found."""


# ---------------------------------------------------------------- validation

def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def validate_record(record: Any) -> None:
    """Checks that ``record`` is a drawable :class:`RunRecord`; raises :class:`RecordError` listing every problem.

    Checked: types, ``kind``, non-empty training set and variants, unique variant names, and that every
    per-variant tensor has the shape its siblings imply (``[C]``, ``[C, P]``, ``[C, Q]``, ``[P]``, ``[S]``),
    that indices fall inside the training set and that label codes are valid. Values such as NaN LIDs
    are allowed (a probe may never have been measured).
    """
    if not isinstance(record, RunRecord):
        raise TypeError(f"write_report needs a mmh_train.report.RunRecord; got {type(record).__name__}.")
    problems: list[str] = []

    def tensor(value: Any, where: str, *, floating: bool | None = None, optional: bool = False) -> bool:
        if value is None:
            if not optional:
                problems.append(f"{where} is None; it must be a torch.Tensor.")
            return False
        if not isinstance(value, Tensor):
            problems.append(f"{where} must be a torch.Tensor; got {type(value).__name__}.")
            return False
        if floating is True and not value.is_floating_point():
            problems.append(f"{where} must be floating point; got dtype {value.dtype}.")
            return False
        if floating is False and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
            problems.append(f"{where} must hold integer indices/codes; got dtype {value.dtype}.")
            return False
        return True

    if record.kind not in KINDS:
        problems.append(f"kind must be one of {KINDS}; got {record.kind!r}.")
    n_train = 0
    point_shape: tuple[int, ...] | None = None
    if tensor(record.train_x, "train_x", floating=True):
        if record.train_x.dim() < 2 or record.train_x.shape[0] == 0:
            problems.append(f"train_x must be a non-empty batch [N, ...]; got shape {_shape(record.train_x)}.")
        else:
            n_train = record.train_x.shape[0]
            point_shape = _shape(record.train_x)[1:]
            if record.kind == "vectors" and record.train_x.dim() != 2:
                problems.append(f"kind 'vectors' needs train_x of shape [N, D]; got {_shape(record.train_x)}.")
            if record.kind == "images" and record.train_x.dim() not in (3, 4):
                problems.append(f"kind 'images' needs train_x of shape [N, C, H, W] (or [N, H, W]); "
                                f"got {_shape(record.train_x)}.")
    if tensor(record.heldout_x, "heldout_x", floating=True) and point_shape is not None:
        if record.heldout_x.shape[0] > 0 and _shape(record.heldout_x)[1:] != point_shape:
            problems.append(f"heldout_x points have shape {_shape(record.heldout_x)[1:]} but training points "
                            f"have {point_shape}.")
    if record.duplicated is not None and tensor(record.duplicated, "duplicated"):
        if record.duplicated.dtype != torch.bool or _shape(record.duplicated) != (n_train,):
            problems.append(f"duplicated must be a bool tensor of shape [N] = [{n_train}] or None; got "
                            f"{record.duplicated.dtype} of shape {_shape(record.duplicated)}.")
    if not isinstance(record.config, Mapping):
        problems.append(f"config must be a dict; got {type(record.config).__name__}.")
    for name in ("recipe", "machine", "command"):
        if not isinstance(getattr(record, name), str):
            problems.append(f"{name} must be a string; got {type(getattr(record, name)).__name__}.")
    if record.audit_csv is not None and not isinstance(record.audit_csv, str):
        problems.append(f"audit_csv must be a file name (str) or None; got {type(record.audit_csv).__name__}.")
    for t, table in enumerate(record.tables):
        if not isinstance(table, ReportTable):
            problems.append(f"tables[{t}] must be a ReportTable; got {type(table).__name__}.")
        elif any(len(row) != len(table.header) for row in table.rows):
            problems.append(f"tables[{t}] ({table.title!r}) has rows whose length differs from its header's "
                            f"({len(table.header)}).")

    variants = record.variants
    if not isinstance(variants, (list, tuple)) or len(variants) == 0:
        problems.append("variants is empty; a report needs at least one VariantResult.")
        variants = []
    seen: set[str] = set()
    for i, v in enumerate(variants):
        if not isinstance(v, VariantResult):
            problems.append(f"variants[{i}] must be a VariantResult; got {type(v).__name__}.")
            continue
        where = f"variant {v.name!r}" if isinstance(v.name, str) else f"variants[{i}]"
        if not isinstance(v.name, str) or not v.name.strip():
            problems.append(f"variants[{i}].name must be a non-empty string; got {v.name!r}.")
        elif v.name in seen:
            problems.append(f"variant name {v.name!r} appears twice; names must be unique.")
        else:
            seen.add(v.name)
        problems.extend(_variant_problems(v, where, n_train, point_shape, tensor))
    if problems:
        listed = "\n  - ".join(problems)
        raise RecordError(f"the run record cannot be reported ({len(problems)} problem(s)):\n  - {listed}")


def _variant_problems(v: VariantResult, where: str, n_train: int, point_shape: tuple[int, ...] | None,
                      tensor: Any) -> list[str]:
    out: list[str] = []
    C = P = Q = S = None
    if tensor(v.steps, f"{where}: steps"):
        if v.steps.dim() != 1 or v.steps.shape[0] == 0:
            out.append(f"{where}: steps must have shape [C] with C ≥ 1 checks; got {_shape(v.steps)}.")
        else:
            C = v.steps.shape[0]
    if tensor(v.lid_train, f"{where}: lid_train", floating=True):
        if v.lid_train.dim() != 2 or v.lid_train.shape[1] == 0:
            out.append(f"{where}: lid_train must have shape [C, P] with P ≥ 1 probes; got {_shape(v.lid_train)}.")
        elif C is not None and v.lid_train.shape[0] != C:
            out.append(f"{where}: lid_train has {v.lid_train.shape[0]} checks but steps has {C}.")
        else:
            P = v.lid_train.shape[1]
    if tensor(v.lid_heldout, f"{where}: lid_heldout", floating=True):
        if v.lid_heldout.dim() != 2:
            out.append(f"{where}: lid_heldout must have shape [C, Q]; got {_shape(v.lid_heldout)}.")
        elif C is not None and v.lid_heldout.shape[0] != C:
            out.append(f"{where}: lid_heldout has {v.lid_heldout.shape[0]} checks but steps has {C}.")
        else:
            Q = v.lid_heldout.shape[1]
    del Q
    if tensor(v.train_index, f"{where}: train_index", floating=False):
        if P is not None and _shape(v.train_index) != (P,):
            out.append(f"{where}: train_index must have shape [P] = [{P}]; got {_shape(v.train_index)}.")
        elif v.train_index.numel() and (int(v.train_index.min()) < 0 or int(v.train_index.max()) >= n_train):
            out.append(f"{where}: train_index must index the training set [0, {n_train}); got values in "
                       f"[{int(v.train_index.min())}, {int(v.train_index.max())}].")
    for name, floating in (("lid_ref", True), ("labels", False), ("od_gap", True), ("score", True)):
        value = getattr(v, name)
        if value is None or not tensor(value, f"{where}: {name}", floating=floating, optional=True):
            continue
        if P is not None and _shape(value) != (P,):
            out.append(f"{where}: {name} must have shape [P] = [{P}] (one per training probe); got {_shape(value)}.")
        elif name == "labels" and value.numel() and (int(value.min()) < 0 or int(value.max()) >= len(LABEL_NAMES)):
            out.append(f"{where}: labels must be codes 0..{len(LABEL_NAMES) - 1} ({', '.join(LABEL_NAMES)}); "
                       f"got values in [{int(value.min())}, {int(value.max())}].")
    if tensor(v.samples, f"{where}: samples", floating=True):
        S = v.samples.shape[0] if v.samples.dim() >= 1 else None
        if S is None or (point_shape is not None and S > 0 and _shape(v.samples)[1:] != point_shape):
            out.append(f"{where}: samples must have shape [S, *{point_shape}] like the training points; "
                       f"got {_shape(v.samples)}.")
    if tensor(v.copy_score, f"{where}: copy_score", floating=True) and S is not None \
            and _shape(v.copy_score) != (S,):
        out.append(f"{where}: copy_score must have shape [S] = [{S}] (one per sample); got {_shape(v.copy_score)}.")
    if tensor(v.copy_nearest, f"{where}: copy_nearest", floating=False):
        if S is not None and _shape(v.copy_nearest) != (S,):
            out.append(f"{where}: copy_nearest must have shape [S] = [{S}]; got {_shape(v.copy_nearest)}.")
        elif v.copy_nearest.numel() and (int(v.copy_nearest.min()) < 0 or int(v.copy_nearest.max()) >= n_train):
            out.append(f"{where}: copy_nearest must index the training set [0, {n_train}); got values in "
                       f"[{int(v.copy_nearest.min())}, {int(v.copy_nearest.max())}].")
    for name in ("copy_rate", "train_seconds"):
        value = getattr(v, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            out.append(f"{where}: {name} must be a number; got {type(value).__name__}.")
    if v.copy_control_rate is not None and (isinstance(v.copy_control_rate, bool)
                                             or not isinstance(v.copy_control_rate, (int, float))):
        out.append(f"{where}: copy_control_rate must be a number or None; got {type(v.copy_control_rate).__name__}.")
    if v.restored_step is not None and (isinstance(v.restored_step, bool) or not isinstance(v.restored_step, int)):
        out.append(f"{where}: restored_step must be an int or None; got {type(v.restored_step).__name__}.")
    for name in ("quality", "metrics", "remedies"):
        if not isinstance(getattr(v, name), Mapping):
            out.append(f"{where}: {name} must be a dict; got {type(getattr(v, name)).__name__}.")
    return out


# ---------------------------------------------------------------- shared per-probe numbers

def forward_fill(history: Tensor) -> Tensor:
    """``[C, N]`` → ``[C, N]`` float64 on the CPU: :func:`mmh_train.history.forward_fill` for the report."""
    return fill_forward(history.detach().cpu().to(torch.float64))


def last_lid(history: Tensor) -> Tensor:
    """``[C, N]`` → ``[N]``: each probe's latest measured LID (NaN if never measured)."""
    return forward_fill(history)[-1]


def final_lid(v: VariantResult) -> Tensor:
    """``[P]``: each training probe's latest LID_θ as of the check whose weights the variant ends with —
    the last check, or the one early stopping restored (``restored_step``), so that LIDs, labels and
    samples all describe the same weights."""
    filled = forward_fill(v.lid_train)
    if v.restored_step is not None and v.restored_step in v.steps.tolist():
        at = len(v.steps) - 1 - v.steps.tolist()[::-1].index(v.restored_step)
        return filled[at]
    return filled[-1]


def measured_mask(v: VariantResult) -> Tensor:
    """``[P]`` bool: training probes whose LID_θ (and LID*, if given) is known at the final check
    (:func:`final_lid`)."""
    ok = torch.isfinite(final_lid(v))
    if v.lid_ref is not None:
        ok &= torch.isfinite(v.lid_ref.detach().cpu().to(torch.float64))
    return ok


def label_counts(v: VariantResult) -> dict[str, int] | None:
    """Counts of the measured training probes per label name, plus ``"unmeasured"``; None without labels."""
    if v.labels is None:
        return None
    ok = measured_mask(v)
    labels = v.labels.detach().cpu().long()
    counts = {name: int(((labels == code) & ok).sum()) for code, name in enumerate(LABEL_NAMES)}
    counts["unmeasured"] = int((~ok).sum())
    return counts


def top_memorized(v: VariantResult, k: int = 10) -> tuple[Tensor, str]:
    """Positions (into the probe axis) of the ``k`` most memorized training probes, and the ranking used.

    Ranked by the verdicts' ``score`` (highest first) when the run has it, else by ``od_gap``, else by the
    lowest latest LID_θ; probes without a value are left out, so fewer than ``k`` may come back.
    """
    if v.score is not None:
        score = v.score.detach().cpu().to(torch.float64)
        ok = torch.nonzero(torch.isfinite(score)).flatten()
        return ok[torch.argsort(score[ok], descending=True, stable=True)][:k], "score"
    if v.od_gap is not None:
        gap = v.od_gap.detach().cpu().to(torch.float64)
        ok = torch.nonzero(torch.isfinite(gap)).flatten()
        order = ok[torch.argsort(gap[ok], descending=True, stable=True)]
        return order[:k], "od_gap"
    lid = final_lid(v)
    ok = torch.nonzero(torch.isfinite(lid)).flatten()
    order = ok[torch.argsort(lid[ok], stable=True)]
    return order[:k], "lowest LID_θ"
