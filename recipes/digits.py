"""Digits recipe: a diffusers UNet2DModel (DDPM) on a small subset of sklearn's 8×8 digits (no download).

    python recipes/digits.py                                  # unconditional
    python recipes/digits.py model.class_conditional=true     # labels as conditioning: LID(x|c) ≤ LID(x)
    python recipes/digits.py train.objective=rectified_flow   # the same through the flow parameterization

Reads top to bottom: config, data (a subset small enough to memorize, padded to 16×16 in [-1, 1]; the
other digits are held out), the UNet, training with the callbacks, then the report in ``out_dir``
(image grids of the most memorized training digits, samples and their nearest training digits).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader

import mmh_train
from common import (Diffusion, MonitorConfig, RemedyConfig, TrainConfig, exit_after, start_run, train_variants,
                    validate, variant_result, write_run_report)
from mmh_train.config import ConfigError, load_config
from mmh_train.data import DigitsDataset, load_digits
from mmh_train.data.digits import DigitsData
from mmh_train.models import small_unet
from mmh_train.quality import DigitsFeatures, sliced_wasserstein


@dataclass
class DataConfig:
    n_train: int = 64                # small enough to memorize
    size: int = 16                   # 8×8 digits padded to size×size
    dup_fraction: float = 0.0        # optional duplicates (DD-Mem)
    dup_copies: int = 4


@dataclass
class ModelConfig:
    channels: list[int] = field(default_factory=lambda: [16, 32])
    attention: bool = False
    class_conditional: bool = False


@dataclass
class DigitsConfig:
    out_dir: str = "runs/digits"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1500, batch_size=32, lr=2e-3, n_samples=256))
    # The library's defaults: σ from the spacing, verdicts against the model's own LID on held-out neighbours.
    monitor: MonitorConfig = field(default_factory=lambda: MonitorConfig(every_n_steps=500, n_probes=4))
    remedies: RemedyConfig = field(default_factory=RemedyConfig)  # monitor only; turn remedies on by key


def split_digits(cfg: DigitsConfig) -> tuple[DigitsData, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The training subset (with optional duplicates), every other digit as held-out images, which training
    images are duplicates, and the held-out images' labels."""
    everything = load_digits(size=cfg.data.size)
    order = torch.randperm(len(everything.labels), generator=torch.Generator().manual_seed(cfg.train.seed))
    train_idx, held_idx = order[:cfg.data.n_train], order[cfg.data.n_train:]
    images, labels = everything.images[train_idx], everything.labels[train_idx]
    duplicated = torch.zeros(len(images), dtype=torch.bool)
    if cfg.data.dup_fraction > 0:
        dup = mmh_train.data.inject_duplicates(images, fraction=cfg.data.dup_fraction, copies=cfg.data.dup_copies,
                                               generator=torch.Generator().manual_seed(cfg.train.seed + 1))
        images, labels, duplicated = dup.x, labels[dup.source], dup.duplicated
    train = DigitsData(images=images, labels=labels, index=torch.arange(len(images)))
    return train, everything.images[held_idx], duplicated, everything.labels[held_idx]


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = load_config(DigitsConfig, argv)
        validate(cfg.train, cfg.monitor, cfg.remedies)
        if cfg.data.size < 8 or cfg.data.size % 2 ** (len(cfg.model.channels) - 1):
            raise ConfigError(f"data.size={cfg.data.size} must be ≥ 8 and divisible by "
                              f"{2 ** (len(cfg.model.channels) - 1)} for a UNet with {len(cfg.model.channels)} levels.")
        if not 2 <= cfg.data.n_train < 1797:
            raise ConfigError(f"data.n_train={cfg.data.n_train} must lie in [2, 1796] (sklearn has 1797 digits).")
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    run_dir = start_run(cfg)

    train, heldout, duplicated, heldout_labels = split_digits(cfg)
    loader = DataLoader(DigitsDataset(train), batch_size=cfg.train.batch_size, shuffle=True)
    num_classes = 10 if cfg.model.class_conditional else None

    def make_module() -> Diffusion:
        net = small_unet(cfg.data.size, 1, channels=tuple(cfg.model.channels), attention=cfg.model.attention,
                         num_classes=(num_classes + 1) if num_classes else None)  # + the null label
        return Diffusion(net, objective=cfg.train.objective, lr=cfg.train.lr, max_timestep=cfg.train.max_timestep,
                         num_classes=num_classes)

    # a class-conditional model is watched as LID_θ(x | c): each probe with its own label
    conditioning = ({"train": {"class_labels": train.labels}, "heldout": {"class_labels": heldout_labels}}
                    if num_classes else None)
    runs = train_variants(make_module, loader, monitor=cfg.monitor, remedies=cfg.remedies, train=cfg.train,
                          train_x=train.images, heldout_x=heldout, run_dir=run_dir, conditioning=conditioning)
    if not runs[-1].trainer.is_global_zero:
        return 0

    features = DigitsFeatures.trained(cfg.data.size, seed=cfg.train.seed)
    variants = []
    for run in runs:
        result = variant_result(run.name, run.module, run.callbacks, cfg.train, train.images, heldout, run.seconds)
        with torch.no_grad():
            distance = sliced_wasserstein(features(result.samples), features(heldout))
        result.quality["feature_distance"] = distance
        if num_classes:
            result.metrics.update(conditional_lid(run.module, run.callbacks, train))
        variants.append(result)
    return write_run_report(run_dir, cfg, recipe="digits", kind="images", train_x=train.images, heldout_x=heldout,
                            variants=variants, duplicated=duplicated)


def conditional_lid(module: Diffusion, callbacks, train: DigitsData) -> dict[str, float]:
    """Mean LID_θ(x) and LID_θ(x | c) on the monitor's training probes at its primary σ: conditioning lowers LID."""
    probes, sigma = callbacks[0].monitor.train_index, callbacks[0].monitor.sigmas[0]
    x, c = train.images[probes], train.labels[probes]
    generator = torch.Generator().manual_seed(0)
    unconditional = mmh_train.flipd(module.denoiser(), x, sigma, n_probes=8, generator=generator)
    conditional = mmh_train.flipd(module.denoiser(class_labels=c), x, sigma, n_probes=8,
                                  generator=torch.Generator().manual_seed(0))
    return {"lid_unconditional": float(unconditional.mean()), "lid_conditional": float(conditional.mean())}


if __name__ == "__main__":
    exit_after(main)
