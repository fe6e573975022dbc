"""The digits recipe as a plain diffusers-style accelerate loop: mmh_train without Lightning.

    python recipes/digits_accelerate.py
    accelerate launch --multi_gpu --num_processes 2 recipes/digits_accelerate.py   # two CPU processes
    python recipes/digits_accelerate.py train.resume=runs/digits_accelerate/checkpoints/step_1000

Reads top to bottom: config, data, UNet2DModel + DDPMScheduler + optimizer through ``accelerator.prepare``,
then the loop with the four calls of ``mmh_train.MemorizationGuard`` (weighted loss, penalty term,
``maybe_check``, ``should_stop``), checkpoints with ``accelerator.save_state`` (the guard registered for
checkpointing), and the report.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import DDPMScheduler
from torch.utils.data import DataLoader

import mmh_train
from common import (MonitorConfig, RemedyConfig, TrainConfig, exit_after, monitor_options, result_from_monitor, start_run,
                    write_run_report)
from digits import DataConfig, ModelConfig, split_digits
from mmh_train.config import ConfigError, load_config
from mmh_train.data import DigitsDataset
from mmh_train.report import guard_notes
from mmh_train.models import small_unet
from mmh_train.remedies import AdaptiveDuplicateWeights, PenaltySchedule, find_duplicate_groups


@dataclass
class LoopConfig:
    out_dir: str = "runs/digits_accelerate"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1500, batch_size=32, lr=2e-3, n_samples=256))
    # The library's defaults: σ from the spacing, verdicts against the model's own LID on held-out neighbours.
    monitor: MonitorConfig = field(default_factory=lambda: MonitorConfig(every_n_steps=500, n_probes=4))
    remedies: RemedyConfig = field(default_factory=lambda: RemedyConfig(compare=False))  # monitor only by default


class Progress:
    """The loop's step, saved with the other state by accelerate."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]


def main(argv: list[str] | None = None) -> int:
    # ------------------------------------------------------------ config
    try:
        cfg = load_config(LoopConfig, argv)
        if cfg.model.class_conditional or cfg.remedies.compare:
            raise ConfigError("this loop trains one unconditional model: set model.class_conditional=false and "
                              "remedies.compare=false (recipes/digits.py does both).")
        if cfg.train.objective != "ddpm":
            raise ConfigError("this loop trains DDPM (train.objective=ddpm); recipes/flow.py trains flows.")
        if cfg.train.resume is not None and not Path(cfg.train.resume).is_dir():
            raise ConfigError(f"train.resume={cfg.train.resume} is not a folder written by accelerator.save_state.")
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    run_dir = Path(cfg.out_dir)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    set_seed(cfg.train.seed)
    if accelerator.is_main_process:
        start_run(cfg)

    # ------------------------------------------------------------ data, model, optimizer
    train, heldout, duplicated, _ = split_digits(cfg)
    loader = DataLoader(DigitsDataset(train), batch_size=cfg.train.batch_size, shuffle=True)
    unet = small_unet(cfg.data.size, 1, channels=tuple(cfg.model.channels), attention=cfg.model.attention)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.Adam(unet.parameters(), lr=cfg.train.lr)
    unet, optimizer, loader = accelerator.prepare(unet, optimizer, loader)

    def denoiser():  # the network without DDP and without accelerate's autocast wrapper, the model left as it is
        return mmh_train.diffusers_denoiser(mmh_train.raw_network(unet), scheduler)

    # ------------------------------------------------------------ mmh_train: monitor and remedies
    m, r = cfg.monitor, cfg.remedies
    monitor = mmh_train.MemorizationMonitor(
        train.images, heldout, **monitor_options(m), n_train_probes=m.n_train_probes,
        n_heldout_probes=m.n_heldout_probes, estimator_options={} if m.n_probes is None else {"n_probes": m.n_probes})
    groups = find_duplicate_groups(train.images)
    guard = mmh_train.MemorizationGuard(
        monitor, weights=AdaptiveDuplicateWeights(groups, dd_factor=r.dd_factor) if r.reweight else None,
        penalty=PenaltySchedule(max_weight=r.penalty_weight, target=r.penalty_target,
                                n_points=len(train.images) if r.penalty_per_point else None) if r.penalty else None,
        stopper=mmh_train.MemorizationStopper("od_fraction", patience=r.patience) if r.early_stopping else None,
        seed=cfg.train.seed)
    progress = Progress()
    accelerator.register_for_checkpointing(guard, progress)
    if cfg.train.resume:
        accelerator.load_state(cfg.train.resume)

    # ------------------------------------------------------------ the loop
    def batches():
        while True:
            yield from loader

    start = time.perf_counter()
    unet.train()
    for x0, _, index in batches():
        if progress.step >= cfg.train.steps or guard.should_stop:
            break
        progress.step += 1
        noise = torch.randn_like(x0)
        t = torch.randint(0, cfg.train.max_timestep, (x0.shape[0],), device=x0.device)
        eps = unet(scheduler.add_noise(x0, noise, t), t).sample
        per_sample = (eps - noise).pow(2).flatten(1).mean(1)
        loss = guard.weighted_loss(per_sample, index) + guard.penalty(denoiser(), x0, progress.step, indices=index)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        result = guard.maybe_check(denoiser(), progress.step)  # every process, same steps
        if result is not None:
            guard.write_audit(run_dir / "model" / "mmh_audit.csv")  # rank 0 writes
            accelerator.print(f"step {progress.step}: " + ", ".join(f"{k} {v:.3f}" for k, v in result.metrics.items()))
        if progress.step % cfg.train.checkpoint_every == 0:
            accelerator.save_state(str(run_dir / "checkpoints" / f"step_{progress.step}"))
    seconds = time.perf_counter() - start
    accelerator.wait_for_everyone()

    # ------------------------------------------------------------ report
    if not accelerator.is_main_process:
        return 0
    variant = result_from_monitor("model", denoiser(), monitor, guard_notes(guard), cfg.train, train.images,
                                  heldout, seconds, restored_step=guard.restored_step)
    return write_run_report(run_dir, cfg, recipe="digits_accelerate", kind="images", train_x=train.images,
                            heldout_x=heldout, variants=[variant], duplicated=duplicated)


if __name__ == "__main__":
    exit_after(main)
