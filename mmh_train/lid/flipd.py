"""FLIPD (Kamkari et al. 2024): LID of a diffusion model from one forward pass and one JVP.

    FLIPD(x; σ) = tr(∂D/∂x) + ‖D(x; σ) − x‖² / σ²                    (science.md §3)

A generalizing denoiser projects onto the tangent space of the data manifold (trace = k); a memorizing
one snaps every nearby x onto the training point (trace = 0). The value is not clipped: imperfect
networks can read below 0 or above D.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..context import (
    estimator_context,
    network_precision,
    precision_fell_back,
    remember_precision_fallback,
)
from ..jacobian import EXACT_MAX_DIM, TraceEstimate, jacobian_trace
from ..parameterizations import Denoiser
from ._prepare import output_checker, prepare_denoiser_call

__all__ = ["FlipdEstimate", "flipd", "flipd_estimate", "flipd_from_denoiser_terms", "trace_of_denoiser"]


@dataclass(frozen=True)
class FlipdEstimate:
    """FLIPD and the two terms it is made of, per sample.

    Attributes:
        lid: ``[B]`` FLIPD(x; σ) = trace + residual.
        trace: ``[B]`` tr(∂D/∂x) (exact or Hutchinson).
        residual: ``[B]`` ‖D(x; σ) − x‖² / σ².
        sigma: ``[B]`` float64, the noise level evaluated (snapped on discrete schedules).
        stderr: ``[B]`` Hutchinson standard error of the trace, or ``None`` (exact or one probe).
        denoised: ``[B, ...]`` D(x; σ).
    """

    lid: Tensor
    trace: Tensor
    residual: Tensor
    sigma: Tensor
    stderr: Tensor | None
    denoised: Tensor


def flipd_from_denoiser_terms(trace: Tensor, squared_residual: Tensor, sigma: Tensor) -> Tensor:
    """FLIPD(x; σ) = tr(∂D/∂x) + ‖D(x; σ) − x‖² / σ².  All ``[B]``; σ may be float64."""
    return trace + squared_residual / sigma.to(trace.dtype) ** 2


def trace_of_denoiser(denoiser: Denoiser, x: Tensor, sigma: Tensor, *, precision: str = "fp32",
                      generator: torch.Generator | None = None, **trace_options: Any) -> TraceEstimate:
    """tr(∂D/∂x) at noise level ``sigma [B]`` (float64), under a precision policy with fp32 fall-back.

    A half-precision JVP can fail through some layers (bf16 autocast + group_norm on CPU raises a dtype
    mismatch). The first failure for a network is reported once and that network runs in fp32 from then
    on; the retry reuses the same probes.
    """
    device_type = x.device.type
    modules = denoiser.modules()
    if precision != "fp32" and precision_fell_back(modules, precision, device_type):
        precision = "fp32"
    check = output_checker(x, allow_dtype_change=precision != "fp32")
    generator_state = generator.get_state() if generator is not None else None

    def denoise(z: Tensor) -> Tensor:
        return denoiser(z, sigma)

    try:
        with network_precision(precision, device_type):
            return jacobian_trace(denoise, x, generator=generator, output_check=check, **trace_options)
    except RuntimeError as error:
        if precision == "fp32":
            raise
        remember_precision_fallback(modules, precision, device_type, error)
    if generator is not None:
        generator.set_state(generator_state)
    with network_precision("fp32", device_type):
        return jacobian_trace(denoise, x, generator=generator, output_check=output_checker(x, allow_dtype_change=False),
                              **trace_options)


def flipd_estimate(
    denoiser: Any,
    x: Tensor,
    sigma: float | Tensor,
    *,
    n_probes: int | None = None,
    probe: str = "rademacher",
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    mode: str = "reverse",
    precision: str = "fp32",
    exact_max_dim: int = EXACT_MAX_DIM,
    eval_mode: bool = True,
) -> FlipdEstimate:
    """FLIPD with its terms; see :func:`flipd` for the arguments."""
    den, sigma_b = prepare_denoiser_call(denoiser, x, sigma, n_probes=n_probes, probe=probe, mode=mode,
                                         precision=precision, chunk_size=chunk_size, generator=generator)
    with estimator_context(den.modules(), eval_mode=eval_mode), torch.no_grad():
        est = trace_of_denoiser(den, x, sigma_b, precision=precision, generator=generator, n_probes=n_probes,
                                probe=probe, chunk_size=chunk_size, mode=mode, exact_max_dim=exact_max_dim)
        acc = est.trace.dtype
        residual = (est.output.to(acc) - x.to(acc)).flatten(1).pow(2).sum(1)
        lid = flipd_from_denoiser_terms(est.trace, residual, sigma_b)
    return FlipdEstimate(lid=lid, trace=est.trace, residual=residual / sigma_b.to(acc) ** 2, sigma=sigma_b,
                         stderr=est.stderr, denoised=est.output.detach())


def flipd(
    denoiser: Any,
    x: Tensor,
    sigma: float | Tensor,
    *,
    n_probes: int | None = None,
    probe: str = "rademacher",
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    mode: str = "reverse",
    precision: str = "fp32",
    exact_max_dim: int = EXACT_MAX_DIM,
    eval_mode: bool = True,
) -> Tensor:
    """FLIPD estimate of the model's local intrinsic dimension LID_θ(x).

    Args:
        denoiser: a :class:`~mmh_train.parameterizations.Denoiser` (``diffusers_denoiser(unet,
            scheduler)``, ``vp_denoiser(net)``, ``rectified_flow_denoiser(net)``, …) or any callable
            ``(x [B, ...], sigma [B]) -> x0_hat [B, ...]``.
        x: ``[B, ...]`` points, floating dtype, finite.
        sigma: VE noise level: a float or a ``[B]`` tensor, > 0 (≈0.17 for unit-variance data).
        n_probes: Hutchinson probes. ``None``: exact trace when the flattened dimension is ≤
            ``exact_max_dim`` (1024), one probe otherwise.
        probe: ``"rademacher"`` (default, lower variance) or ``"gaussian"``.
        generator: probe source; ``None`` uses a fresh generator seeded with 0. Never the global RNG.
        chunk_size: Jacobian products per vmapped call (memory bound); ``None`` picks one.
        mode: ``"reverse"`` (one forward + VJPs; default, works on stock diffusers UNets) or
            ``"forward"`` (``torch.func.jvp``).
        precision: ``"fp32"`` (default; disables any ambient autocast), ``"bf16"`` or ``"fp16"`` autocast
            for the network; accumulation stays fp32. Falls back to fp32 with a warning if the half
            precision JVP fails.
        exact_max_dim: largest dimension traced exactly when ``n_probes`` is ``None``.
        eval_mode: evaluate the network in eval mode (restored afterwards).

    Returns:
        ``[B]`` FLIPD(x; σ) in float32 (float64 for float64 inputs).

    .. note::
        Train/eval flags, the grad flag and the autocast state are restored; the global RNG is untouched.
        The result carries no autograd graph; the differentiable penalty lives in ``mmh_train.remedies``.
    """
    return flipd_estimate(denoiser, x, sigma, n_probes=n_probes, probe=probe, generator=generator,
                          chunk_size=chunk_size, mode=mode, precision=precision, exact_max_dim=exact_max_dim,
                          eval_mode=eval_mode).lid
