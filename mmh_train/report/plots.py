"""The report's three figures, drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas.

No pyplot and no global backend switch: every function builds its own figure, so the report is safe to
call from a training script, a notebook or a headless worker. :func:`figure_png` renders a figure to
PNG bytes (written atomically by :mod:`mmh_train.report.write`).

- :func:`plot_lid_over_training`: mean LID_θ of training vs held-out probes per check, 10–90% bands,
  LID* as a horizontal line. OD-Mem shows as the training curve falling away below the held-out one.
- :func:`plot_lid_scatter`: LID_θ at the last check against LID* per training probe, coloured by label.
- :func:`plot_samples`: a PCA view of training points and generated samples (vectors), or an image
  grid of the most memorized training images and of samples above their nearest training images.
"""

from __future__ import annotations

import io
import math
import textwrap

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg  # the Agg canvas, attached per figure: no pyplot
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from torch import Tensor

from ..memorization import LABEL_NAMES
from .record import COPY_THRESHOLD, RunRecord, VariantResult, final_lid, forward_fill, top_memorized

__all__ = ["plot_lid_over_training", "plot_lid_scatter", "plot_samples", "figure_png", "LABEL_COLOURS"]

LABEL_COLOURS: dict[str, str] = {"none": "#8c8c8c", "od": "#d62728", "dd": "#1f5fbf", "unlabelled": "#8c8c8c"}
TRAIN_COLOUR = "#e6750a"
HELDOUT_COLOUR = "#2a9d5c"
SAMPLE_COLOUR = "#e6750a"
COPY_COLOUR = "#d62728"
DUPLICATE_COLOUR = "#1f5fbf"
LID_THETA = r"LID$_\theta$"
LID_STAR = r"LID$^*$"
_MAX_POINTS = 20_000  # points drawn per scatter layer; more are subsampled (deterministically)
_DPI = 110


def figure_png(fig: Figure, *, dpi: int = _DPI) -> bytes:
    """Renders ``fig`` to PNG bytes with the Agg canvas."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return buffer.getvalue()


def _panels(fig: Figure, n: int, *, sharex: bool = False, sharey: bool = True, max_cols: int = 3):
    """``n`` axes in a grid of at most ``max_cols`` columns; extra grid cells are hidden."""
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    axes = fig.subplots(rows, cols, sharex=sharex, sharey=sharey, squeeze=False).flatten()
    for ax in axes[n:]:
        ax.set_visible(False)
    return list(axes[:n]), rows, cols


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float64).numpy()


# ---------------------------------------------------------------- LID over training

def _band(history: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Forward-filled ``[C, N]`` → mean, 10% and 90% quantiles and count of measured probes per check."""
    filled = forward_fill(history)
    if filled.shape[1] == 0:
        empty = np.full(filled.shape[0], np.nan)
        return empty, empty, empty, np.zeros(filled.shape[0], dtype=int)
    q = torch.nanquantile(filled, torch.tensor([0.1, 0.9], dtype=filled.dtype), dim=1)
    count = torch.isfinite(filled).sum(dim=1)
    return _np(filled.nanmean(dim=1)), _np(q[0]), _np(q[1]), count.numpy()


def plot_lid_over_training(record: RunRecord) -> Figure:
    """Mean LID_θ per check for training vs held-out probes (10–90% bands), LID* dashed; one panel per variant."""
    V = len(record.variants)
    width = min(max(4.6 * V, 7.5), 14.0)
    fig = Figure(figsize=(width, 3.9 * math.ceil(V / 3) + 1.2), layout="constrained")
    axes, _, _ = _panels(fig, V, sharey=True)
    handles: dict[str, object] = {}
    for ax, v in zip(axes, record.variants):
        steps = _np(v.steps)
        marker = "o" if len(steps) <= 30 else None
        for name, history, colour in (("training probes", v.lid_train, TRAIN_COLOUR),
                                      ("held-out probes", v.lid_heldout, HELDOUT_COLOUR)):
            if history.shape[1] == 0:
                continue
            mean, lo, hi, _ = _band(history)
            (line,) = ax.plot(steps, mean, color=colour, marker=marker, markersize=3.5, lw=1.8,
                              label=f"{name}: mean {LID_THETA}")
            if len(steps) == 1:
                ax.errorbar(steps, mean, yerr=[mean - lo, hi - mean], color=colour, capsize=4, lw=1.2)
            else:
                ax.fill_between(steps, lo, hi, color=colour, alpha=0.18, lw=0)
            handles.setdefault(name, line)
            handles.setdefault(f"{name} band", Patch(
                color=colour, alpha=0.25, label=f"{name}: 10–90% quantile band"))
        ref_text = ""
        if v.lid_ref is not None and v.rule != "heldout_null" and bool(torch.isfinite(v.lid_ref).any()):
            ref = float(v.lid_ref.detach().cpu().double().nanmedian())
            hline = ax.axhline(ref, color="black", ls="--", lw=1.2, label=f"{LID_STAR} (median of training probes)")
            handles.setdefault("ref", hline)
            ref_text = f", {LID_STAR} = {ref:.3g}"
        if v.restored_step is not None:
            vline = ax.axvline(v.restored_step, color="grey", ls=":", lw=1.5,
                               label="weights restored by early stopping (the samples come from there)")
            handles.setdefault("restored", vline)
        n_train, n_held = v.lid_train.shape[1], v.lid_heldout.shape[1]
        ax.set_title(f"{v.name}\n{n_train} train / {n_held} held-out probes{ref_text}", fontsize=9.5)
        ax.set_xlabel("training step")
        if len(steps) == 1:
            ax.set_xticks(steps)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{LID_THETA} (forward-filled per probe)")
    for ax in axes[1:]:
        ax.tick_params(labelleft=True)
    fig.suptitle(f"{LID_THETA} over training — {record.recipe}\na training curve falling below the "
                 f"held-out curve is OD-Mem", fontsize=11)
    if handles:
        fig.legend(handles=list(handles.values()), loc="outside lower center",
                   ncol=min(len(handles), 3 if width >= 9 else 2),
                   fontsize=8, frameon=False)
    return fig


# ---------------------------------------------------------------- LID_θ vs LID*

def plot_lid_scatter(record: RunRecord) -> Figure:
    """LID_θ at the last check vs what it was compared with (LID*, or the held-out null) per training probe,
    coloured by label, with y = x; one panel per variant.

    Without a reference the x-axis is each probe's first measured LID_θ instead (points under y = x collapsed).
    """
    V = len(record.variants)
    fig = Figure(figsize=(max(4.4 * min(V, 3), 6.6), 4.1 * math.ceil(V / 3) + 1.3), layout="constrained")
    axes, _, _ = _panels(fig, V, sharex=True, sharey=True)
    lo, hi = math.inf, -math.inf
    used: dict[str, Line2D] = {}
    any_ref = False
    for ax, v in zip(axes, record.variants):
        y = final_lid(v)
        if v.lid_ref is not None:
            x = v.lid_ref.detach().cpu().double()
            any_ref = True
        else:  # no reference: compare with the probe's own first measurement
            filled = forward_fill(v.lid_train)
            first = torch.isfinite(filled).float().argmax(dim=0)
            x = filled.gather(0, first[None]).squeeze(0)
        ok = torch.isfinite(x) & torch.isfinite(y)
        if v.labels is None:
            codes = torch.full_like(y, -1, dtype=torch.long)
        else:
            codes = v.labels.detach().cpu().long()
        parts = []
        for code, name in [(-1, "unlabelled")] + list(enumerate(LABEL_NAMES)):
            sel = ok & (codes == code)
            n = int(sel.sum())
            if code == -1 and v.labels is None or code >= 0 and v.labels is not None:
                parts.append(f"{name} {n}")
            if n == 0:
                continue
            ax.scatter(_np(x[sel]), _np(y[sel]), s=22 if name in ("od", "dd") else 16, c=LABEL_COLOURS[name],
                       alpha=0.75, edgecolors="white", linewidths=0.4, zorder=3 if name != "none" else 2)
            used.setdefault(name, Line2D([], [], ls="", marker="o", color=LABEL_COLOURS[name], label=name))
        if bool(ok.any()):
            lo = min(lo, float(x[ok].min()), float(y[ok].min()))
            hi = max(hi, float(x[ok].max()), float(y[ok].max()))
        unmeasured = int((~ok).sum())
        subtitle = " · ".join(parts) + (f" · unmeasured {unmeasured}" if unmeasured else "")
        ax.set_title(f"{v.name}\n{subtitle}", fontsize=9.5)
        if v.lid_ref is None:
            ax.set_xlabel(f"first measured {LID_THETA}")
        elif v.rule == "heldout_null":
            ax.set_xlabel(f"{LID_THETA} of the nearest held-out probes (the null)")
        else:
            ax.set_xlabel(f"{LID_STAR} (data)")
        ax.grid(alpha=0.3)
        if not bool(ok.any()):
            ax.text(0.5, 0.5, "no measured probes", transform=ax.transAxes, ha="center", va="center", color="grey")
    if math.isfinite(lo):
        pad = 0.06 * max(hi - lo, 1.0)
        lo, hi = lo - pad, hi + pad
        for ax in axes:
            ax.plot([lo, hi], [lo, hi], color="black", lw=1, ls="--", zorder=1)
        axes[0].set_xlim(lo, hi)
        axes[0].set_ylim(lo, hi)  # same limits on both axes and near-square panels: y = x runs at about 45°
    axes[0].set_ylabel(f"{LID_THETA} at the final check (model; the restored one, if any)")
    for ax in axes[1:]:
        ax.tick_params(labelleft=True)
    used = {name: used[name] for name in ("unlabelled", *LABEL_NAMES) if name in used}  # fixed legend order
    used["diag"] = Line2D([], [], color="black", ls="--", lw=1, label="y = x (model matches data)")
    null = any(v.rule == "heldout_null" and v.lid_ref is not None for v in record.variants)
    if null:
        used["diag"].set_label("y = x (reads like its held-out neighbours)")
        what = ("far below the diagonal = the model collapsed at the point (OD-Mem, or DD-Mem where the data "
                "duplicate it); labels: Benjamini–Hochberg against the held-out null")
        versus = "its held-out null"
    elif any_ref:
        what = f"below the diagonal = model thinner than data (OD-Mem); at {LID_STAR} ≈ 0 = duplicates (DD-Mem)"
        versus = LID_STAR
    else:
        what = f"no {LID_STAR} recorded: x = first measured {LID_THETA}; below the diagonal = collapsed since"
        versus = LID_STAR
    what = textwrap.fill(what, width=max(40, int(fig.get_figwidth() * 11)))  # one panel is narrow: wrap, never clip
    fig.suptitle(f"{LID_THETA} vs {versus} per training probe — {record.recipe}\n{what}", fontsize=10.5)
    fig.legend(handles=list(used.values()), loc="outside lower center", ncol=min(len(used), 4), fontsize=8.5,
               frameon=False)
    return fig


# ---------------------------------------------------------------- samples

def plot_samples(record: RunRecord, *, copy_threshold: float = COPY_THRESHOLD, n_cols: int = 8) -> Figure:
    """A PCA projection (``kind == "vectors"``) or an image grid (``kind == "images"``) of samples and copies."""
    if record.kind == "vectors":
        return _pca_samples(record, copy_threshold)
    return _image_grid(record, copy_threshold, n_cols)


def _subsample(n: int, cap: int) -> Tensor:
    if n <= cap:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(0))[:cap].sort().values


def _pca_samples(record: RunRecord, copy_threshold: float) -> Figure:
    X = record.train_x.detach().cpu().double().reshape(record.train_x.shape[0], -1)
    mean = X.mean(dim=0)
    Xc = X - mean
    D = X.shape[1]
    if D == 1:
        basis = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
        ratios = [1.0, 0.0]
    else:
        evals, evecs = torch.linalg.eigh(Xc.T @ Xc / max(X.shape[0], 1))
        order = torch.argsort(evals, descending=True)[:2]
        basis = evecs[:, order].T
        total = float(evals.clamp(min=0).sum())
        ratios = [float(evals[i].clamp(min=0)) / total if total > 0 else 0.0 for i in order]
    train2 = _np(Xc @ basis.T)
    V = len(record.variants)
    fig = Figure(figsize=(min(max(4.6 * V, 7.5), 14.0), 4.4 * math.ceil(V / 3) + 1.0), layout="constrained")
    axes, _, _ = _panels(fig, V, sharex=True, sharey=True)
    shown = _subsample(train2.shape[0], _MAX_POINTS).numpy()
    dup = record.duplicated.detach().cpu().numpy() if record.duplicated is not None else None
    handles: dict[str, object] = {}
    for ax, v in zip(axes, record.variants):
        # Drawn above the samples, hollow, so that both stay visible where samples pile up on training points.
        h = ax.scatter(train2[shown, 0], train2[shown, 1], s=22, facecolors="none", edgecolors="black", lw=0.7,
                       zorder=5, label="training points" + ("" if len(shown) == train2.shape[0] else " (subsample)"))
        handles.setdefault("train", h)
        if dup is not None and dup.any():
            h = ax.scatter(train2[dup, 0], train2[dup, 1], s=34, facecolors="none", edgecolors=DUPLICATE_COLOUR,
                           marker="s", lw=1.0, zorder=6, label=f"duplicated training points ({int(dup.sum())})")
            handles.setdefault("dup", h)
        S = v.samples.shape[0]
        if S:
            G = _np((v.samples.detach().cpu().double().reshape(S, -1) - mean) @ basis.T)
            copy = _np(v.copy_score) < copy_threshold
            keep = _subsample(S, _MAX_POINTS).numpy()
            rest = keep[~copy[keep]]
            h = ax.scatter(G[rest, 0], G[rest, 1], s=9, c=SAMPLE_COLOUR, alpha=0.7, lw=0, zorder=3,
                           label="generated samples")
            handles.setdefault("samples", h)
            if copy.any():
                h = ax.scatter(G[copy, 0], G[copy, 1], s=42, c=COPY_COLOUR, marker="x", lw=1.4, zorder=4,
                               label=f"copies (nearest-neighbour ratio < {copy_threshold:.2g})")
                handles.setdefault("copies", h)
            title = f"{v.name}: {int(copy.sum())}/{S} samples are copies ({copy.mean():.1%})\n{_control_note(v)}"
        else:
            title = f"{v.name}: no samples"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(f"PC1 ({ratios[0]:.0%} of variance)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"PC2 ({ratios[1]:.0%} of variance)")
    for ax in axes[1:]:
        ax.tick_params(labelleft=True)
    fig.suptitle(f"Training points and generated samples, PCA of the training set — {record.recipe}", fontsize=11)
    fig.legend(handles=list(handles.values()), loc="outside lower center",
               ncol=min(len(handles), 4 if fig.get_figwidth() >= 11 else 2), fontsize=8.5, frameon=False,
               markerscale=1.5)
    return fig


def _to_image(x: Tensor) -> tuple[np.ndarray, dict]:
    """``[C, H, W]`` (or ``[H, W]``) in ``[-1, 1]`` → an array for imshow and its keyword arguments."""
    x = ((x.detach().cpu().float() + 1.0) / 2.0).clamp(0.0, 1.0)
    if x.dim() == 2:
        return x.numpy(), {"cmap": "gray", "vmin": 0.0, "vmax": 1.0}
    if x.shape[0] == 3:
        return x.permute(1, 2, 0).numpy(), {}
    return x.mean(dim=0).numpy(), {"cmap": "gray", "vmin": 0.0, "vmax": 1.0}  # 1 channel (or a latent's mean)


def _show(ax, image: Tensor, caption: str, *, frame: str | None = None, caption_colour: str = "black") -> None:
    array, kwargs = _to_image(image)
    ax.imshow(array, interpolation="nearest", **kwargs)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(frame or "#cccccc")
        spine.set_linewidth(3.0 if frame else 0.6)
    ax.set_title(caption, fontsize=7, color=caption_colour, pad=2)


def _blank(ax) -> None:
    ax.set_axis_off()


def _control_note(v: VariantResult) -> str:
    """The copy rate's chance level in words: the same test on held-out data, and the excess."""
    if v.copy_control_rate is None:
        return "no control: chance rate unknown"
    return f"held-out control {v.copy_control_rate:.1%}, excess {v.copy_excess:+.1%}"


def _pick_samples(copy: np.ndarray, n: int) -> list[int]:
    """Up to ``n`` sample positions: about half copies (if any), the rest the first non-copies, in order."""
    copies = list(np.flatnonzero(copy))
    others = list(np.flatnonzero(~copy))
    n_copy = min(len(copies), max(n // 2, n - len(others)))
    return sorted(copies[:n_copy] + others[:n - n_copy])


def _image_grid(record: RunRecord, copy_threshold: float, n_cols: int) -> Figure:
    V = len(record.variants)
    cols = max(1, n_cols)
    cell = 1.05
    fig = Figure(figsize=(max(cols * cell, 6.5), cell * (1 + 2 * V) + 0.55 * (1 + V) + 0.5), layout="constrained")
    subfigs = fig.subfigures(1 + V, 1, height_ratios=[1.35] + [2.3] * V, hspace=0.02)
    subfigs = np.atleast_1d(subfigs)

    # Row 1: the most memorized training points of the first variant.
    first: VariantResult = record.variants[0]
    positions, ranking = top_memorized(first, cols)
    lid = final_lid(first)
    axes = subfigs[0].subplots(1, cols, squeeze=False)[0]
    for j, ax in enumerate(axes):
        if j >= len(positions):
            _blank(ax)
            continue
        p = int(positions[j])
        index = int(first.train_index[p])
        # one value per line, 3 significant digits: wide values (-1165) must not run into the next caption
        ref_name = "null" if first.rule == "heldout_null" else LID_STAR
        ref = f"\n{ref_name} {float(first.lid_ref[p]):.3g}" if first.lid_ref is not None else ""
        _show(ax, record.train_x[index], f"#{index}\n{LID_THETA} {float(lid[p]):.3g}{ref}")
    how = {"score": "highest score", "od_gap": "highest od_gap"}.get(ranking, f"lowest {LID_THETA}")
    versus = "its held-out null" if first.rule == "heldout_null" else LID_STAR
    head = f"Most memorized training images of '{first.name}' ({how}): training index, {LID_THETA} and {versus}"
    if len(positions) == 0:
        head += " — none measured"
    subfigs[0].suptitle(head, fontsize=9)

    # Then per variant: samples above their nearest training images.
    for sf, v in zip(subfigs[1:], record.variants):
        S = v.samples.shape[0]
        axes = sf.subplots(2, cols, squeeze=False)
        if S == 0:
            for ax in axes.flatten():
                _blank(ax)
            sf.suptitle(f"'{v.name}': no generated samples", fontsize=9)
            continue
        score = _np(v.copy_score)
        copy = score < copy_threshold
        picks = _pick_samples(copy, cols)
        for j in range(cols):
            if j >= len(picks):
                _blank(axes[0, j])
                _blank(axes[1, j])
                continue
            s = picks[j]
            near = int(v.copy_nearest[s])
            frame = COPY_COLOUR if copy[s] else None
            _show(axes[0, j], v.samples[s], ("COPY " if copy[s] else "") + f"score {score[s]:.2f}", frame=frame,
                  caption_colour=COPY_COLOUR if copy[s] else "black")
            _show(axes[1, j], record.train_x[near], f"nearest #{near}", frame=frame)
        axes[0, 0].set_ylabel("sample", fontsize=8)
        axes[1, 0].set_ylabel("nearest\ntrain", fontsize=8)
        sf.suptitle(f"'{v.name}': generated samples (top) over their nearest training image (bottom); "
                    f"{int(copy.sum())}/{S} copies (score < {copy_threshold:.2g}, red frame)\n{_control_note(v)}",
                    fontsize=9)
    return fig
