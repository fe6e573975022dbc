"""Noise schedules: the map σ ↦ (a, b, t) from the VE noise level to a model's own coordinates.

A model trained on y = a·x0 + b·ε at time t sees the VE point x = y / a at noise level σ = b / a.
Every schedule here answers one question: for a requested σ, which scaled input y = a·x and which
network time t reproduce it. All schedule maths runs in float64 whatever dtype the network uses:
ᾱ close to 1 rounds to exactly 1 in bf16 (σ would become 0) and loses digits in fp16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .conversions import flow_matching_velocity_to_denoiser, rectified_flow_velocity_to_denoiser

__all__ = [
    "NoiseLevel",
    "Schedule",
    "DiscreteVPSchedule",
    "LinearVPSchedule",
    "VESchedule",
    "RectifiedFlowSchedule",
    "FlowMatchingSchedule",
]


@dataclass(frozen=True)
class NoiseLevel:
    """Per-sample coordinates of one noise level, all float64 of shape ``[B]``.

    Attributes:
        sigma: the VE noise level σ = b / a.
        a: the signal scale (y = a·x).
        b: the noise scale.
        t: the time passed to the network, in the network's own units.
    """

    sigma: Tensor
    a: Tensor
    b: Tensor
    t: Tensor


class Schedule:
    """Base class. Subclasses implement :meth:`level` and may restrict :attr:`sigma_range`."""

    #: (σ_min, σ_max) the schedule can represent; requests outside raise before any network call.
    sigma_range: tuple[float, float] = (0.0, math.inf)

    def level(self, sigma: Tensor) -> NoiseLevel:
        """Maps float64 ``sigma [B]`` to the model's coordinates."""
        raise NotImplementedError

    def snap_sigma(self, sigma: Tensor) -> Tensor:
        """The σ actually evaluated for a request (identity unless the schedule is discrete)."""
        return sigma

    def check_sigma(self, sigma: Tensor) -> None:
        """Raises ``ValueError`` naming the valid range when a requested σ lies outside it."""
        lo, hi = self.sigma_range
        bad = (sigma < lo) | (sigma > hi)
        if bool(bad.any()):
            raise ValueError(
                f"sigma={sigma[bad][:5].tolist()} lies outside the range this {type(self).__name__} "
                f"can represent, [{lo:.4g}, {hi:.4g}]. Choose sigma inside it (FLIPD's usual choice is "
                f"about 0.17 for unit-variance data)."
            )


class DiscreteVPSchedule(Schedule):
    """A discrete variance-preserving schedule given by its ᾱ table (diffusers' ``alphas_cumprod``).

    σ_t = sqrt((1 − ᾱ_t) / ᾱ_t) increases with the integer timestep t. With ``continuous=True`` a
    requested σ is evaluated exactly: a = 1/sqrt(1 + σ²), b = σ·a, and the network receives the
    fractional timestep found by interpolating log σ over the table (UNet timestep embeddings accept
    floats). With ``continuous=False`` σ snaps to the nearest tabulated level (in log σ) and the network
    receives that integer timestep; FLIPD is then evaluated at the snapped σ.

    Args:
        alphas_cumprod: ᾱ per timestep, shape ``[T]``, decreasing.
        continuous: pass fractional timesteps (default) or snap to the table.
    """

    def __init__(self, alphas_cumprod: Tensor, *, continuous: bool = True) -> None:
        alpha_bar = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64)
        if alpha_bar.dim() != 1 or alpha_bar.numel() < 2:
            raise ValueError("alphas_cumprod must be a 1-D table with at least two timesteps.")
        if not bool(((alpha_bar > 0) & (alpha_bar < 1)).all()) or not bool((alpha_bar[1:] < alpha_bar[:-1]).all()):
            raise ValueError("alphas_cumprod must lie in (0, 1) and strictly decrease with the timestep.")
        self.log_sigmas = 0.5 * (torch.log1p(-alpha_bar) - torch.log(alpha_bar))  # log σ_t, increasing
        self.continuous = continuous
        self.sigma_range = (math.exp(self.log_sigmas[0].item()), math.exp(self.log_sigmas[-1].item()))

    def _fractional_timestep(self, sigma: Tensor) -> Tensor:
        log_sigmas = self.log_sigmas.to(sigma.device)
        log_sigma = sigma.log().clamp(log_sigmas[0], log_sigmas[-1])
        upper = torch.searchsorted(log_sigmas, log_sigma).clamp(1, log_sigmas.numel() - 1)
        lower = upper - 1
        w = (log_sigma - log_sigmas[lower]) / (log_sigmas[upper] - log_sigmas[lower])
        return lower.to(torch.float64) + w

    def snap_sigma(self, sigma: Tensor) -> Tensor:
        if self.continuous:
            return sigma
        t = self._fractional_timestep(sigma).round().long()
        return self.log_sigmas.to(sigma.device)[t].exp()

    def level(self, sigma: Tensor) -> NoiseLevel:
        a = torch.rsqrt(1 + sigma**2)  # ᾱ = 1 / (1 + σ²), a = sqrt(ᾱ)
        t = self._fractional_timestep(sigma)
        if not self.continuous:
            t = t.round()
        return NoiseLevel(sigma=sigma, a=a, b=sigma * a, t=t)


class LinearVPSchedule(Schedule):
    """Continuous VP with linear β(t) = β_min + t·(β_max − β_min) on t ∈ [0, 1] (Song et al. 2021).

    log ᾱ(t) = −(β_min·t + ½·(β_max − β_min)·t²), so σ² = exp(β_min·t + ½Δβ·t²) − 1 and, inverting
    the quadratic, t = (−β_min + sqrt(β_min² + 2·Δβ·log(1 + σ²))) / Δβ.

    Args:
        beta_min, beta_max: the β range (default 0.1 to 20).
        time_scale: factor applied to t before it reaches the network (e.g. 999 for DDPM-style nets).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, *, time_scale: float = 1.0) -> None:
        if not (0 < beta_min < beta_max) or not math.isfinite(beta_max):
            raise ValueError(f"need 0 < beta_min < beta_max < inf; got beta_min={beta_min}, beta_max={beta_max}.")
        self.beta_min, self.beta_max, self.time_scale = float(beta_min), float(beta_max), float(time_scale)
        self.sigma_range = (0.0, math.sqrt(math.expm1(beta_min + 0.5 * (beta_max - beta_min))))

    def time_of_sigma(self, sigma: Tensor) -> Tensor:
        """t ∈ (0, 1] for float64 ``sigma [B]``."""
        delta = self.beta_max - self.beta_min
        return (-self.beta_min + torch.sqrt(self.beta_min**2 + 2 * delta * torch.log1p(sigma**2))) / delta

    def level(self, sigma: Tensor) -> NoiseLevel:
        a = torch.rsqrt(1 + sigma**2)
        return NoiseLevel(sigma=sigma, a=a, b=sigma * a, t=self.time_of_sigma(sigma) * self.time_scale)


class VESchedule(Schedule):
    """Variance exploding: y = x0 + σ·ε, so a = 1, b = σ, and the network time is σ itself.

    Args:
        time: ``"sigma"`` passes σ, ``"log_sigma"`` passes log σ, ``"edm"`` passes ¼·log σ (EDM's c_noise).
    """

    _times = {"sigma": lambda s: s, "log_sigma": torch.log, "edm": lambda s: 0.25 * torch.log(s)}

    def __init__(self, time: str = "sigma") -> None:
        if time not in self._times:
            raise ValueError(f"time={time!r} is not supported; choose one of {sorted(self._times)}.")
        self.time = time

    def level(self, sigma: Tensor) -> NoiseLevel:
        return NoiseLevel(sigma=sigma, a=torch.ones_like(sigma), b=sigma, t=self._times[self.time](sigma))


class RectifiedFlowSchedule(Schedule):
    """Rectified flow with data at t = 0: x_t = (1 − t)·x0 + t·ε, so σ = t / (1 − t), t = σ / (1 + σ).

    Args:
        time_scale: factor applied to t before it reaches the network (diffusers FlowMatch
            schedulers pass t·num_train_timesteps, i.e. 1000).
    """

    def __init__(self, *, time_scale: float = 1.0) -> None:
        self.time_scale = float(time_scale)

    def level(self, sigma: Tensor) -> NoiseLevel:
        a = 1 / (1 + sigma)  # 1 − t, written so that no digits cancel at small σ
        b = sigma * a  # t
        return NoiseLevel(sigma=sigma, a=a, b=b, t=b * self.time_scale)

    def velocity_to_denoiser(self, v_hat: Tensor, y: Tensor, level: NoiseLevel) -> Tensor:
        return rectified_flow_velocity_to_denoiser(v_hat, y, level.b)


class FlowMatchingSchedule(Schedule):
    """Flow matching with data at t = 1: x_t = t·x1 + (1 − t)·ε, so σ = (1 − t) / t, t = 1 / (1 + σ).

    Args:
        time_scale: factor applied to t before it reaches the network.
    """

    def __init__(self, *, time_scale: float = 1.0) -> None:
        self.time_scale = float(time_scale)

    def level(self, sigma: Tensor) -> NoiseLevel:
        a = 1 / (1 + sigma)  # t
        b = sigma * a  # 1 − t, written so that no digits cancel at small σ
        return NoiseLevel(sigma=sigma, a=a, b=b, t=a * self.time_scale)

    def velocity_to_denoiser(self, v_hat: Tensor, y: Tensor, level: NoiseLevel) -> Tensor:
        return flow_matching_velocity_to_denoiser(v_hat, y, level.a)
