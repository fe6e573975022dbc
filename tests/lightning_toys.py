"""A tiny diffusion LightningModule on toy data, shared by the callback tests."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
from diffusers import DDPMScheduler
from torch import nn
from torch.utils.data import DataLoader

import mmh_train
from mmh_train.data import ToyDataset, affine_mixture


class TimeMLP(nn.Module):
    def __init__(self, dim: int, width: int = 256, embed: int = 16):
        super().__init__()
        self.embed = embed
        self.net = nn.Sequential(nn.Linear(dim + embed, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, dim))

    def forward(self, y, t):
        freqs = torch.exp(-math.log(1000.0) * torch.arange(self.embed // 2) / (self.embed // 2))
        angles = t.float()[:, None] * freqs[None]
        return self.net(torch.cat([y, angles.sin(), angles.cos()], 1))


class ToyDiffusion(pl.LightningModule):
    """ε-prediction DDPM on low-noise timesteps (t < 250), so a few thousand CPU steps fit small σ."""

    def __init__(self, dim: int = 4, lr: float = 3e-3, width: int = 256, max_timestep: int = 250):
        super().__init__()
        self.net = TimeMLP(dim, width)
        self.scheduler = DDPMScheduler(num_train_timesteps=1000)
        self.lr, self.max_timestep = lr, max_timestep

    def denoiser(self):
        return mmh_train.diffusers_denoiser(self.net, self.scheduler)

    def per_sample_loss(self, x0):
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.max_timestep, (x0.shape[0],), device=x0.device)
        eps = self.net(self.scheduler.add_noise(x0, noise, t), t.float())
        return ((eps - noise) ** 2).mean(1)

    def training_step(self, batch, batch_idx):
        x0, _, _ = batch
        return self.per_sample_loss(x0).mean()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def toy_data(n: int, dim: int = 4, seed: int = 0):
    return affine_mixture(n, dims=(2,), ambient_dim=dim, generator=torch.Generator().manual_seed(seed))


def loader(sample, batch_size: int = 128, seed: int = 0, **kwargs):
    """A loader whose order and noise depend only on ``seed`` (replacement sampling, fixed generator)."""
    sampler = torch.utils.data.RandomSampler(ToyDataset(sample), replacement=True, num_samples=batch_size * 10,
                                             generator=torch.Generator().manual_seed(seed))
    return DataLoader(ToyDataset(sample), batch_size=batch_size, sampler=sampler, **kwargs)


def trainer(tmp_path, max_steps: int, callbacks=(), **kwargs) -> pl.Trainer:
    options = dict(max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    options.update(kwargs)
    return pl.Trainer(callbacks=list(callbacks), **options)


class ReproducibleToyDiffusion(ToyDiffusion):
    """Noise from a generator saved in checkpoints, so a resumed run repeats an uninterrupted one bitwise."""

    def __init__(self, *args, seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.noise = torch.Generator().manual_seed(seed)

    def per_sample_loss(self, x0):
        noise = torch.randn(x0.shape, generator=self.noise)
        t = torch.randint(0, self.max_timestep, (x0.shape[0],), generator=self.noise)
        eps = self.net(self.scheduler.add_noise(x0, noise, t), t.float())
        return ((eps - noise) ** 2).mean(1)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["noise_generator"] = self.noise.get_state()

    def on_load_checkpoint(self, checkpoint):
        self.noise.set_state(checkpoint["noise_generator"])


def epoch_loader(sample, batch_size: int = 32, seed: int = 0, weights=None):
    """Order fixed by (seed, epoch): Lightning calls set_epoch on the sampler."""
    from mmh_train.remedies import DistributedWeightedSampler

    weights = torch.ones(len(sample.x)) if weights is None else weights
    sampler = DistributedWeightedSampler(weights, num_samples=batch_size * 5, seed=seed, num_replicas=1, rank=0)
    return DataLoader(ToyDataset(sample), batch_size=batch_size, sampler=sampler)
