"""The truth the memorization recipe measures at every check, and the pictures and tables it draws from it.

Recipe code (a user's loop would not sample at every check): at each check the model draws samples; the copy
test compares them with the training digits and, as its control, the unseen digits; ``memorized_points`` says
which training digits are copied beyond chance; a feature distance to the unseen digits measures quality.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import mmh_train
from mmh_train.memorization import LABEL_NAMES, NONE
from mmh_train.quality import DigitsFeatures, sliced_wasserstein
from mmh_train.report import ReportTable
from mmh_train.sampling import sample

#: A sample copies its nearest training digit when it lies within this fraction of that digit's spacing (the
#: pictures' criterion; the copy rate uses the ratio test and the truth ``memorized_points``).
PICTURE_COPY = 0.2


@dataclass
class CheckEvidence:
    """What one check found: the guard's verdicts and the truth measured beside them (``[N]`` per training row)."""

    step: int
    seconds: float
    label: Tensor            # [N] long, the guard's label (NONE/OD/DD)
    score: Tensor            # [N] float64, the verdicts' ranking score
    memorized: Tensor        # [N] bool, memorized_points' truth
    copy_rate: float
    control_rate: float
    quality: float           # feature distance of the samples to unseen digits (lower = better)
    lid_train: float         # median LID_θ of training / held-out probes at the primary σ
    lid_heldout: float
    samples: Tensor          # [G, 1, S, S]
    nearest: Tensor          # [G] long, each sample's nearest training digit
    close: Tensor            # [G] bool, within PICTURE_COPY of that digit's spacing

    @property
    def excess(self) -> float:
        return self.copy_rate - self.control_rate

    @property
    def n_labelled(self) -> int:
        return int((self.label != NONE).sum())

    @property
    def auroc(self) -> float:
        """AUROC of the verdicts' score against the truth (NaN while one class is empty)."""
        truth = self.memorized.numpy()
        if truth.all() or not truth.any() or not bool(torch.isfinite(self.score).all()):
            return math.nan
        from sklearn.metrics import roc_auc_score

        return float(roc_auc_score(truth, self.score.numpy()))

    def line(self, name: str) -> str:
        return (f"{name}: step {self.step:5d}  {self.seconds:4.0f} s  LID_θ train {self.lid_train:8.1f} / held-out "
                f"{self.lid_heldout:8.1f}  labelled {self.n_labelled:3d}  memorized {int(self.memorized.sum()):3d}  "
                f"copies {self.copy_rate:5.1%} (control {self.control_rate:4.1%})  quality {self.quality:.3f}")


def evidence_at(step: int, result: Any, denoiser: Any, train_x: Tensor, heldout: Tensor, features: DigitsFeatures, *,
                n_samples: int, steps: int, seed: int, seconds: float) -> CheckEvidence:
    """Samples the model as it stands at this check and measures the truth beside the check's verdicts."""
    samples = sample(denoiser, (n_samples, *train_x.shape[1:]), steps=steps, sigma_min=0.02, sigma_max=80.0,
                     generator=torch.Generator().manual_seed(seed + 1))
    copies = mmh_train.detect_copies(samples, train_x, control=heldout)
    with warnings.catch_warnings():  # the power warning of the count test: the distance test still applies
        warnings.simplefilter("ignore", UserWarning)
        truth = mmh_train.memorized_points(samples, train_x, heldout)
    with torch.no_grad():
        quality = sliced_wasserstein(features(samples), features(heldout),
                                     generator=torch.Generator().manual_seed(seed))
    n = len(train_x)
    label, score = torch.full((n,), NONE, dtype=torch.long), torch.full((n,), math.nan, dtype=torch.float64)
    labels = result.labels
    if labels is not None:
        label[result.train_index] = labels.label
        score[result.train_index] = labels.ranking.double()
    flat, train_flat = samples.flatten(1), train_x.flatten(1)
    distance = torch.cdist(flat, train_flat)
    nearest = distance.min(1)
    spacing = torch.cdist(train_flat, train_flat).fill_diagonal_(math.inf)
    spacing = spacing.masked_fill(spacing == 0, math.inf).min(1).values
    return CheckEvidence(step=step, seconds=seconds, label=label, score=score, memorized=truth.memorized.clone(),
                         copy_rate=copies.copy_rate, control_rate=copies.control_rate, quality=quality,
                         lid_train=float(result.lid_train.nanmedian()), lid_heldout=float(result.lid_heldout.nanmedian()),
                         samples=samples, nearest=nearest.indices,
                         close=nearest.values < PICTURE_COPY * spacing[nearest.indices])


def first_step(flags: list[Tensor], steps: list[int]) -> Tensor:
    """``[N]`` the first step at which each row's flag was set (−1: never)."""
    first = torch.full_like(flags[0], -1, dtype=torch.long)
    for flag, step in zip(flags, steps):
        first = torch.where((first < 0) & flag, torch.full_like(first, step), first)
    return first


def detection(run: Any) -> dict[str, float]:
    """The detection lead and false labels of a run, against the truth at its checks (issue 20's goals).

    lead: of the digits ever memorized, the fraction labelled at or before the first check where the truth
    says so; false: of the digits never memorized, the fraction labelled at some check.
    """
    steps = [e.step for e in run.evidence]
    copied = first_step([e.memorized for e in run.evidence], steps)
    labelled = first_step([e.label != NONE for e in run.evidence], steps)
    ever = copied >= 0
    lead = ((labelled >= 0) & (labelled <= copied))[ever].double().mean().item() if ever.any() else math.nan
    false = (labelled >= 0)[~ever].double().mean().item() if (~ever).any() else math.nan
    return {"copied": int(ever.sum()), "lead": lead, "false": false, "n": len(copied)}


def copier_quality(train_x: Tensor, heldout: Tensor, features: DigitsFeatures, seed: int) -> float:
    """The quality a perfect copier reaches: the training digits' own feature distance to the unseen digits
    (samples that are the training set, drawn evenly). A model that copies approaches it; so quality alone
    cannot tell a copier from a model that generalizes as well as its training set allows."""
    with torch.no_grad():
        return sliced_wasserstein(features(train_x), features(heldout), generator=torch.Generator().manual_seed(seed))


def summary_lines(run: Any) -> list[str]:
    """The run's headline: detection lead, false labels, and what early stopping kept against the baseline."""
    d = detection(run)
    best_quality = min(e.quality for e in run.evidence)
    last = run.evidence[-1]
    lines = [f"{run.name}: {d['copied']} of {d['n']} training digits memorized by the end; labelled at or before "
             f"their first copy: {d['lead']:.0%}; never-memorized digits labelled: {d['false']:.0%}",
             f"{run.name}: end of training: excess copies {last.excess:+.1%}, quality {last.quality:.3f} (best of the run "
             f"{best_quality:.3f}; the training set itself, a perfect copier: {run.copier_quality:.3f})"]
    if run.stopped is not None:
        s = run.stopped
        ratio = s.excess / last.excess if last.excess > 0 else math.nan
        lines.append(f"{run.name}: early stopping restores step {s.step}: excess copies {s.excess:+.1%} "
                     f"({ratio:.0%} of the end's), quality {s.quality:.3f} ({s.quality / best_quality - 1:+.0%} against "
                     f"the run's best)")
    else:
        lines.append(f"{run.name}: early stopping did not fire")
    return lines


def evidence_table(run: Any, *, image: str) -> ReportTable:
    rows = tuple((str(e.step), f"{e.lid_train:.1f}", f"{e.lid_heldout:.1f}", str(e.n_labelled),
                  str(int(e.memorized.sum())), f"{e.copy_rate:.1%}", f"{e.control_rate:.1%}", f"{e.excess:+.1%}",
                  "—" if math.isnan(e.auroc) else f"{e.auroc:.2f}", f"{e.quality:.3f}",
                  "restored" if run.stopped is not None and e.step == run.stopped.step else "")
                 for e in run.evidence)
    d = detection(run)
    text = (f"Per check of **{run.name}**: median LID_θ of training and held-out probes at the primary σ, digits "
            f"labelled OD/DD by the guard, digits memorized by the truth (memorized_points against the unseen "
            f"digits), copy rate of the check's samples with the control (unseen digits), excess, AUROC of the "
            f"verdicts' score against the truth, quality (feature distance to unseen digits, lower is better). "
            f"Labelled at or before their first copy: {d['lead']:.0%} of {d['copied']} memorized digits; "
            f"never-memorized digits labelled: {d['false']:.0%}. The picture: LID_θ of training (red) and held-out "
            f"(grey) probes over the checks, the count of labelled and memorized digits, and where early stopping "
            f"fired and what it restores.")
    return ReportTable(title=f"Caught in the act: {run.name}", text=text,
                       header=("step", "LID train", "LID held-out", "labelled", "memorized", "copies", "control",
                               "excess", "AUROC", "quality", ""), rows=rows, image=image)


def plot_timeline(run: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [e.step for e in run.evidence]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.8), sharex=True)
    top.plot(steps, [e.lid_train for e in run.evidence], "o-", color="tab:red", label="training probes (median)")
    top.plot(steps, [e.lid_heldout for e in run.evidence], "o-", color="grey", label="held-out probes (median)")
    top.set_ylabel("LID_θ at the primary σ")
    top.legend(loc="best")
    bottom.plot(steps, [e.n_labelled for e in run.evidence], "s-", color="tab:red", label="labelled OD/DD by the guard")
    bottom.plot(steps, [int(e.memorized.sum()) for e in run.evidence], "^-", color="black",
                label="memorized (truth: samples copy them)")
    bottom.set_ylabel("training digits")
    bottom.set_xlabel("training step")
    for ax in (top, bottom):
        if run.stopped is not None:
            ax.axvline(run.guard.stopper.stopped_step, color="tab:blue", linestyle="--")
            ax.axvline(run.stopped.step, color="tab:blue", linestyle=":")
    if run.stopped is not None:
        bottom.plot([], [], "--", color="tab:blue", label="early stopping fired")
        bottom.plot([], [], ":", color="tab:blue", label="the check it restores")
    bottom.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=8)  # below: hides no point
    fig.suptitle(f"{run.name}: LID_θ, labels and copies over training")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_caught(run: Any, train_x: Tensor, path: Path, *, rows: int = 8, copies: int = 6) -> None:
    """Left: labelled training digits (the check that first labelled them); right: last-check samples copying them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [e.step for e in run.evidence]
    labelled = first_step([e.label != NONE for e in run.evidence], steps)
    kinds = torch.stack([e.label for e in run.evidence]).max(0).values
    last = run.evidence[-1]
    order = [int(i) for i in torch.argsort(labelled.masked_fill(labelled < 0, 10 ** 9)) if labelled[i] >= 0][:rows]
    fig, axes = plt.subplots(max(1, len(order)), copies + 1, figsize=(1.1 * (copies + 1), 1.25 * max(1, len(order))),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if not order:
        axes[0, 0].text(0, 0.5, "no training digit was labelled", fontsize=8)
    for r, i in enumerate(order):
        axes[r, 0].imshow(train_x[i, 0].numpy(), cmap="gray", vmin=-1, vmax=1)
        axes[r, 0].set_title(f"#{i} {LABEL_NAMES[int(kinds[i])]} @{int(labelled[i])}", fontsize=7)
        found = torch.nonzero(last.close & (last.nearest == i)).flatten()[:copies]
        for c, j in enumerate(found.tolist(), start=1):
            axes[r, c].imshow(last.samples[j, 0].numpy(), cmap="gray", vmin=-1, vmax=1)
            axes[r, c].set_title("copy", fontsize=7, color="tab:red")
    fig.suptitle(f"{run.name}: labelled digits and the samples (step {last.step}) that copy them", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def caught_table(run: Any, *, image: str) -> ReportTable:
    """Per labelled or memorized training digit: when the guard labelled it and when the truth first said copied."""
    steps = [e.step for e in run.evidence]
    labelled = first_step([e.label != NONE for e in run.evidence], steps)
    copied = first_step([e.memorized for e in run.evidence], steps)
    kinds = torch.stack([e.label for e in run.evidence]).max(0).values
    last = run.evidence[-1]
    rows = []
    for i in range(len(labelled)):
        if labelled[i] < 0 and copied[i] < 0:
            continue
        lead = ("ahead" if labelled[i] >= 0 and (copied[i] < 0 or labelled[i] <= copied[i]) else
                "late" if labelled[i] >= 0 else "missed")
        rows.append((str(i), LABEL_NAMES[int(kinds[i])] if labelled[i] >= 0 else "none",
                     str(int(labelled[i])) if labelled[i] >= 0 else "never",
                     str(int(copied[i])) if copied[i] >= 0 else "never",
                     str(int((last.close & (last.nearest == i)).sum())), lead))
    text = (f"Every training digit of **{run.name}** that the guard labelled or the truth found copied: the first "
            f"check that labelled it, the first check at which memorized_points said its samples copy it, and how "
            f"many of the last check's {len(last.samples)} samples lie within {PICTURE_COPY}× its spacing. "
            f"'ahead': labelled at or before the copies; 'late': labelled after them; 'missed': copied, never "
            f"labelled. The picture: the first labelled digits (left, with the check that labelled them) and the "
            f"last check's samples that copy them.")
    return ReportTable(title=f"Labelled and copied digits: {run.name}", text=text,
                       header=("train index", "label", "labelled at", "copied at", "copies at the end", ""),
                       rows=tuple(rows), image=image)
