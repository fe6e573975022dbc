"""Caught in the act: a convolutional UNet that memorizes its training digits on 2 cores, and the guard catching it.

    python recipes/memorize.py                              # 24 digits at 16×16: copies from ~step 1800
    python recipes/memorize.py data.duplicates=4            # 4 images repeated and shifted ±1 px: DD
    python recipes/memorize.py data.n_train=48 train.steps=7200
    python recipes/memorize.py remedies.reweight=true remedies.penalty=true   # plus a remedied run

A diffusers ``UNet2DModel`` (16/32 channels) trained with DDPM ε-prediction by a plain loop, the loop a user
writes, on a few of scikit-learn's 8×8 digits upsampled (bilinear) to 16×16; every other digit is unseen. The
guard watches it with the library's defaults (σ from the data, the held-out null, early stopping on the OD
fraction restoring the best check). The run keeps training past the stop, so one run shows both the baseline
and what early stopping would have kept: monitoring never changes training (tested bit for bit), so the
weights at the restored check are the early-stopped model.

At every check the recipe also measures the truth, which a user's loop would not: it draws samples, counts
copies (nearest-neighbour ratio test) against the unseen digits as control, asks ``memorized_points`` which
training digits are copied, and measures sample quality (a feature distance to unseen digits). The report has
the per-check table, the LID timeline, and the labelled digits next to the samples that copy them.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch.utils.data import DataLoader

import mmh_train
from common import check_ranges, config_dict, exit_after, machine, start_run
from memorize_evidence import (CheckEvidence, caught_table, copier_quality, evidence_at, evidence_table, plot_caught,
                               plot_timeline, summary_lines)
from mmh_train.config import ConfigError, load_config
from mmh_train.data import DigitsDataset, load_digits
from mmh_train.data.digits import DigitsData
from mmh_train.models import small_unet
from mmh_train.quality import DigitsFeatures
from mmh_train.remedies import PenaltySchedule


@dataclass
class DataConfig:
    n_train: int = 24                # small for the model: it copies every digit by ~3000 steps
    size: int = 16                   # 8×8 digits upsampled (bilinear); 32 for a GPU
    duplicates: int = 0              # this many training digits get 3 more copies: exact, +1 px right, +1 px down
    n_heldout: int = 400             # unseen digits: the monitor's held-out probes come from them, and the control


@dataclass
class ModelConfig:
    channels: list[int] = field(default_factory=lambda: [16, 32])


@dataclass
class TrainConfig:
    steps: int = 3600
    batch_size: int = 24
    lr: float = 1e-3
    seed: int = 0
    threads: Optional[int] = None    # None: 2 (the recipe's choice) unless OMP_NUM_THREADS is set


@dataclass
class MonitorConfig:
    every_n_steps: int = 300
    patience: int = 2                # early stopping: checks with OD labels before it stops


@dataclass
class EvidenceConfig:
    n_samples: int = 600             # samples drawn at every check for the truth
    sample_steps: int = 18


@dataclass
class RemedyConfig:
    reweight: bool = False           # a second run with duplicate reweighting ...
    penalty: bool = False            # ... and/or the per-point LID penalty (weight 10) on the points labelled OD


@dataclass
class MemorizeConfig:
    out_dir: str = "runs/memorize"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)
    remedies: RemedyConfig = field(default_factory=RemedyConfig)


def validate(cfg: MemorizeConfig) -> None:
    """Every value a schema cannot check, before any work."""
    check_ranges({"data.n_train": (cfg.data.n_train, 4), "data.size": (cfg.data.size, 8),
                  "data.duplicates": (cfg.data.duplicates, 0), "data.n_heldout": (cfg.data.n_heldout, 16),
                  "train.steps": (cfg.train.steps, 1), "train.batch_size": (cfg.train.batch_size, 1),
                  "train.threads": (cfg.train.threads, 1), "monitor.every_n_steps": (cfg.monitor.every_n_steps, 1),
                  "monitor.patience": (cfg.monitor.patience, 0), "evidence.n_samples": (cfg.evidence.n_samples, 16),
                  "evidence.sample_steps": (cfg.evidence.sample_steps, 2)})
    if not (math.isfinite(cfg.train.lr) and cfg.train.lr > 0):
        raise ConfigError(f"train.lr must be a finite number > 0; got {cfg.train.lr}.")
    if cfg.data.duplicates > cfg.data.n_train:
        raise ConfigError(f"data.duplicates={cfg.data.duplicates} exceeds data.n_train={cfg.data.n_train}.")
    if cfg.data.n_train + cfg.data.n_heldout > 1797:
        raise ConfigError(f"data.n_train + data.n_heldout = {cfg.data.n_train + cfg.data.n_heldout} exceeds the 1797 "
                          f"digits; lower data.n_heldout.")
    levels = len(cfg.model.channels)
    if not cfg.model.channels or cfg.data.size % 2 ** (levels - 1):
        raise ConfigError(f"data.size={cfg.data.size} must be divisible by {2 ** (levels - 1)} for a UNet with "
                          f"{levels} levels (model.channels={cfg.model.channels}).")
    if cfg.monitor.every_n_steps * 2 > cfg.train.steps:
        raise ConfigError(f"monitor.every_n_steps={cfg.monitor.every_n_steps} leaves fewer than 2 checks in "
                          f"train.steps={cfg.train.steps}; lower it or train longer.")


def split(cfg: MemorizeConfig) -> tuple[DigitsData, torch.Tensor, torch.Tensor]:
    """The training digits (with the duplicates appended), the unseen digits, and which rows are duplicated."""
    digits = load_digits(size=cfg.data.size, resize="bilinear")
    order = torch.randperm(len(digits.labels), generator=torch.Generator().manual_seed(cfg.train.seed))
    train_rows, held_rows = order[:cfg.data.n_train], order[-cfg.data.n_heldout:]
    images, labels, index = digits.images[train_rows], digits.labels[train_rows], digits.index[train_rows]
    duplicated = torch.zeros(len(images), dtype=torch.bool)
    if cfg.data.duplicates:
        src = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.train.seed + 1))[:cfg.data.duplicates]
        copies = torch.cat([images[src], images[src].roll(1, -1), images[src].roll(1, -2)])
        duplicated[src] = True
        images = torch.cat([images, copies])
        labels, index = torch.cat([labels, labels[src].repeat(3)]), torch.cat([index, index[src].repeat(3)])
        duplicated = torch.cat([duplicated, torch.ones(len(copies), dtype=torch.bool)])
    return DigitsData(images=images, labels=labels, index=index), digits.images[held_rows], duplicated


@dataclass
class RunResult:
    name: str
    guard: mmh_train.MemorizationGuard
    evidence: list[CheckEvidence]
    stopped: Optional[CheckEvidence]   # the check early stopping restores (None: it never stopped)
    seconds: float
    copier_quality: float              # the training digits' own quality (what a perfect copier reaches)


def train_run(name: str, cfg: MemorizeConfig, train: DigitsData, heldout: torch.Tensor, features: DigitsFeatures,
              *, reweight: bool = False, penalty: bool = False) -> RunResult:
    """Trains one model under the guard for ``train.steps`` steps, measuring the truth at every check."""
    with torch.random.fork_rng():  # the initial weights from the seed, the global RNG left as it was
        torch.manual_seed(cfg.train.seed)
        net = small_unet(cfg.data.size, 1, channels=tuple(cfg.model.channels))
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.train.lr, weight_decay=0.0)
    denoiser = mmh_train.diffusers_denoiser(net, scheduler)
    dataset = DigitsDataset(train)
    monitor = mmh_train.MemorizationMonitor(dataset, heldout, every_n_steps=cfg.monitor.every_n_steps,
                                            seed=cfg.train.seed)
    guard = mmh_train.MemorizationGuard(
        monitor, stopper=mmh_train.MemorizationStopper("od_fraction", patience=cfg.monitor.patience),
        restore_best_weights=True, weights="survey" if reweight else None,
        penalty=PenaltySchedule(max_weight=10.0, per_point=True) if penalty else None, seed=cfg.train.seed)
    guard.restore_on_stop = False  # train on past the stop: this run is also the baseline
    generator = torch.Generator().manual_seed(cfg.train.seed)
    loader = DataLoader(dataset, batch_size=min(cfg.train.batch_size, len(dataset)), shuffle=True,
                        generator=generator, drop_last=True)
    evidence: list[CheckEvidence] = []
    stopped_at, step, start = None, 0, time.perf_counter()
    while step < cfg.train.steps:
        for x0, _, index in loader:
            step += 1
            noise = torch.randn(x0.shape, generator=generator)
            t = torch.randint(0, 1000, (len(x0),), generator=generator)
            pred = net(scheduler.add_noise(x0, noise, t), t).sample
            per_sample = (pred - noise).pow(2).flatten(1).mean(1)
            loss = guard.weighted_loss(per_sample, index) + guard.penalty(denoiser, x0, step, index)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            result = guard.maybe_check(denoiser, step)
            if result is not None:
                evidence.append(evidence_at(step, result, denoiser, train.images, heldout, features,
                                            n_samples=cfg.evidence.n_samples, steps=cfg.evidence.sample_steps,
                                            seed=cfg.train.seed, seconds=time.perf_counter() - start))
                print(evidence[-1].line(name), flush=True)
                if guard.should_stop and stopped_at is None:
                    stopped_at = step
                    print(f"{name}: early stopping fired at step {step} ({guard.stopper.reason}); the best check is "
                          f"step {guard.stopper.best_step}. Training on, to show what it prevented.", flush=True)
            if step >= cfg.train.steps:
                break
    seconds = time.perf_counter() - start
    stopped = None
    if stopped_at is not None:
        stopped = next(e for e in evidence if e.step == guard.stopper.best_step)
    return RunResult(name, guard, evidence, stopped, seconds,
                     copier_quality(train.images, heldout, features, cfg.train.seed))


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = load_config(MemorizeConfig, argv)
        validate(cfg)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    run_dir = start_run(cfg, default_threads=2)
    train, heldout, duplicated = split(cfg)
    print(f"memorize: {len(train)} training digits ({int(duplicated.sum())} in duplicate groups), "
          f"{len(heldout)} unseen, {cfg.train.steps} steps, a check every {cfg.monitor.every_n_steps}", flush=True)
    features = DigitsFeatures.trained(cfg.data.size, seed=0, resize="bilinear")
    runs = [train_run("baseline", cfg, train, heldout, features)]
    if cfg.remedies.reweight or cfg.remedies.penalty:
        runs.append(train_run("remedied", cfg, train, heldout, features, reweight=cfg.remedies.reweight,
                              penalty=cfg.remedies.penalty))
    return write(run_dir, cfg, runs, train, heldout, duplicated)


def write(run_dir: Path, cfg: MemorizeConfig, runs: list[RunResult], train: DigitsData, heldout: torch.Tensor,
          duplicated: torch.Tensor) -> int:
    """The report: the library's run report with the per-check truth table and the recipe's two pictures."""
    from mmh_train.report import RunRecord, summary_text, variant_from_monitor, write_report

    tables, variants = [], []
    for run in runs:
        plot_timeline(run, run_dir / f"{run.name}_timeline.png")
        plot_caught(run, train.images, run_dir / f"{run.name}_caught.png")
        tables += [evidence_table(run, image=f"{run.name}_timeline.png"),
                   caught_table(run, image=f"{run.name}_caught.png")]
        last = run.evidence[-1]
        variants.append(variant_from_monitor(run.name, run.guard.monitor, last.samples, train.images, heldout,
                                             seconds=run.seconds, notes={"early_stopping": _stop_note(run)}))
    record = RunRecord(recipe="memorize", kind="images", config=config_dict(cfg), train_x=train.images,
                       heldout_x=heldout, variants=variants, duplicated=duplicated if duplicated.any() else None,
                       machine=machine(), command=" ".join(["python", *sys.argv]), audit_csv=None,
                       tables=tuple(tables))
    report = write_report(run_dir, record)
    print(summary_text(record))
    for run in runs:
        for line in summary_lines(run):
            print(line)
    print(f"\nreport: {report}")
    return 0


def _stop_note(run: RunResult) -> str:
    if run.stopped is None:
        return "did not stop"
    return (f"{run.guard.stopper.reason} at step {run.guard.stopper.stopped_step}; it restores step {run.stopped.step} "
            f"(this run trained on, to show what stopping prevented)")


if __name__ == "__main__":
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    exit_after(main)
