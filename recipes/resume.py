"""What makes a resumed recipe run the uninterrupted one: RNG states and training time in the checkpoint,
and one log directory that keeps the metrics logged before the interruption.

Lightning's checkpoint holds the weights, the optimizer, the loops and the callbacks' states, but not the
random number generators: a run resumed from step 200 drew different noise from step 201 on (measured on
the toy recipe: weights equal at 200, different from 250, final quality 0.94 vs 0.85). :class:`ResumeState`
saves the global RNGs of torch (CPU and CUDA), NumPy and Python with each checkpoint and puts them back when
Lightning restores the callbacks: after ``seed_everything``, before the first batch is drawn.
"""

from __future__ import annotations

import random
import re
import sys
import time
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from mmh_train.config import ConfigError

__all__ = ["ResumeState", "AppendingCSVLogger", "resumed_logger", "latest_version", "check_checkpoint",
           "resolve_resume"]


class ResumeState(pl.Callback):
    """Global RNG states and training seconds, saved with every checkpoint and restored on resume.

    ``seconds`` is the training time of this run including every earlier part of it.
    """

    def __init__(self) -> None:
        self._seconds_before = 0.0
        self._start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self._seconds_before + time.perf_counter() - self._start

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def state_dict(self) -> dict[str, Any]:
        # tensors and plain Python values only: Lightning loads checkpoints with weights_only=True
        name, keys, pos, has_gauss, cached = np.random.get_state()
        return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "numpy": (str(name), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
                "python": random.getstate(), "seconds": self.seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores callbacks after seed_everything and before the fit loop builds its first data
        # iterator (whose shuffle draws from the global RNG): continue the random streams right here
        torch.set_rng_state(state_dict["torch"])
        if state_dict.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
        name, keys, pos, has_gauss, cached = state_dict["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        random.setstate(state_dict["python"])
        self._seconds_before = float(state_dict.get("seconds", 0.0))


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued, not deleted."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                header = file.readline().strip()
            self.metrics_keys = sorted(header.split(",")) if header else []


class AppendingCSVLogger(CSVLogger):
    """A CSV logger that, given the ``version`` of an earlier part of the run, appends to its metrics."""

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def latest_version(run_dir: Path, resume: str | None) -> int | None:
    """On resume, the latest ``logs/version_N`` of the variant (to continue it); otherwise None (a new one)."""
    logs = Path(run_dir) / "logs"
    if resume is None or not logs.is_dir():
        return None
    versions = [int(p.name.removeprefix("version_")) for p in logs.glob("version_*")
                if p.name.removeprefix("version_").isdigit()]
    return max(versions) if versions else None


def resumed_logger(run_dir: Path, resume: str | None) -> CSVLogger:
    """The CSV logger of a variant: a new version for a fresh run, the latest existing one on resume."""
    version = latest_version(run_dir, resume)
    if version is not None:
        return AppendingCSVLogger(run_dir, name="logs", version=version)
    return CSVLogger(run_dir, name="logs")


def check_checkpoint(path: str) -> None:
    """A Lightning checkpoint of a run (weights, loops, callbacks), read once before any work."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a truncated or foreign file: name it, not the unpickler's internals
        raise ConfigError(f"train.resume={path} cannot be read as a checkpoint ({type(error).__name__}: "
                          f"{str(error)[:120]}); it may be truncated (a run killed while saving). Pass an earlier "
                          f"checkpoint of the run, e.g. <run>/<variant>/checkpoints/step=N.ckpt.") from None
    missing = [key for key in ("state_dict", "loops", "callbacks") if not isinstance(state, dict) or key not in state]
    if missing:
        raise ConfigError(f"train.resume={path} is not a Lightning checkpoint of a recipe run (missing "
                          f"{', '.join(missing)}); pass a .ckpt file from <run>/<variant>/checkpoints/.")


def resolve_resume(resume: Optional[str], out_dir: str) -> Optional[str]:
    """``train.resume`` as a path: ``"latest"`` is the newest readable ``<out_dir>/<variant>/checkpoints/*step=N.ckpt``
    (None, a new run, when there is none yet); unreadable ones (a run killed while one was moved into place) are
    skipped and named. Any other value is returned as it is."""
    if resume != "latest":
        return resume
    found = [(int(m.group(1)), path) for path in Path(out_dir).glob("*/checkpoints/*.ckpt")
             if (m := re.search(r"step=(\d+)", path.name))]
    skipped = []
    for _, path in sorted(found, reverse=True):
        try:
            check_checkpoint(str(path))
        except ConfigError:
            skipped.append(path.name)
            continue
        if skipped:
            print(f"train.resume=latest: skipping unreadable checkpoint(s) {', '.join(skipped)} (a run killed while "
                  f"saving); resuming from {path}.", file=sys.stderr)
        return str(path)
    print(f"train.resume=latest: no complete checkpoint in {out_dir} yet"
          + (f" ({', '.join(skipped)} unreadable)" if skipped else "") + "; starting a new run.", file=sys.stderr)
    return None
