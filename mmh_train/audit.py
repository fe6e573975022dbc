"""The per-sample audit table: one row per probe, LID at every check, the verdict and what made it."""

from __future__ import annotations

import csv
import io
import math

import torch
from torch import Tensor

from .memorization import LABEL_NAMES
from .monitor import CheckResult, MemorizationMonitor

__all__ = ["audit_csv"]


def audit_csv(monitor: MemorizationMonitor, result: CheckResult, groups: Tensor | None = None) -> str:
    """The per-sample audit table as CSV, one row per probe.

    Columns: index, split, LID_θ at every check (primary σ), ``lid_ref`` (what LID_θ was compared with:
    the local held-out null, or LID*), label, ``od_gap``, ``score`` (higher = more memorized), ``p_value``,
    ``rule`` (``heldout_null`` or ``reference``), ``duplicated`` (whether the data duplicate the point),
    collapse, duplicate group (``groups``, or the monitor's own survey). Training rows carry the verdict.
    """
    history = monitor.history_tensor()[:, 0, :]  # primary σ
    P = len(monitor.train_index)
    reference = result.labels.lid_ref if result.labels is not None else None
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["index", "split", *[f"lid@step{s}" for s in monitor.steps], "lid_ref", "label", "od_gap",
                     "score", "p_value", "rule", "duplicated", "collapse", "duplicate_group"])
    labels = result.labels
    if groups is None and monitor.survey is not None:
        groups = monitor.survey.groups.group

    def number(values: Tensor | None, pos: int, fmt: str = "{:.4f}") -> str:
        if values is None or math.isnan(float(values[pos])):
            return ""
        return fmt.format(float(values[pos]))
    indices = torch.cat([monitor.train_index, monitor.heldout_index])
    for pos, index in enumerate(indices.tolist()):
        train = pos < P
        lids = ["" if math.isnan(v) else f"{v:.4f}" for v in history[:, pos].tolist()]
        label = LABEL_NAMES[int(result.labels.label[pos])] if (train and result.labels is not None) else ""
        ref = f"{float(reference[pos]):.4f}" if (train and reference is not None) else ""
        gap = number(labels.od_gap, pos) if (train and labels is not None) else ""
        verdict = ["", "", "", ""]
        if train and labels is not None:
            duplicated = "" if labels.duplicated is None else str(bool(labels.duplicated[pos])).lower()
            verdict = [number(labels.score, pos), number(labels.p_value, pos, "{:.3g}"), labels.rule, duplicated]
        collapse = f"{float(result.collapse[pos]):.4f}" if train and not math.isnan(float(result.collapse[pos])) else ""
        group = str(int(groups[index])) if (train and groups is not None) else ""
        writer.writerow([index, "train" if train else "heldout", *lids, ref, label, gap, *verdict, collapse, group])
    return out.getvalue()
