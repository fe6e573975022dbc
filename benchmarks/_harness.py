"""What the evidence benchmarks share (not part of the library): a plain training loop for vector diffusion
models, sampling, copy ground truth, ranking metrics and the JSON/table output.

The loop is the diffusers-style one a user writes (DDPM ε-prediction with ``DDPMScheduler``), with the
four calls of :class:`mmh_train.MemorizationGuard` where a guard is given. Every random draw comes from a
generator owned by the run, so a benchmark never touches the global RNGs and one seed gives one run.
"""

from __future__ import annotations

import shlex
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from diffusers import DDPMScheduler
from torch import Tensor

import mmh_train
from mmh_train.models import NullLabelDefault, TimeMLP
from mmh_train.sampling import sample

from _timing import code_version, machine_info, print_run_header, write_output

__all__ = ["TimestepLossTracker", "LowLossSkipping", "Trained", "train_diffusion", "generate", "memorized_truth",
           "per_sample_loss", "auroc", "tpr_at_fpr", "spearman", "precision_recall", "start_output",
           "write_output", "print_table", "REPO"]

REPO = Path(__file__).resolve().parents[1]
N_BINS = 20  # timestep bins of the per-timestep running loss (IET-AGC style), 50 DDPM steps each


class TimestepLossTracker:
    """Running mean of the per-sample denoising loss in each of ``bins`` timestep bins (an EMA).

    ``relative(loss, t)`` is a sample's loss divided by its bin's running mean: the statistic behind
    IET-AGC's anti-gradient control (Liu et al. 2024), where a sample far below its timestep's typical
    loss is taken to be memorized.
    """

    def __init__(self, num_timesteps: int = 1000, bins: int = N_BINS, decay: float = 0.99) -> None:
        self.num_timesteps, self.bins, self.decay = num_timesteps, bins, decay
        self.mean = torch.full((bins,), float("nan"), dtype=torch.float64)

    def bin(self, t: Tensor) -> Tensor:
        return (t.long() * self.bins // self.num_timesteps).clamp_(0, self.bins - 1)

    def update(self, loss: Tensor, t: Tensor) -> None:
        """loss, t: ``[B]``; folds the batch's mean loss per bin into the running means."""
        b = self.bin(t).cpu()
        loss = loss.detach().double().cpu()
        for k in b.unique().tolist():
            value = loss[b == k].mean()
            old = self.mean[k]
            self.mean[k] = value if torch.isnan(old) else self.decay * old + (1 - self.decay) * value

    def relative(self, loss: Tensor, t: Tensor) -> Tensor:
        """``[B]`` loss ÷ running mean of its timestep bin (1 where a bin has no mean yet)."""
        ref = self.mean.to(loss.device)[self.bin(t).to(loss.device)]
        ref = torch.where(torch.isnan(ref), loss.detach().double(), ref)
        return loss.detach().double() / ref.clamp_min(1e-12)


@dataclass
class LowLossSkipping:
    """The IET-AGC-style remedy baseline: samples whose loss is below ``threshold`` × their timestep bin's
    running mean get no gradient (their weight is set to 0), after ``warmup`` steps."""

    threshold: float = 0.5
    warmup: int = 500
    skipped: int = 0
    seen: int = 0

    def mask(self, relative: Tensor, step: int) -> Tensor:
        keep = torch.ones_like(relative, dtype=torch.bool) if step <= self.warmup else relative >= self.threshold
        self.skipped += int((~keep).sum())
        self.seen += keep.numel()
        return keep


@dataclass
class Trained:
    """A trained model and what its training recorded."""

    net: torch.nn.Module
    dim: int
    scheduler: DDPMScheduler
    num_classes: Optional[int]
    steps_done: int
    seconds: float
    tracker: TimestepLossTracker
    checks: list = field(default_factory=list)  # CheckResults of the guard's monitor, in order
    notes: dict = field(default_factory=dict)

    def denoiser(self, class_labels: Optional[Tensor] = None) -> Any:
        den = mmh_train.diffusers_denoiser(self.net, self.scheduler)
        return den.bind(class_labels=class_labels) if class_labels is not None else den


def train_diffusion(x: Tensor, *, steps: int, seed: int = 0, batch_size: int = 128, lr: float = 2e-3,
                    width: int = 256, depth: int = 3, labels: Optional[Tensor] = None,
                    num_classes: Optional[int] = None, label_dropout: float = 0.1,
                    guard: Optional[mmh_train.MemorizationGuard] = None,
                    skipping: Optional[LowLossSkipping] = None,
                    on_check: Optional[Callable[[int, Any], None]] = None, log_every: int = 0,
                    lr_schedule: str = "constant") -> Trained:
    """Trains a :class:`TimeMLP` ε-predictor on ``x`` (``[N, D]``) with DDPM noise, plain torch loop.

    Args:
        labels, num_classes: class-conditional training with label dropout (null label = ``num_classes``).
        guard: mmh_train's plain-loop guard (monitor, reweighting, penalty, early stopping).
        skipping: the IET-AGC low-loss skipping baseline.
        on_check: called as ``on_check(step, result)`` after every monitor check.
        lr_schedule: ``"constant"`` or ``"cosine"`` (decayed to 0 over ``steps``; what makes the small-σ end
            of the model accurate enough for FLIPD's accuracy benchmark).

    The global RNGs are left as they were: weights, batches, noise and timesteps come from generators
    seeded with ``seed``.
    """
    if lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule={lr_schedule!r}; choose 'constant' or 'cosine'.")
    n, dim = x.shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = TimeMLP(dim, width=width, depth=depth, num_classes=num_classes + 1 if num_classes else None)  # + null
    if num_classes:
        net = NullLabelDefault(net, num_classes)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps) if lr_schedule == "cosine" else None
    tracker = TimestepLossTracker()
    g = torch.Generator().manual_seed(seed + 7919)
    trained = Trained(net, dim, scheduler, num_classes, 0, 0.0, tracker)
    start = time.perf_counter()
    net.train()
    for step in range(1, steps + 1):
        if guard is not None and guard.should_stop:
            break
        index = torch.randint(0, n, (batch_size,), generator=g)
        x0 = x[index]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (batch_size,), generator=g)
        kwargs = {}
        if num_classes:
            drop = torch.rand(batch_size, generator=g) < label_dropout
            kwargs["class_labels"] = torch.where(drop, torch.full_like(labels[index], num_classes), labels[index])
        eps = net(scheduler.add_noise(x0, noise, t), t, **kwargs)
        loss_i = (eps - noise).pow(2).mean(1)
        relative = tracker.relative(loss_i, t)
        tracker.update(loss_i, t)
        if skipping is not None:
            keep = skipping.mask(relative, step).to(loss_i.dtype)
            loss = (loss_i * keep).sum() / keep.sum().clamp_min(1.0)
        elif guard is not None:
            loss = guard.weighted_loss(loss_i, index)
        else:
            loss = loss_i.mean()
        if guard is not None:
            loss = loss + guard.penalty(trained.denoiser(), x0, step, indices=index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if decay is not None:
            decay.step()
        trained.steps_done = step
        if guard is not None:
            result = guard.maybe_check(trained.denoiser(), step)
            if result is not None:
                trained.checks.append(result)
                if on_check is not None:
                    on_check(step, result)
        if log_every and step % log_every == 0:
            print(f"    step {step:6d}  loss {loss.item():.4f}", flush=True)
    trained.seconds = time.perf_counter() - start
    if guard is not None:
        if guard.stopper is not None and guard.should_stop:
            trained.notes["early_stopping"] = f"stopped at step {guard.stopper.stopped_step}"
        if guard.schedule is not None and guard.schedule.activated_at is not None:
            trained.notes["penalty"] = f"on from step {guard.schedule.activated_at}"
    if skipping is not None:
        trained.notes["skipped_fraction"] = skipping.skipped / max(skipping.seen, 1)
    net.eval()
    return trained


def generate(trained: Trained, n: int, *, seed: int, class_labels: Optional[Tensor] = None,
             steps: int = 32) -> Tensor:
    """``[n, D]`` samples of the probability-flow ODE (σ from 80 down to 0.02, inside the DDPM table);
    ``class_labels``: ``[n]``, one label per sample, for a class-conditional model."""
    return sample(trained.denoiser(), (n, trained.dim), steps=steps, sigma_min=0.02, sigma_max=80.0,
                  generator=torch.Generator().manual_seed(seed), class_labels=class_labels)


def memorized_truth(generated: Tensor, train: Tensor, control: Tensor) -> dict[str, Any]:
    """Ground truth of memorization per training point, with its control.

    ``memorized`` (``[N]`` bool) comes from :func:`mmh_train.memorized_points` (samples within a quarter
    of a point's spacing, against the control points there; exact duplicates share one verdict); the copy
    rate of the samples (nearest-neighbour ratio < 1/3) is given next to the control's and the excess.
    """
    copies = mmh_train.detect_copies(generated, train, control=control)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        truth = mmh_train.memorized_points(generated, train, control)
    return {"memorized": truth.memorized, "memorized_fraction": truth.fraction, "copy_rate": copies.copy_rate,
            "control_copy_rate": copies.control_rate, "excess_copy_rate": copies.excess_rate,
            "excess_interval": list(copies.excess_interval), "n_samples": truth.n_samples,
            "n_control": truth.n_control, "min_count": truth.min_count,
            "underpowered": any("cannot show memorization" in str(w.message) for w in caught)}


@torch.no_grad()
def per_sample_loss(trained: Trained, x: Tensor, *, timesteps: Sequence[int] = tuple(range(25, 1000, 50)),
                    draws: int = 4, seed: int = 0, labels: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """The loss baselines' scores for each point of ``x`` (``[N, D]``): its ε-prediction loss averaged over
    ``timesteps`` × ``draws`` fixed noises, and the same loss ÷ the running per-timestep mean recorded
    during training (IET-AGC style). Returns two ``[N]`` float64 tensors (lower = more memorized)."""
    g = torch.Generator().manual_seed(seed)
    total = torch.zeros(len(x), dtype=torch.float64)
    relative = torch.zeros(len(x), dtype=torch.float64)
    was_training = trained.net.training
    trained.net.eval()
    count = 0
    for t_value in timesteps:
        t = torch.full((len(x),), t_value, dtype=torch.long)
        for _ in range(draws):
            noise = torch.randn(x.shape, generator=g)
            kwargs = {"class_labels": labels} if labels is not None else {}
            eps = trained.net(trained.scheduler.add_noise(x, noise, t), t, **kwargs)
            loss = (eps - noise).pow(2).mean(1)
            total += loss.double()
            relative += trained.tracker.relative(loss, t)
            count += 1
    trained.net.train(was_training)
    return total / count, relative / count


# ---------------------------------------------------------------- metrics
def auroc(score: Tensor, positive: Tensor) -> float:
    """Area under the ROC curve of ``score`` (higher = positive) for ``positive`` (bool), ties counted
    half (the Mann-Whitney statistic). NaN when one class is empty."""
    score, positive = score.double(), positive.bool()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def tpr_at_fpr(score: Tensor, positive: Tensor, fpr: float = 0.01) -> float:
    """The largest true-positive rate among thresholds whose false-positive rate is ≤ ``fpr`` (with fewer than
    1/``fpr`` negatives that is the TPR at zero false positives)."""
    score, positive = score.double(), positive.bool()
    if positive.all() or not positive.any():
        return float("nan")
    negatives = torch.sort(score[~positive], descending=True).values
    allowed = int(fpr * len(negatives))  # negatives allowed above the threshold
    threshold = negatives[allowed] if allowed < len(negatives) else -float("inf")
    return float((score[positive] > threshold).double().mean())


def _average_ranks(v: Tensor) -> Tensor:
    order = torch.argsort(v)
    ranks = torch.empty_like(v)
    ranks[order] = torch.arange(1, len(v) + 1, dtype=v.dtype)
    ordered = v[order]
    for value in ordered[torch.cat([torch.tensor([False]), ordered[1:] == ordered[:-1]])].unique():
        tied = v == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation (ties averaged); NaN when either side is constant."""
    ra, rb = _average_ranks(a.double()), _average_ranks(b.double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = (ra.norm() * rb.norm()).item()
    return float((ra @ rb).item() / denominator) if denominator > 0 else float("nan")


def precision_recall(predicted: Tensor, truth: Tensor) -> tuple[float, float]:
    predicted, truth = predicted.bool(), truth.bool()
    tp = int((predicted & truth).sum())
    precision = tp / int(predicted.sum()) if predicted.any() else float("nan")
    recall = tp / int(truth.sum()) if truth.any() else float("nan")
    return precision, recall


# ---------------------------------------------------------------- output
def start_output(name: str, argv: Optional[Sequence[str]], seeds: Sequence[int], config: dict) -> dict:
    """The JSON document's header: command, date, machine, code version, seeds, config; printed too."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "python " + " ".join(shlex.quote(a) for a in [f"benchmarks/{name}.py", *argv])
    doc = {"benchmark": name, "command": command, "seeds": list(seeds), "machine": machine_info(),
           "code": code_version(REPO), "config": config, "quick": "--quick" in argv}
    print_run_header(command, doc["code"], doc["machine"], f"seeds: {list(seeds)}")
    return doc


def print_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> None:
    """Prints ``rows`` as a fixed-width table; ``columns`` are (key, header, format) e.g. ("mae", "MAE", ".2f")."""
    widths = [max(len(h), 8) for _, h, _ in columns]
    cells = []
    for row in rows:
        line = []
        for (key, _, fmt), w in zip(columns, widths):
            value = row.get(key)
            text = "—" if value is None or (isinstance(value, float) and value != value) else format(value, fmt)
            line.append(text)
        cells.append(line)
    widths = [max([w] + [len(c[i]) for c in cells]) for i, w in enumerate(widths)]
    header = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, ((_, h, _), w) in enumerate(zip(columns, widths)))
    print(header)
    print("-" * len(header))
    for line in cells:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))), flush=True)
