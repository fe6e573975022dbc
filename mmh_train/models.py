"""Small networks for recipes and tests: an MLP for vectors and a diffusers UNet for small images."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["NullLabelDefault", "TimeMLP", "small_unet", "timestep_embedding"]


def timestep_embedding(t: Tensor, dim: int, max_period: float = 1000.0) -> Tensor:
    """Sinusoidal embedding ``[B, dim]`` of (possibly fractional) times ``t [B]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.to(torch.float32)[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class TimeMLP(nn.Module):
    """ε̂ / v̂ network for vectors: ``net(y [B, D], t [B], class_labels=None) -> [B, D]``.

    Args:
        dim: data dimension D.
        width, depth: hidden width and number of hidden layers.
        embed: size of the time embedding.
        num_classes: enables class conditioning (a learned embedding added to the input features).
        time_scale: the range of t the network is trained on (1000 for DDPM timesteps, 1 for flows).
    """

    def __init__(self, dim: int, width: int = 256, depth: int = 3, embed: int = 32, num_classes: int | None = None,
                 time_scale: float = 1000.0) -> None:
        super().__init__()
        self.embed, self.time_scale = embed, time_scale
        layers: list[nn.Module] = [nn.Linear(dim + embed, width), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(width, dim))
        self.class_embedding = nn.Embedding(num_classes, dim + embed) if num_classes else None

    def forward(self, y: Tensor, t: Tensor, class_labels: Tensor | None = None) -> Tensor:
        features = torch.cat([y, timestep_embedding(t * (1000.0 / self.time_scale), self.embed).to(y.dtype)], 1)
        if self.class_embedding is not None and class_labels is not None:
            features = features + self.class_embedding(class_labels).to(y.dtype)
        return self.net(features)


def small_unet(sample_size: int = 16, in_channels: int = 1, *, channels: tuple[int, ...] = (32, 64),
               attention: bool = False, num_classes: int | None = None) -> nn.Module:
    """A diffusers ``UNet2DModel`` sized for 8–64 px images on a CPU.

    ``sample_size`` must be divisible by 2^(len(channels) − 1). With ``num_classes`` the model takes
    ``class_labels`` (diffusers' class embedding). Attention works with mmh_train's reverse-mode engine.
    """
    from diffusers import UNet2DModel

    if sample_size % 2 ** (len(channels) - 1):
        raise ValueError(f"sample_size={sample_size} must be divisible by 2^(len(channels) - 1) = "
                         f"{2 ** (len(channels) - 1)} for a UNet with {len(channels)} levels.")
    down = ["DownBlock2D"] * len(channels)
    up = ["UpBlock2D"] * len(channels)
    if attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
                       layers_per_block=1, block_out_channels=channels, norm_num_groups=8,
                       down_block_types=tuple(down), up_block_types=tuple(up), num_class_embeds=num_classes)


class NullLabelDefault(nn.Module):
    """Calls a class-conditional network with the null label when no ``class_labels`` are given.

    A model trained with label dropout (the null label ``null_label`` replaces some labels) is then also
    an unconditional model, which is what the monitor measures: LID_θ(x), and LID_θ(x | c) when the
    labels are bound (``denoiser.bind(class_labels=c)``).
    """

    def __init__(self, net: nn.Module, null_label: int) -> None:
        super().__init__()
        self.net, self.null_label = net, null_label

    def forward(self, y: Tensor, t: Tensor, class_labels: Tensor | None = None) -> Tensor:
        if class_labels is None:
            class_labels = torch.full((y.shape[0],), self.null_label, dtype=torch.long, device=y.device)
        out = self.net(y, t, class_labels=class_labels)
        return out.sample if hasattr(out, "sample") else out
