"""Images recipe: a diffusers UNet2DModel (DDPM) on any folder of images (read with PIL), for your own data.

    python recipes/images.py data.folder=path/to/images                     # 32 px RGB
    python recipes/images.py data.folder=path/to/images data.size=64 model.channels=[32,64,64,128]
    python recipes/images.py config=recipes/configs/images.yaml data.folder=path/to/images data.channels=1

Reads top to bottom: config, data (every png/jpg/jpeg/bmp/webp/gif under data.folder, centre-cropped and
resized to data.size in [-1, 1]; a seeded data.heldout_fraction of them held out), the UNet, training with
the callbacks, then the report in ``out_dir`` (the most memorized training images, samples over their
nearest training images; ``files.csv`` maps the report's training indices back to files). Quality is the
sliced Wasserstein distance and MMD in pixel space against the held-out images.

Cost: training dominates (a check of 40 probes takes seconds). The default UNet [32, 64, 64] at 32 px,
batch 32, takes about 0.7 s a step on one CPU thread, so the default 3000 steps are about 35 minutes per
variant (two when a remedy is on and remedies.compare=true) on a CPU; use a GPU, or model.channels=[16,32,32] and fewer
train.steps for a first look.

Sizes of 32–64 px suit this recipe; the size must be divisible by 2^(len(model.channels) − 1). A bad
configuration, a missing or empty folder and an unreadable image all fail before training, with exit
code 2 and nothing written.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch.utils.data import DataLoader

from common import (Diffusion, MonitorConfig, RemedyConfig, TrainConfig, exit_after, start_run, train_variants,
                    validate, variant_result, write_run_report)
from mmh_train.config import ConfigError, load_config
from mmh_train.data import ImageFolderDataset, find_image_files, load_image_folder
from mmh_train.data.folder import ImageFolderData
from mmh_train.io import write_text_atomic
from mmh_train.models import small_unet


@dataclass
class DataConfig:
    folder: str = ""                 # required: a folder of images (searched recursively)
    size: int = 32                   # images are centre-cropped and resized to size×size
    channels: int = 3                # 3 (RGB) or 1 (grayscale)
    heldout_fraction: float = 0.2    # held out by a seeded permutation (train.seed); ≥ 1 image
    max_images: Optional[int] = None  # the first max_images files in sorted order; all when None


@dataclass
class ModelConfig:
    channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    attention: bool = False


@dataclass
class ImagesConfig:
    out_dir: str = "runs/images"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=3000, batch_size=32, lr=1e-3, n_samples=256))
    # The library's defaults: σ from the spacing, verdicts against the model's own LID on held-out neighbours
    # (a UNet trained briefly reads unfaithful absolute FLIPD values at 3072 dimensions; the null's offset cancels).
    monitor: MonitorConfig = field(default_factory=lambda: MonitorConfig(every_n_steps=500, n_probes=2))
    remedies: RemedyConfig = field(default_factory=RemedyConfig)  # monitor only; turn remedies on by key


def check_config(cfg: ImagesConfig) -> tuple[list[str], int]:
    """Checks what the schema cannot, and the folder (listed, not read); returns its files and n_heldout."""
    validate(cfg.train, cfg.monitor, cfg.remedies)
    if not cfg.data.folder:
        raise ConfigError("data.folder is required: pass data.folder=path/to/images")
    levels = len(cfg.model.channels)
    if levels < 1 or any(c < 8 or c % 8 for c in cfg.model.channels):
        raise ConfigError(f"model.channels={cfg.model.channels} must list one or more widths, each a multiple of 8 "
                          f"(the UNet normalises in 8 groups), e.g. [32,64,64].")
    if cfg.data.size < 8 or cfg.data.size % 2 ** (levels - 1):
        raise ConfigError(f"data.size={cfg.data.size} must be ≥ 8 and divisible by {2 ** (levels - 1)} for a UNet "
                          f"with {levels} levels (len(model.channels)); e.g. 32 or 64.")
    if cfg.data.channels not in (1, 3):
        raise ConfigError(f"data.channels={cfg.data.channels}; choose 3 (RGB) or 1 (grayscale).")
    if not 0 < cfg.data.heldout_fraction < 1:
        raise ConfigError(f"data.heldout_fraction={cfg.data.heldout_fraction} must lie strictly between 0 and 1 "
                          f"(e.g. 0.2): the held-out images measure quality and held-out LID.")
    if cfg.data.max_images is not None and cfg.data.max_images < 3:
        raise ConfigError(f"data.max_images={cfg.data.max_images} must be ≥ 3 (2 training, 1 held-out) or null.")
    if cfg.monitor.reference == "truth":
        raise ConfigError("monitor.reference='truth' needs data with known LID (the toy recipe); use 'data' or "
                          "'heldout'.")
    try:
        files = find_image_files(cfg.data.folder)[:cfg.data.max_images]
    except (OSError, ValueError) as error:
        raise ConfigError(f"data.folder={cfg.data.folder}: {error}") from None
    n = len(files)
    n_heldout = max(1, round(cfg.data.heldout_fraction * n))
    n_train = n - n_heldout
    if n_train < 2:
        raise ConfigError(f"data.folder={cfg.data.folder} has {n} image(s); with data.heldout_fraction="
                          f"{cfg.data.heldout_fraction} that leaves {n_train} for training. Add images (at least 3: "
                          f"2 training, 1 held-out) or lower data.heldout_fraction.")
    if cfg.monitor.reference == "data" and cfg.monitor.reference_k >= n_train:
        raise ConfigError(f"monitor.reference_k={cfg.monitor.reference_k} neighbours need more than {n_train} training "
                          f"images; pass monitor.reference_k={max(1, min(20, n_train - 1))} (or smaller), add images, "
                          f"or use monitor.reference=heldout.")
    for key, value, available in (("monitor.n_train_probes", cfg.monitor.n_train_probes, n_train),
                                  ("monitor.n_heldout_probes", cfg.monitor.n_heldout_probes, n_heldout)):
        if value is not None and not 1 <= value <= available:
            raise ConfigError(f"{key}={value} must lie in [1, {available}] ({available} such images); "
                              f"pass a smaller number or null for up to 128 training / 64 held-out probes.")
    return files, n_heldout


def split_images(everything: ImageFolderData, n_heldout: int, seed: int) -> tuple[ImageFolderData, ImageFolderData]:
    """A seeded permutation: n_heldout images held out, the rest for training; each part in file order."""
    order = torch.randperm(len(everything), generator=torch.Generator().manual_seed(seed))
    held, train = order[:n_heldout].sort().values, order[n_heldout:].sort().values
    return everything.select(train), everything.select(held)


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = load_config(ImagesConfig, argv)
        files, n_heldout = check_config(cfg)
        # The images are read before anything is written, so an unreadable file also fails cleanly.
        everything = load_image_folder(cfg.data.folder, size=cfg.data.size, channels=cfg.data.channels,
                                       max_images=len(files))
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as error:  # unreadable image; or the folder changed since it was listed
        print(f"data error: data.folder={cfg.data.folder}: {error}", file=sys.stderr)
        return 2
    train, heldout = split_images(everything, n_heldout, cfg.train.seed)

    run_dir = start_run(cfg)
    write_text_atomic(run_dir / "files.csv", files_csv(train, heldout))
    print(f"{cfg.data.folder}: {len(train)} training and {len(heldout)} held-out images, "
          f"{cfg.data.channels}×{cfg.data.size}×{cfg.data.size}")

    loader = DataLoader(ImageFolderDataset(train), batch_size=cfg.train.batch_size, shuffle=True)

    def make_module() -> Diffusion:
        net = small_unet(cfg.data.size, cfg.data.channels, channels=tuple(cfg.model.channels),
                         attention=cfg.model.attention)
        return Diffusion(net, objective=cfg.train.objective, lr=cfg.train.lr, max_timestep=cfg.train.max_timestep)

    runs = train_variants(make_module, loader, monitor=cfg.monitor, remedies=cfg.remedies, train=cfg.train,
                          train_x=train.images, heldout_x=heldout.images, run_dir=run_dir)
    if not runs[-1].trainer.is_global_zero:
        return 0

    variants = [variant_result(run.name, run.module, run.callbacks, cfg.train, train.images, heldout.images,
                               run.seconds) for run in runs]
    print(f"training index → file: {run_dir / 'files.csv'}")
    return write_run_report(run_dir, cfg, recipe="images", kind="images", train_x=train.images,
                            heldout_x=heldout.images, variants=variants)


def files_csv(train: ImageFolderData, heldout: ImageFolderData) -> str:
    """``split,index,file``: the report's training indices (positions in the training set) and held-out ones."""
    lines = ["split,index,file"]
    for split, part in (("train", train), ("heldout", heldout)):
        lines += [f"{split},{i},{_csv_field(file)}" for i, file in enumerate(part.files)]
    return "\n".join(lines) + "\n"


def _csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n\r') else text


if __name__ == "__main__":
    exit_after(main)
