"""Sampling any model through its denoiser: the probability-flow ODE in σ (Karras et al. 2022).

    dx/dσ = (x − D(x; σ)) / σ,   x(σ_max) ~ N(0, σ_max² I)

Heun's second-order steps on EDM's ρ-spaced σ grid. Because every parameterization is a VE denoiser
(mmh_train.parameterizations), one sampler serves DDPM, v-prediction, EDM and both flow conventions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .context import estimator_context
from .parameterizations import as_denoiser

__all__ = ["edm_sigmas", "sample"]


def edm_sigmas(n: int, sigma_min: float = 0.01, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    """``n`` decreasing noise levels (float64), then 0: σ_i = (σ_max^{1/ρ} + i/(n−1)(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ."""
    i = torch.arange(n, dtype=torch.float64)
    sigmas = (sigma_max ** (1 / rho) + i / (n - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


@torch.no_grad()
def sample(denoiser: Any, shape: tuple[int, ...], *, steps: int = 32, sigma_min: float = 0.01,
           sigma_max: float = 80.0, generator: torch.Generator | None = None, device: str | torch.device = "cpu",
           batch_size: int = 256, class_labels: Tensor | None = None) -> Tensor:
    """Draws ``shape[0]`` samples by integrating the probability-flow ODE with Heun steps.

    Args:
        denoiser: a Denoiser or callable ``(x [B, ...], sigma [B]) -> x0_hat``.
        shape: ``(N, ...)`` of the samples.
        steps: σ levels (2·steps − 1 network evaluations per sample).
        sigma_min, sigma_max: the σ range; keep it inside a discrete schedule's range.
        generator: the initial noise; ``None`` uses a fresh generator seeded with 0.
        device: where to sample.
        batch_size: samples per network call.
        class_labels: ``[N]`` one label per sample, passed to the network as ``class_labels`` (sliced with
            the batches); needs a denoiser with ``bind`` (``diffusers_denoiser``, ``vp_denoiser``, ...).

    Returns:
        ``[N, ...]`` float32 samples. The model's mode, the grad flag and the global RNGs are restored.
    """
    den = as_denoiser(denoiser)
    if class_labels is not None:
        if not hasattr(den, "bind"):
            raise TypeError(f"class_labels needs a denoiser with bind() (e.g. mmh_train.diffusers_denoiser); got "
                            f"{type(den).__name__}. Bind the labels yourself for a plain callable.")
        if class_labels.dim() != 1 or len(class_labels) != shape[0]:
            raise ValueError(f"class_labels must have shape [{shape[0]}] (one label per sample); got "
                             f"{tuple(class_labels.shape)}.")
    sigmas = edm_sigmas(steps, sigma_min, sigma_max)
    generator = generator or torch.Generator().manual_seed(0)
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    out = []
    with estimator_context(den.modules()):
        for i, chunk in enumerate(noise.split(batch_size)):
            x = chunk.to(device) * sigmas[0].item()
            if class_labels is not None:
                labels = class_labels[i * batch_size:(i + 1) * batch_size].to(device)
                den = as_denoiser(denoiser).bind(class_labels=labels)
            for s, s_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
                level = torch.full((x.shape[0],), s, dtype=torch.float64, device=x.device)
                d = (x - den(x, level)) / s
                x_next = x + (s_next - s) * d
                if s_next > 0:  # Heun's correction, except into σ = 0
                    level_next = torch.full_like(level, s_next)
                    d_next = (x_next - den(x_next, level_next)) / s_next
                    x_next = x + (s_next - s) * 0.5 * (d + d_next)
                x = x_next
            out.append(x.cpu())
    return torch.cat(out)
