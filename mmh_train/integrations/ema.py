"""Checks on the EMA weights: swap an EMA's shadow weights into the networks for the check, then swap back.

Many training scripts (diffusers' ``--use_ema``) keep an exponential moving average of the weights and
save it, not the live weights, at the end. Memorization should then be measured on the EMA weights. The
swap copies tensors both ways under ``no_grad``, so the live weights come back bit for bit.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
from torch import nn

__all__ = ["check_ema", "ema_weights_in"]


def _parameters(networks: Sequence[nn.Module]) -> list[torch.nn.Parameter]:
    return [p for net in networks for p in net.parameters()]


def check_ema(ema: Any, networks: Sequence[nn.Module]) -> None:
    """Raises unless ``ema.shadow_params`` matches the networks' parameters one to one (count and shapes)."""
    shadow = getattr(ema, "shadow_params", None)
    if shadow is None:
        raise TypeError(f"ema must hold the averaged weights as `shadow_params` (diffusers.training_utils.EMAModel); "
                        f"got {type(ema).__name__}. For an EMA kept as a module, monitor it directly: pass a "
                        f"denoiser around the EMA module instead.")
    params = _parameters(networks)
    shapes = [tuple(p.shape) for p in params]
    if len(shadow) != len(params) or [tuple(s.shape) for s in shadow] != shapes:
        raise ValueError(f"the EMA holds {len(shadow)} tensors but the denoiser's networks have {len(params)} "
                         f"parameters (or their shapes differ): build EMAModel(model.parameters()) over the network "
                         f"the denoiser wraps (e.g. EMAModel(unet.parameters()) and diffusers_denoiser(unet, ...)).")


@contextmanager
def ema_weights_in(ema: Any | None, networks: Sequence[nn.Module]) -> Iterator[None]:
    """Within the block the networks carry the EMA's weights; afterwards their own, exactly. ``ema=None``: no-op."""
    if ema is None:
        yield
        return
    check_ema(ema, networks)
    params = _parameters(networks)
    with torch.no_grad():
        live = [p.detach().clone() for p in params]
        for p, shadow in zip(params, ema.shadow_params):
            p.copy_(shadow.to(device=p.device, dtype=p.dtype))
    try:
        yield
    finally:
        with torch.no_grad():
            for p, saved in zip(params, live):
                p.copy_(saved)
