"""What every recipe shares: config sections, the diffusion LightningModule, callbacks, trainer, results.

Recipes read top to bottom (config, data, model, training with the callbacks, report); this module keeps
them short. It is recipe code, not library API: copy and adapt it.
"""

from __future__ import annotations

import importlib.util
import math
import os
import platform
import sys
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from diffusers import DDPMScheduler
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn

import mmh_train
from mmh_train.callbacks import (DuplicateReweighting, LIDMonitor, LIDPenaltyController, MemorizationEarlyStopping,
                                 MemorizationMixin, guard_of)
from mmh_train.config import ConfigError
from mmh_train.models import NullLabelDefault
from mmh_train.report import copy_control, guard_notes, variant_from_monitor
from mmh_train.sampling import sample
from resume import ResumeState, check_checkpoint, latest_version, resumed_logger

OBJECTIVES = ("ddpm", "rectified_flow")


# ---------------------------------------------------------------- config sections
@dataclass
class TrainConfig:
    steps: int = 3000
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0
    objective: str = "ddpm"          # "ddpm" (ε-prediction, DDPMScheduler) or "rectified_flow"
    max_timestep: int = 1000         # DDPM: train on t < max_timestep (smaller fits small σ faster)
    checkpoint_every: int = 1000
    resume: Optional[str] = None     # a checkpoint path of this run, or "latest" (toy); needs remedies.compare=false
    logger: str = "csv"              # "csv", "tensorboard" or "none"
    progress_bar: bool = True        # a line every tenth of training (Lightning's bar would draw one per epoch)
    n_samples: int = 1000            # generated after training, for copy rate and quality
    sample_steps: int = 32
    threads: Optional[int] = None    # CPU threads for torch; None: the recipe's choice unless OMP_NUM_THREADS is set


#: monitor.reference choices: "auto" is the library's default (the held-out null when held-out data exist).
REFERENCES = ("auto", "heldout_null", "data", "heldout", "truth", "none")


@dataclass
class MonitorConfig:
    sigma: Optional[float] = None    # None: three levels where the noise moves a point 2.5/1.6/0.95 × the spacing
    every_n_steps: int = 250
    n_train_probes: Optional[int] = None
    n_heldout_probes: Optional[int] = None
    reference: str = "auto"          # "auto" (held-out null), "data", "heldout", "truth" (toy only) or "none"
    reference_k: int = 20            # neighbours of the model-free LID* ("data") or held-out neighbours
    fdr: float = 0.05                # held-out null: Benjamini–Hochberg level of the OD/DD verdicts
    od_margin: float = 1.0           # model-free rules ("data", "heldout", "truth") only, with relative and dd_threshold
    relative: bool = False
    dd_threshold: float = 0.5
    n_probes: Optional[int] = None   # FLIPD Hutchinson probes (None: exact up to 64 dims, 1 above)


@dataclass
class RemedyConfig:
    reweight: bool = False           # duplicate groups weigh one sample
    dd_factor: Optional[float] = None  # extra factor for groups the monitor labels DD
    penalty: bool = False            # LID penalty on the points labelled OD (per point), or on all once OD appears
    penalty_per_point: bool = True   # act only on the points labelled OD, each with its own target
    penalty_weight: float = 10.0     # calibrated on the toy benchmark's seed 100 (BENCHMARKS.md, remedies)
    penalty_target: Optional[float] = None
    early_stopping: bool = False     # stop on the OD fraction
    patience: int = 2
    compare: bool = True             # also train a baseline without remedies, for the report


def validate(train: TrainConfig, monitor: MonitorConfig, remedies: RemedyConfig) -> None:
    """Checks the values a schema cannot (choices, ranges) before any work."""
    if train.objective not in OBJECTIVES:
        raise ConfigError(f"train.objective={train.objective!r}; choose one of {OBJECTIVES}.")
    if train.logger not in ("csv", "tensorboard", "none"):
        raise ConfigError(f"train.logger={train.logger!r}; choose 'csv', 'tensorboard' or 'none'.")
    if train.logger == "tensorboard" and not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
        raise ConfigError("train.logger='tensorboard' needs the tensorboard package: pip install tensorboard "
                          "(or use train.logger=csv).")
    if monitor.reference not in REFERENCES:
        raise ConfigError(f"monitor.reference={monitor.reference!r}; choose one of {', '.join(map(repr, REFERENCES))}.")
    if not 0.0 < monitor.fdr < 1.0:
        raise ConfigError(f"monitor.fdr={monitor.fdr} must lie in (0, 1) (a false-discovery rate, e.g. 0.05).")
    check_ranges({"train.steps": (train.steps, 1), "train.batch_size": (train.batch_size, 1),
                  "train.n_samples": (train.n_samples, 1), "train.sample_steps": (train.sample_steps, 1),
                  "train.checkpoint_every": (train.checkpoint_every, 1), "train.max_timestep": (train.max_timestep, 1),
                  "monitor.every_n_steps": (monitor.every_n_steps, 1), "monitor.reference_k": (monitor.reference_k, 1),
                  "train.threads": (train.threads, 1), "monitor.n_probes": (monitor.n_probes, 1),
                  "monitor.n_train_probes": (monitor.n_train_probes, 1),
                  "monitor.n_heldout_probes": (monitor.n_heldout_probes, 1),
                  "monitor.od_margin": (monitor.od_margin, 0.0), "monitor.dd_threshold": (monitor.dd_threshold, 0.0),
                  "remedies.patience": (remedies.patience, 0), "remedies.penalty_weight": (remedies.penalty_weight, 0.0)})
    for name, value in (("train.lr", train.lr), ("monitor.sigma", monitor.sigma),
                        ("remedies.penalty_target", remedies.penalty_target)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{name} must be a finite number > 0; got {value}.")
    if train.max_timestep > 1000:
        raise ConfigError(f"train.max_timestep={train.max_timestep} must be ≤ 1000 (the DDPM schedule's length).")
    if remedies.dd_factor is not None and not 0.0 <= remedies.dd_factor <= 1.0:
        raise ConfigError(f"remedies.dd_factor={remedies.dd_factor} must lie in [0, 1] (a down-weighting) or be null.")
    if monitor.every_n_steps > train.steps:
        raise ConfigError(f"monitor.every_n_steps={monitor.every_n_steps} > train.steps={train.steps}: the monitor would "
                          f"never check. Lower monitor.every_n_steps or raise train.steps.")
    if train.resume is not None:
        if not Path(train.resume).is_file():
            raise ConfigError(f"train.resume={train.resume} does not exist; pass a .ckpt file of this run.")
        if remedies.compare and any_remedy(remedies):
            raise ConfigError("train.resume continues one model; set remedies.compare=false to resume.")
        check_checkpoint(train.resume)


def check_ranges(bounds: dict[str, tuple[Any, float]]) -> None:
    """``{"section.key": (value, lowest allowed)}``: each value (None allowed) must be ≥ its bound."""
    for name, (value, lowest) in bounds.items():
        if value is not None and not value >= lowest:
            raise ConfigError(f"{name} must be ≥ {lowest}; got {value}.")


def any_remedy(remedies: RemedyConfig) -> bool:
    return remedies.reweight or remedies.penalty or remedies.early_stopping


# ---------------------------------------------------------------- the model
class Diffusion(MemorizationMixin, pl.LightningModule):
    """A diffusion (DDPM ε-prediction) or rectified-flow model around any network ``net(y, t, class_labels)``.

    ``num_classes`` enables conditioning with label dropout; the null label is ``num_classes``.
    """

    def __init__(self, net: nn.Module, *, objective: str = "ddpm", lr: float = 2e-3, max_timestep: int = 1000,
                 num_classes: Optional[int] = None, label_dropout: float = 0.1) -> None:
        super().__init__()
        self.net = NullLabelDefault(net, num_classes) if num_classes else net
        self.objective, self.lr, self.max_timestep = objective, lr, max_timestep
        self.num_classes, self.label_dropout = num_classes, label_dropout
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=1000)

    def denoiser(self, class_labels: Optional[Tensor] = None):
        den = (mmh_train.diffusers_denoiser(self.net, self.noise_scheduler) if self.objective == "ddpm"
               else mmh_train.rectified_flow_denoiser(self.net, time_scale=1000.0))
        return den.bind(class_labels=class_labels) if class_labels is not None else den

    def per_sample_loss(self, x0: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        kwargs = {}
        if self.num_classes:
            drop = torch.rand(x0.shape[0], device=x0.device) < self.label_dropout
            kwargs["class_labels"] = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        noise = torch.randn_like(x0)
        if self.objective == "ddpm":
            t = torch.randint(0, self.max_timestep, (x0.shape[0],), device=x0.device)
            target, pred = noise, self.net(self.noise_scheduler.add_noise(x0, noise, t), t, **kwargs)
        else:  # rectified flow, data at t = 0: x_t = (1 − t) x0 + t ε, v = ε − x0
            t = torch.rand(x0.shape[0], device=x0.device)
            tb = t.reshape(-1, *([1] * (x0.dim() - 1)))
            target, pred = noise - x0, self.net((1 - tb) * x0 + tb * noise, t * 1000.0, **kwargs)
        pred = pred.sample if hasattr(pred, "sample") else pred
        return (pred - target).pow(2).flatten(1).mean(1)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x0, labels, index = batch
        per_sample = self.per_sample_loss(x0, labels if self.num_classes else None)
        loss = self.mmh_weighted_loss(per_sample, index) + self.mmh_lid_penalty(x0, index)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


# ---------------------------------------------------------------- callbacks and trainer
def make_callbacks(monitor: MonitorConfig, remedies: RemedyConfig, train_x: Tensor, heldout_x: Tensor, run_dir: Path,
                   *, truth: Optional[Tensor] = None, use_remedies: bool = True,
                   conditioning: Optional[dict] = None) -> list[pl.Callback]:
    """The monitor (each probe measured with its own condition when ``conditioning`` holds
    ``{"train": {...}, "heldout": {...}}`` keyword tensors per dataset index) and the remedies switched on."""
    if monitor.reference == "truth" and truth is None:
        raise ConfigError("monitor.reference='truth' needs data with known LID (the toy recipe); use 'auto'.")
    options = {} if monitor.n_probes is None else {"n_probes": monitor.n_probes}
    callbacks: list[pl.Callback] = [LIDMonitor(
        train_x, heldout_x, **monitor_options(monitor, truth), n_train_probes=monitor.n_train_probes,
        n_heldout_probes=monitor.n_heldout_probes, estimator_options=options, audit_path=run_dir / "mmh_audit.csv",
        conditioning=(conditioning or {}).get("train"), heldout_conditioning=(conditioning or {}).get("heldout"))]
    if use_remedies and remedies.reweight:
        callbacks.append(DuplicateReweighting(train_x, dd_factor=remedies.dd_factor))
    if use_remedies and remedies.penalty:
        callbacks.append(LIDPenaltyController(max_weight=remedies.penalty_weight, target=remedies.penalty_target,
                                              per_point=remedies.penalty_per_point))
    if use_remedies and remedies.early_stopping:
        callbacks.append(MemorizationEarlyStopping("mmh/od_fraction", patience=remedies.patience,
                                                   restore_best_weights=True))
    return callbacks


def monitor_options(monitor: MonitorConfig, truth: Optional[Tensor] = None) -> dict[str, Any]:
    """The monitor's σ, cadence, labelling rule and its options, from the recipe's config."""
    reference: Any = {"none": None, "truth": truth}.get(monitor.reference, monitor.reference)
    model_free = monitor.reference in ("data", "heldout", "truth")
    return {
        "sigma": "auto" if monitor.sigma is None else monitor.sigma, "every_n_steps": monitor.every_n_steps,
        "reference": reference,
        "reference_options": {"k": monitor.reference_k} if monitor.reference in ("data", "heldout") else {},
        "label_options": ({"od_margin": monitor.od_margin, "relative": monitor.relative,
                           "dd_threshold": monitor.dd_threshold} if model_free else {"fdr": monitor.fdr}),
    }


def exit_after(main: Any) -> None:
    """Runs a recipe's ``main()`` and exits with its code, shutting torch.distributed down first when a
    launcher started it: a process that exits with a live gloo group can abort (SIGABRT) while the
    interpreter finalizes, as gloo's worker threads release tensors after Python is gone."""
    code = main()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    sys.exit(code)


def world_size() -> int:
    """Processes started by ``accelerate launch`` / ``torchrun`` (1 under plain ``python``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


class ProgressLines(pl.Callback):
    """One line every tenth of training on rank 0, instead of Lightning's progress bar, which draws a new bar
    every epoch: with one batch per epoch (the toy's 76 points) that was megabytes of log per run."""

    def __init__(self, name: str, lines: int = 10) -> None:
        self.name, self.lines, self.start = name, lines, 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step, total = trainer.global_step, trainer.max_steps
        if trainer.is_global_zero and (step % max(1, total // self.lines) == 0 or step == total):
            loss = trainer.callback_metrics.get("train/loss")
            loss_text = f"  loss {float(loss):.4f}" if loss is not None else ""
            print(f"{self.name}: step {step}/{total}{loss_text}  {time.perf_counter() - self.start:.0f} s", flush=True)


def make_trainer(train: TrainConfig, callbacks: list[pl.Callback], run_dir: Path) -> pl.Trainer:
    # a resumed run continues its own log directory instead of starting version_1 beside it
    loggers = {"csv": lambda: resumed_logger(run_dir, train.resume),
               "tensorboard": lambda: TensorBoardLogger(run_dir, name="logs", version=latest_version(run_dir, train.resume)),
               "none": lambda: False}
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", every_n_train_steps=train.checkpoint_every,
                                 save_last=True, save_top_k=-1)
    devices = world_size()
    return pl.Trainer(max_steps=train.steps, accelerator="auto", devices=devices,
                      strategy="ddp" if devices > 1 else "auto", logger=loggers[train.logger](),
                      callbacks=[*callbacks, checkpoint, *([ProgressLines(run_dir.name)] if train.progress_bar else [])],
                      enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(run_dir), log_every_n_steps=50)


# ---------------------------------------------------------------- results for the report
def variant_result(name: str, module: Diffusion, callbacks: list[pl.Callback], train: TrainConfig,
                   train_x: Tensor, heldout_x: Tensor, seconds: float):
    """Samples the trained model and gathers what the report shows for it (Lightning runs): the module's guard
    holds the monitor and what each remedy did."""
    guard = guard_of(module)
    return result_from_monitor(name, module.denoiser(), guard.monitor, guard_notes(guard), train, train_x, heldout_x,
                               seconds, restored_step=guard.restored_step)


def result_from_monitor(name: str, denoiser: Any, monitor: mmh_train.MemorizationMonitor, notes: dict[str, str],
                        train: TrainConfig, train_x: Tensor, heldout_x: Tensor, seconds: float,
                        *, restored_step: Optional[int] = None, samples: Optional[Tensor] = None):
    """Samples ``denoiser`` and packs it for the report (:func:`mmh_train.report.variant_from_monitor`).
    ``samples`` (shaped like ``train_x``) replaces the sampling, e.g. latents decoded to images by a
    text-to-image run."""
    # σ from 80 down to 0.02: inside the DDPM table's range [0.01, 157], and any range suits a flow.
    generated = samples if samples is not None else sample(
        denoiser, (train.n_samples, *train_x.shape[1:]), steps=train.sample_steps, sigma_min=0.02, sigma_max=80.0,
        generator=torch.Generator().manual_seed(train.seed + 1))
    control = copy_control(train_x, heldout_x)
    if control is not None and len(control) < len(heldout_x):
        print(f"note: {len(heldout_x) - len(control)} held-out points equal a training point; the copy control "
              f"leaves them out.")
    return variant_from_monitor(name, monitor, generated, train_x, heldout_x, notes=notes, seconds=seconds,
                                restored_step=restored_step)


def fit_variant(name: str, make_module, loader, monitor: MonitorConfig, remedies: RemedyConfig, train: TrainConfig,
                train_x: Tensor, heldout_x: Tensor, run_dir: Path, *, truth: Optional[Tensor] = None,
                use_remedies: bool = True, conditioning: Optional[dict] = None):
    """Trains one variant in ``run_dir/name``; returns (module, callbacks, seconds, trainer).

    Resuming (``train.resume``) continues the uninterrupted run: the checkpoint carries the global RNG states
    and the seconds trained so far (:class:`resume.ResumeState`), and the logs continue in their directory.
    """
    pl.seed_everything(train.seed, workers=True, verbose=False)
    variant_dir = run_dir / name
    callbacks = make_callbacks(monitor, remedies, train_x, heldout_x, variant_dir, truth=truth,
                               use_remedies=use_remedies, conditioning=conditioning)
    module = make_module()
    state = ResumeState()
    trainer = make_trainer(train, [*callbacks, state], variant_dir)
    trainer.fit(module, loader, ckpt_path=train.resume)
    return module, callbacks, state.seconds, trainer


@dataclass
class Run:
    """One trained variant: its name, module, callbacks, training seconds and trainer."""

    name: str
    module: Diffusion
    callbacks: list
    seconds: float
    trainer: pl.Trainer


def train_variants(make_module, loader, *, monitor: MonitorConfig, remedies: RemedyConfig, train: TrainConfig,
                   train_x: Tensor, heldout_x: Tensor, run_dir: Path, truth: Optional[Tensor] = None,
                   conditioning: Optional[dict] = None) -> list[Run]:
    """A baseline without remedies (when remedies are on and ``compare``), then, when early stopping is one of
    several remedies, a variant with early stopping alone (what the others add beyond stopping shows
    against it), then the main variant."""
    common = dict(monitor=monitor, remedies=remedies, train=train, train_x=train_x, heldout_x=heldout_x,
                  run_dir=run_dir, truth=truth, conditioning=conditioning)
    runs = []
    if any_remedy(remedies) and remedies.compare:
        runs.append(Run("baseline", *fit_variant("baseline", make_module, loader, use_remedies=False, **common)))
        if remedies.early_stopping and (remedies.reweight or remedies.penalty):
            stop_only = dataclasses.replace(remedies, reweight=False, penalty=False)
            runs.append(Run("stopped_only", *fit_variant("stopped_only", make_module, loader,
                                                         **{**common, "remedies": stop_only})))
    name = "remedied" if any_remedy(remedies) else "model"
    runs.append(Run(name, *fit_variant(name, make_module, loader, **common)))
    return runs


def config_dict(config: object) -> dict:
    """A config dataclass as a plain dict (for the report)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(config))


def start_run(config: Any, *, default_threads: Optional[int] = None) -> Path:
    """Sets torch's CPU threads, creates ``config.out_dir`` and saves the resolved configuration in it.

    Threads: ``train.threads`` when given; else the recipe's ``default_threads`` unless the caller set
    ``OMP_NUM_THREADS`` (then torch's own choice stands). Small models run fastest on one thread: the toy
    main job took 25 s per 1000 steps on 1 thread against 61 s with torch's default on 2 shared cores.
    """
    from mmh_train.config import save_config

    threads = config.train.threads or (None if "OMP_NUM_THREADS" in os.environ else default_threads)
    if threads:
        torch.set_num_threads(threads)
    run_dir = Path(config.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")
    return run_dir


def write_run_report(run_dir: Path, config: Any, *, recipe: str, kind: str, train_x: Tensor, heldout_x: Tensor,
                     variants: list, duplicated: Optional[Tensor] = None, tables: tuple = (),
                     audit_csv: Optional[str] = None) -> int:
    """Writes the report of a finished run, prints its summary, and returns the exit code 0.

    ``tables``: the recipe's own :class:`mmh_train.report.ReportTable` objects; ``audit_csv``: the audit table's file
    name in the run folder (default ``<last variant>/mmh_audit.csv``)."""
    from mmh_train.report import RunRecord, summary_text, write_report

    record = RunRecord(recipe=recipe, kind=kind, config=config_dict(config), train_x=train_x, heldout_x=heldout_x,
                       variants=variants, duplicated=duplicated if duplicated is not None and duplicated.any() else None,
                       machine=machine(), command=command(),
                       audit_csv=audit_csv or f"{variants[-1].name}/mmh_audit.csv", tables=tuple(tables))
    report = write_report(run_dir, record)
    print(summary_text(record))
    print(f"\nreport: {report}")
    return 0


def machine() -> str:
    threads = torch.get_num_threads()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()} {os.cpu_count()} CPU cores ({threads} threads used), {gpu}, torch {torch.__version__}"


def command() -> str:
    return " ".join(["python", *sys.argv])
