"""The per-sample audit table: one row per probe, LID at every check, LID*, label, duplicate group."""

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
    """The per-sample audit table as CSV: index, split, LID at every check, LID*, label, duplicate group."""
    history = monitor.history_tensor()[:, 0, :]  # primary σ
    P = len(monitor.train_index)
    reference = result.labels.lid_ref if result.labels is not None else None
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["index", "split", *[f"lid@step{s}" for s in monitor.steps], "lid_ref", "label", "od_gap",
                     "collapse", "duplicate_group"])
    indices = torch.cat([monitor.train_index, monitor.heldout_index])
    for pos, index in enumerate(indices.tolist()):
        train = pos < P
        lids = ["" if math.isnan(v) else f"{v:.4f}" for v in history[:, pos].tolist()]
        label = LABEL_NAMES[int(result.labels.label[pos])] if (train and result.labels is not None) else ""
        ref = f"{float(reference[pos]):.4f}" if (train and reference is not None) else ""
        gap = f"{float(result.labels.od_gap[pos]):.4f}" if (train and result.labels is not None) else ""
        collapse = f"{float(result.collapse[pos]):.4f}" if train and not math.isnan(float(result.collapse[pos])) else ""
        group = str(int(groups[index])) if (train and groups is not None) else ""
        writer.writerow([index, "train" if train else "heldout", *lids, ref, label, gap, collapse, group])
    return out.getvalue()
