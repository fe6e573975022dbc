"""Writes a run's report folder: three plots, ``report.md``, ``report.html`` and ``summary.txt``.

The Markdown and the HTML are rendered from one list of blocks (headings, paragraphs, tables,
images, code), so the two always carry the same content. Every file is written atomically.

    from mmh_train.report import write_report, summary_text
    path = write_report(run_dir, record)   # → run_dir / "report.md"
    print(summary_text(record))
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..io import write_bytes_atomic, write_text_atomic
from ..memorization import LABEL_NAMES
from .plots import figure_png, plot_lid_over_training, plot_lid_scatter, plot_samples
from .record import (
    COPY_THRESHOLD,
    RunRecord,
    label_counts,
    final_lid,
    forward_fill,
    top_memorized,
    validate_record,
)
from .render import Block, markdown, standalone_html

__all__ = ["write_report", "summary_text", "PLOT_FILES", "SUMMARY_MAX_LINES"]

PLOT_FILES: dict[str, str] = {
    "lid_over_training": "plots/lid_over_training.png",
    "lid_scatter": "plots/lid_scatter.png",
    "samples": "plots/samples.png",
}
SUMMARY_MAX_LINES = 30
_LID = "{:.2f}"
_SUMMARY_WIDTH = 100
_METRIC_COLUMNS = (("lid_train", "LID_θ train"), ("lid_heldout", "LID_θ held-out"), ("lid_gap", "LID gap"),
                   ("od_fraction", "OD fraction"), ("dd_fraction", "DD fraction"))

WHAT_THIS_SHOWS = (
    "The monitor measures the model's local intrinsic dimension LID_θ at training probes and at held-out "
    "probes at every check, and compares it with the data's own LID* (docs/science.md §1). Two kinds of "
    "memorization look different. **OD-Mem** (overfitting-driven): on training points the model's manifold "
    "becomes thinner than the data's, LID_θ < LID*, while held-out points keep their LID — in the first plot "
    "the training curve falls away below the held-out curve and below the LID* line, and in the scatter the "
    "red points sit under the diagonal. It calls for regularization (the LID penalty) or early stopping. "
    "**DD-Mem** (data-driven): the data themselves are a point there (duplicated training examples have "
    "LID* = 0) and the model agrees, LID_θ ≈ LID* ≈ 0 — the blue points at the origin of the scatter; it calls "
    "for de-duplicating or down-weighting the data. Points near the diagonal with a LID* that is not small "
    "(grey) generalize. With held-out data (the default) the monitor compares each training point with what "
    "the same model reads on its nearest held-out points instead of LID* (the held-out null: those points are "
    "not memorized by construction), at three noise levels, and labels a point only where that drop is "
    "significant (Benjamini–Hochberg at 5%) and large: at least half the null where it reads a dimension, "
    "two robust spreads of the held-out values below it where FLIPD reads below zero (a model not yet fitted); "
    "DD then means the data duplicate "
    "the point (docs/science.md §7). Generated samples whose nearest-neighbour ratio is below 1/3 are copies of a "
    "training point (docs/science.md §6); the samples plot shows where they land. That test also fires by "
    "chance on data no model produced, often on low-dimensional data: the results give the same test's rate on "
    "the held-out points (the control) and the excess, model minus control, which is what the model copies "
    "beyond chance (docs/science.md §7). An excess below zero means the model avoids its training points "
    "rather than generalizing."
)


# ---------------------------------------------------------------- formatting

def _num(value: Any, fmt: str = "{:.3g}") -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return "—" if value is None else str(value)
    if isinstance(value, float) and math.isnan(value):
        return "—"
    return fmt.format(value)


def _pct(value: Any) -> str:
    if value is None or not isinstance(value, (int, float)) or isinstance(value, bool):
        return "—"
    return "—" if math.isnan(value) else f"{100.0 * value:.1f}%"


def _yaml(value: Any, indent: int = 0) -> list[str]:
    """A YAML-style rendering of a config: nested mappings indented, short scalar lists inline."""
    pad = "  " * indent
    if isinstance(value, Mapping):
        if not value:
            return [pad + "{}"]
        lines = []
        for key, item in value.items():
            if isinstance(item, Mapping) and item or _is_block_list(item):
                lines.append(f"{pad}{key}:")
                lines.extend(_yaml(item, indent + 1))
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
        return lines
    if _is_block_list(value):
        lines = []
        for item in value:
            sub = _yaml(item, indent + 1)
            lines.append(f"{pad}- {sub[0].lstrip()}")
            lines.extend(sub[1:])
        return lines
    return [pad + _scalar(value)]


def _is_block_list(value: Any) -> bool:
    if not isinstance(value, (list, tuple)):
        return False
    inline = ", ".join(_scalar(v) for v in value)
    return any(isinstance(v, (Mapping, list, tuple)) for v in value) or len(inline) > 80


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}" if value.numel() > 8 else repr(value.tolist())
    text = str(value)
    if text == "" or text != text.strip() or any(c in text for c in ":#{}[],&*!|>'\"%@`\n") \
            or text.lower() in ("null", "true", "false", "yes", "no", "~"):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def _quality_keys(record: RunRecord) -> list[str]:
    keys: list[str] = []
    for v in record.variants:
        keys.extend(k for k in v.quality if k not in keys)
    return keys


# ---------------------------------------------------------------- content as blocks

def _blocks(record: RunRecord, run_dir: Path, copy_threshold: float, top_k: int) -> list[Block]:
    B = Block
    out = [B("h1", f"Memorization report — {record.recipe}"),
           B("p", f"Recipe **{record.recipe}** ({record.kind}), {len(record.variants)} variant(s): "
                  + ", ".join(v.name for v in record.variants) + f". Training set: {record.train_x.shape[0]} "
                  f"points of shape {tuple(record.train_x.shape[1:])}; held-out set: {record.heldout_x.shape[0]}."),
           B("p", f"Machine: {record.machine}"),
           B("p", "Command:"),
           B("code", record.command),
           B("h2", "What this shows"),
           B("p", WHAT_THIS_SHOWS),
           B("h2", "Results")]
    quality = _quality_keys(record)
    header = ("variant", "weights of step", *(label for _, label in _METRIC_COLUMNS), "copy rate", "control",
              "excess (95% CI)", *quality, "train seconds")
    rows = []
    for v in record.variants:
        m = v.metrics
        rows.append((v.name, _weights_step(v), _num(m.get("lid_train"), _LID), _num(m.get("lid_heldout"), _LID),
                     _num(m.get("lid_gap"), _LID),
                     _pct(m.get("od_fraction")), _pct(m.get("dd_fraction")), _pct(float(v.copy_rate)),
                     _pct(v.copy_control_rate), _excess(v),
                     *(_num(v.quality.get(k), "{:.4g}") for k in quality), _num(float(v.train_seconds), "{:.1f}")))
    out.append(B("table", header=header, rows=tuple(rows)))
    extra = sorted({k for v in record.variants for k in v.metrics} - {k for k, _ in _METRIC_COLUMNS})
    if extra:
        out.append(B("p", "Other final metrics: " + "; ".join(
            f"{v.name}: " + ", ".join(f"{k} = {_num(v.metrics.get(k))}" for k in extra) for v in record.variants)))
    out.append(B("p", "Weights of step: the training step whose weights made the samples; \"restored\" when "
                      "early stopping loaded an earlier check's weights back, and the LID and label columns then "
                      "come from that same check. LID gap = held-out minus training LID_θ (positive when training "
                      "points collapse). Copy rate: samples whose nearest-neighbour ratio is below "
                      f"{copy_threshold:.3g}; control: the same test on the held-out points, which no model "
                      "produced (its chance rate); excess: copy rate minus control, with its 95% interval "
                      "(Newcombe)."))

    unusual = _unusual_lids(record)
    if unusual:
        out.append(B("p", unusual))
    out.append(B("h2", "Plots"))
    out.append(B("p", "LID_θ over training: mean over training probes and over held-out probes at each check "
                      "(each probe's latest measurement carried forward), 10–90% bands, LID* dashed (when the "
                      "labels compare with LID*); a dotted line marks the check whose weights early stopping "
                      "restored."))
    out.append(B("img", "LID over training", href=PLOT_FILES["lid_over_training"]))
    versus = ("the LID_θ of its nearest held-out probes (the held-out null)"
              if any(v.rule == "heldout_null" for v in record.variants) else "LID*")
    levels = (" Both axes are at the primary (largest) noise level; the labels weigh every level, so a point near "
              "the diagonal here can be labelled from a smaller σ." if "held-out null" in versus else "")
    out.append(B("p", f"LID_θ at the final check (the restored one, if any) against {versus} for every training "
                      f"probe, coloured by label (none grey, OD red, DD blue); the dashed line is y = x.{levels}"))
    out.append(B("img", f"LID_θ vs {versus} per training probe", href=PLOT_FILES["lid_scatter"]))
    if record.kind == "vectors":
        what = ("Training points (black circles, drawn on top; duplicated ones boxed in blue) and generated samples (orange; copies as red "
                "crosses), projected on the first two principal components of the training set.")
    else:
        what = ("Top row: the most memorized training images of the first variant. Then, per variant, generated "
                "samples above their nearest training image; copies are framed in red.")
    out.append(B("p", what))
    out.append(B("img", "Generated samples and copies", href=PLOT_FILES["samples"]))

    out.append(B("h2", "Labels per variant"))
    if any(v.labels is not None for v in record.variants):
        rows = []
        for v in record.variants:
            c = label_counts(v)
            rows.append((v.name, *((str(c[n]) for n in (*LABEL_NAMES, "unmeasured")) if c else ["—"] * 4)))
        out.append(B("table", header=("variant", *LABEL_NAMES, "unmeasured"), rows=tuple(rows)))
        out.append(B("p", "Counts of training probes by label at the last check; unmeasured probes have no "
                          "LID_θ (or nothing to compare it with) yet."))
    else:
        out.append(B("p", "No labels: the run had no held-out data and no LID* reference."))

    out.append(B("h2", f"Top {top_k} most memorized training points"))
    for v in record.variants:
        positions, ranking = top_memorized(v, top_k)
        lid = final_lid(v)
        rows = []
        for rank, p in enumerate(positions.tolist(), 1):
            rows.append((str(rank), str(int(v.train_index[p])), _num(float(lid[p]), _LID),
                         _num(float(v.lid_ref[p]), _LID) if v.lid_ref is not None else "—",
                         _num(float(v.od_gap[p]), _LID) if v.od_gap is not None else "—",
                         _num(float(v.score[p]), _LID) if v.score is not None else "—",
                         LABEL_NAMES[int(v.labels[p])] if v.labels is not None else "—"))
        out.append(B("p", f"**{v.name}** (ranked by {ranking}):"))
        if rows:
            out.append(B("table", header=("rank", "train index", "LID_θ", v.reference_name, "gap", "score", "label"),
                         rows=tuple(rows)))
        else:
            out.append(B("p", "no measured probes."))

    for table in record.tables:
        out += [B("h2", table.title), B("p", table.text), B("table", header=table.header, rows=table.rows)]
        if table.image:
            out.append(B("img", table.title, href=table.image))

    out.append(B("h2", "Remedies"))
    items = []
    for v in record.variants:
        if v.remedies:
            items.append(f"{v.name}: " + "; ".join(f"{k} — {d}" for k, d in v.remedies.items()))
        else:
            items.append(f"{v.name}: none")
    out.append(B("list", rows=tuple(items)))

    out.append(B("h2", "Config"))
    out.append(B("code", "\n".join(_yaml(dict(record.config))) if record.config else "{}"))

    out.append(B("h2", "Per-sample audit table"))
    if record.audit_csv:
        found = (run_dir / record.audit_csv).is_file()
        out.append(B("link", record.audit_csv, href=_relative(record.audit_csv, run_dir)))
        if not found:
            out.append(B("p", f"(not found in {run_dir} when the report was written)"))
    else:
        out.append(B("p", "No audit table was written for this run."))
    return out


def _relative(name: str, run_dir: Path) -> str:
    path = Path(name)
    if path.is_absolute():
        try:
            path = path.resolve().relative_to(run_dir.resolve())
        except ValueError:
            return path.as_posix()
    return path.as_posix()


# ---------------------------------------------------------------- renderers

def _unusual_lids(record: RunRecord) -> str:
    """A sentence when some LID_θ is negative or above the ambient dimension D, which a dimension cannot be;
    empty otherwise."""
    dim = int(record.train_x[0].numel())
    values = torch.cat([forward_fill(torch.cat([v.lid_train, v.lid_heldout], 1)).flatten() for v in record.variants])
    values = values[torch.isfinite(values)]
    if values.numel() == 0:
        return ""
    low, high = float(values.min()), float(values.max())
    parts = ([f"negative (down to {low:.3g})"] if low < 0 else []) + \
            ([f"above the ambient dimension D = {dim} (up to {high:.3g})"] if high > dim else [])
    if not parts:
        return ""
    return ("Some LID_θ values are " + " and ".join(parts) + ", which no dimension can be. FLIPD is not clipped: "
            "an imperfect or briefly trained network reads negative values, and a point the model carries far "
            "(off its manifold, or onto a few memorized atoms) reads ≈ LID + r²/σ² (docs/science.md §3). Compare "
            "such values with each other and with the held-out probes, not with a dimension.")


def _weights_step(v: Any) -> str:
    if v.restored_step is not None:
        return f"{v.restored_step} (restored)"
    return str(int(v.steps[-1])) if v.steps.numel() else "—"


def _excess(v: Any) -> str:
    if v.copy_excess is None:
        return "— (no control)"
    text = f"{100.0 * v.copy_excess:+.1f}%"
    if v.copy_excess_interval is not None:
        low, high = v.copy_excess_interval
        text += f" [{100.0 * low:+.1f}, {100.0 * high:+.1f}]"
    return text


# ---------------------------------------------------------------- summary

def _clip(line: str) -> str:
    return line if len(line) <= _SUMMARY_WIDTH else line[:_SUMMARY_WIDTH - 1] + "…"


def summary_text(record: RunRecord, *, top_k: int = 10) -> str:
    """A plain-text summary of at most 30 lines of at most 100 characters: results, labels, top-k, remedies."""
    validate_record(record)
    V = len(record.variants)
    shown = record.variants[:6]  # beyond 6 variants the summary points to report.md
    quality = _quality_keys(record)[:1]  # the report has them all; a line holds one
    lines = [f"mmh_train report: {record.recipe} ({record.kind}), {V} variant(s), "
             f"{record.train_x.shape[0]} training points"]
    width = max(8, *(len(v.name) for v in shown))
    qwidth = [8 for _ in quality]  # a name longer than the column is cut (the report has it whole)
    lines.append(f"{'variant':<{width}}  {'step':>5}  LIDθ train  held-out    OD%    DD%  copies  control  excess  "
                 + "".join(f"{q[:w]:>{w}}  " for q, w in zip(quality, qwidth)) + "train s")
    for v in shown:
        m = v.metrics
        step = f"{v.restored_step}*" if v.restored_step is not None else (str(int(v.steps[-1])) if v.steps.numel() else "—")
        excess = "—" if v.copy_excess is None else f"{100.0 * v.copy_excess:+.1f}%"
        lines.append(f"{v.name:<{width}}  {step:>5}  {_num(m.get('lid_train'), '{:.2f}'):>10}  "
                     f"{_num(m.get('lid_heldout'), '{:.2f}'):>8}  {_pct(m.get('od_fraction')):>5}  "
                     f"{_pct(m.get('dd_fraction')):>5}  {_pct(float(v.copy_rate)):>6}  "
                     f"{_pct(v.copy_control_rate):>7}  {excess:>6}  "
                     + "".join(f"{_num(v.quality.get(q), '{:.4g}'):>{w}}  " for q, w in zip(quality, qwidth))
                     + f"{float(v.train_seconds):7.1f}")
    lines.append("step: weights sampled (* = restored by early stopping); control: the copy test on held-out data")
    lines.append("labels at the last check (none / od / dd; unmeasured):")
    for v in shown:
        c = label_counts(v)
        lines.append(f"  {v.name}: " + (f"{c['none']} / {c['od']} / {c['dd']}; {c['unmeasured']}" if c
                                         else "no labels (no LID*)"))
    lines.append(f"top {top_k} memorized training indices:")
    for v in shown:
        positions, ranking = top_memorized(v, top_k)
        idx = " ".join(str(int(v.train_index[p])) for p in positions.tolist()) or "none measured"
        lines.append(f"  {v.name} (by {ranking}): {idx}")
    lines.append("remedies:")
    remedy_lines = []
    for v in shown:
        if not v.remedies:
            remedy_lines.append([f"  {v.name}: none"])
        else:
            remedy_lines.append([f"  {v.name}:"] + [f"    {k}: {d}" for k, d in v.remedies.items()])
    tail = [f"... {V - len(shown)} more variant(s): see report.md"] if V > len(shown) else []
    room = SUMMARY_MAX_LINES - len(lines) - len(tail)
    if sum(map(len, remedy_lines)) > room:  # too long one per line: one line per variant
        remedy_lines = [[f"  {v.name}: " + ("; ".join(f"{k}: {d}" for k, d in v.remedies.items()) or "none")]
                        for v in shown]
    lines += [line for group in remedy_lines for line in group] + tail
    lines = [_clip(line) for line in lines]
    if len(lines) > SUMMARY_MAX_LINES:
        lines = lines[:SUMMARY_MAX_LINES - 1] + ["... (cut; see report.md)"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- entry point

def write_report(run_dir: str | os.PathLike, record: RunRecord, *, copy_threshold: float = COPY_THRESHOLD,
                 top_k: int = 10) -> Path:
    """Writes the report of ``record`` into ``run_dir`` and returns the path of ``report.md``.

    Files (all written atomically; ``run_dir`` is created if needed):
    ``plots/lid_over_training.png``, ``plots/lid_scatter.png``, ``plots/samples.png``, ``report.md``,
    ``report.html`` (standalone: the plots are embedded) and ``summary.txt`` (also :func:`summary_text`).

    Args:
        run_dir: the run folder (where the monitor wrote ``record.audit_csv``).
        record: the run; checked with :func:`~mmh_train.report.validate_record` before anything is written.
        copy_threshold: samples with a nearest-neighbour ratio below this are drawn as copies.
        top_k: how many most-memorized training points the report lists.

    Raises:
        RecordError: the record is inconsistent (shapes, indices, label codes); the message lists each problem.
    """
    validate_record(record)
    if not (isinstance(top_k, int) and top_k >= 1):
        raise ValueError(f"top_k must be a positive int; got {top_k!r}.")
    if not (isinstance(copy_threshold, (int, float)) and copy_threshold > 0):
        raise ValueError(f"copy_threshold must be a positive number; got {copy_threshold!r}.")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pngs: dict[str, bytes] = {}
    for key, make in (("lid_over_training", lambda: plot_lid_over_training(record)),
                      ("lid_scatter", lambda: plot_lid_scatter(record)),
                      ("samples", lambda: plot_samples(record, copy_threshold=copy_threshold))):
        pngs[PLOT_FILES[key]] = figure_png(make())
        write_bytes_atomic(run_dir / PLOT_FILES[key], pngs[PLOT_FILES[key]])
    blocks = _blocks(record, run_dir, copy_threshold, top_k)
    write_text_atomic(run_dir / "report.md", markdown(blocks))
    write_text_atomic(run_dir / "report.html", standalone_html(blocks, f"Memorization report — {record.recipe}", pngs))
    write_text_atomic(run_dir / "summary.txt", summary_text(record, top_k=top_k))
    return run_dir / "report.md"

