"""Toy recipe (the main job): memorization on a mixture with known LID, found and fixed while training.

    python recipes/toy.py                                   # defaults: about 3 minutes on 2 CPU cores
    python recipes/toy.py config=recipes/configs/toy.yaml train.steps=2000 remedies.penalty=false
    accelerate launch --multi_gpu --num_processes 2 recipes/toy.py   # two processes (CPU: gloo)
    python recipes/toy.py remedies.compare=false train.resume=latest  # after a crash: the newest complete checkpoint

Reads top to bottom: config, data (Gaussian pieces of dimension 2, 4 and 8 in R^10, a small training set
with injected duplicates), a small MLP diffusion model (DDPM ε-prediction through diffusers'
DDPMScheduler, or rectified flow), training with the LIDMonitor and the remedies, then the report in
``out_dir``: report.md / report.html, plots, the per-sample audit table and a summary on screen.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader

from common import (Diffusion, MonitorConfig, RemedyConfig, TrainConfig, check_ranges, exit_after, start_run,
                    train_variants, validate, variant_result, write_run_report)
from mmh_train.config import ConfigError, load_config
from mmh_train.data import ToyDataset, affine_mixture, inject_duplicates_in_sample
from mmh_train.models import TimeMLP
from resume import resolve_resume


@dataclass
class DataConfig:
    n_train: int = 64
    n_heldout: int = 1000
    dims: list[int] = field(default_factory=lambda: [2, 4, 8])
    ambient_dim: int = 10
    dup_fraction: float = 0.05       # fraction of training points copied ...
    dup_copies: int = 4              # ... this many extra times (DD-Mem)


@dataclass
class ModelConfig:
    width: int = 256
    depth: int = 3


@dataclass
class ToyConfig:
    out_dir: str = "runs/toy"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=8000, batch_size=128))
    monitor: MonitorConfig = field(default_factory=lambda: MonitorConfig(every_n_steps=1000))
    remedies: RemedyConfig = field(default_factory=lambda: RemedyConfig(reweight=True, penalty=True,
                                                                        early_stopping=True))


def main(argv: list[str] | None = None) -> int:
    # ------------------------------------------------------------ config (fails before any work)
    try:
        cfg = load_config(ToyConfig, argv)
        cfg.train.resume = resolve_resume(cfg.train.resume, cfg.out_dir)  # "latest": the newest complete checkpoint
        validate(cfg.train, cfg.monitor, cfg.remedies)
        if not cfg.data.dims or min(cfg.data.dims) < 1:
            raise ConfigError(f"data.dims={cfg.data.dims} must list piece dimensions ≥ 1, e.g. data.dims=[2,4,8].")
        if max(cfg.data.dims) > cfg.data.ambient_dim or cfg.data.n_train < 2:
            raise ConfigError(f"data.dims {cfg.data.dims} must fit in data.ambient_dim={cfg.data.ambient_dim} "
                              f"and data.n_train must be ≥ 2.")
        check_ranges({"model.width": (cfg.model.width, 1), "model.depth": (cfg.model.depth, 1),
                      "data.n_heldout": (cfg.data.n_heldout, 2), "data.dup_copies": (cfg.data.dup_copies, 1),
                      "data.dup_fraction": (cfg.data.dup_fraction, 0.0), "data.ambient_dim": (cfg.data.ambient_dim, 1)})
        if cfg.data.dup_fraction > 1.0:
            raise ConfigError(f"data.dup_fraction={cfg.data.dup_fraction} is a fraction of the training points: "
                              f"choose it in [0, 1].")
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    run_dir = start_run(cfg, default_threads=1)  # a small MLP: one thread is fastest

    # ------------------------------------------------------------ data with known LID and duplicates
    g = torch.Generator().manual_seed(cfg.train.seed)
    clean = affine_mixture(cfg.data.n_train, dims=tuple(cfg.data.dims), ambient_dim=cfg.data.ambient_dim, generator=g)
    train, dup = inject_duplicates_in_sample(clean, fraction=cfg.data.dup_fraction, copies=cfg.data.dup_copies,
                                             generator=g)
    heldout = clean.spec.sample(cfg.data.n_heldout, generator=g).x
    loader = DataLoader(ToyDataset(train), batch_size=cfg.train.batch_size, shuffle=True)

    def make_module() -> Diffusion:
        time_scale = 1000.0
        net = TimeMLP(cfg.data.ambient_dim, width=cfg.model.width, depth=cfg.model.depth, time_scale=time_scale)
        return Diffusion(net, objective=cfg.train.objective, lr=cfg.train.lr, max_timestep=cfg.train.max_timestep)

    # ------------------------------------------------------------ training: baseline and remedied
    runs = train_variants(make_module, loader, monitor=cfg.monitor, remedies=cfg.remedies, train=cfg.train,
                          train_x=train.x, heldout_x=heldout, run_dir=run_dir, truth=train.lid.float())

    # ------------------------------------------------------------ report (rank 0)
    if not runs[-1].trainer.is_global_zero:
        return 0
    variants = [variant_result(r.name, r.module, r.callbacks, cfg.train, train.x, heldout, r.seconds) for r in runs]
    return write_run_report(run_dir, cfg, recipe="toy", kind="vectors", train_x=train.x, heldout_x=heldout,
                            variants=variants, duplicated=dup.duplicated)


if __name__ == "__main__":
    exit_after(main)
