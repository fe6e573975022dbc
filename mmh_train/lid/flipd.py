"""FLIPD (Kamkari et al. 2024): LID of a diffusion model from one forward pass and one JVP.

    FLIPD(x; σ) = tr(∂D/∂x) + ‖D(x; σ) − x‖² / σ²                    (science.md §3)

A generalizing denoiser projects onto the tangent space of the data manifold (trace = k); a memorizing
one snaps every nearby x onto the training point (trace = 0). The value is not clipped: imperfect
networks can read below 0 or above D.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..context import estimator_context, fell_back, network_precision, remember_fallback, warn_precision_fallback
from ..jacobian import EXACT_MAX_DIM, TraceEstimate, jacobian_trace
from ..parameterizations import Denoiser
from ._prepare import output_checker, prepare_denoiser_call
from .per_sample import check_per_sample


class NonFiniteLIDWarning(RuntimeWarning):
    """FLIPD met non-finite denoiser values (the monitor, which reports them itself, silences it)."""


__all__ = ["FlipdEstimate", "NonFiniteLIDWarning", "flipd", "flipd_estimate", "flipd_from_denoiser_terms", "trace_of_denoiser"]


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


def flipd_terms(denoised: Tensor, x: Tensor, trace: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """FLIPD and its squared residual from the denoiser's output ``denoised [B, ...]`` at ``x [B, ...]``.

    Returns ``(lid [B], ‖D(x; σ) − x‖² [B])`` in the trace's dtype (the accumulation precision). The one
    assembly of the terms: the estimator and the penalty both call it.
    """
    acc = trace.dtype
    squared_residual = (denoised.to(acc) - x.to(acc)).flatten(1).pow(2).sum(1)
    return flipd_from_denoiser_terms(trace, squared_residual, sigma), squared_residual


def _configurations(precision: str, mode: str, device_type: str, modules: list) -> list[tuple[str, bool]]:
    """(precision, vectorize) pairs to try in order, skipping those that failed before for ``modules``."""
    precisions = [precision, "fp32"] if precision != "fp32" else ["fp32"]
    if precision != "fp32" and fell_back(modules, ("half", precision, device_type)):
        precisions = ["fp32"]
    tried = []
    for p in precisions:
        vectorized = [True, False] if not fell_back(modules, ("loop", p, mode, device_type)) else [False]
        tried += [(p, v) for v in vectorized]
    return tried


def trace_of_denoiser(denoiser: Denoiser, x: Tensor, sigma: Tensor, *, precision: str = "fp32",
                      mode: str = "reverse", generator: torch.Generator | None = None,
                      **trace_options: Any) -> TraceEstimate:
    """tr(∂D/∂x) at noise level ``sigma [B]`` (float64), under a precision policy with fall-backs.

    Some networks refuse what the fast path asks of them: a half-precision JVP can fail (bf16 autocast
    + group_norm on CPU), and diffusers' GroupNorm rejects vmapped (batched) tangents. The engine then
    retries with products one at a time, then in fp32 (with a warning), remembers per network what
    worked, and reuses the same probes for every attempt.
    """
    device_type = x.device.type
    modules = denoiser.modules()
    generator_state = generator.get_state() if generator is not None else None
    first_error: RuntimeError | None = None
    failed: list[tuple[str, ...]] = []  # remembered only once another configuration works
    for attempt_precision, vectorize in _configurations(precision, mode, device_type, modules):
        check = output_checker(x, allow_dtype_change=attempt_precision != "fp32")

        def denoise(z: Tensor) -> Tensor:
            out = denoiser(z, sigma)
            if not isinstance(out, Tensor):  # torch.func would reject it with a less helpful message
                check(out)
            return out

        if generator is not None:
            generator.set_state(generator_state)
        try:
            with network_precision(attempt_precision, device_type):
                estimate = jacobian_trace(denoise, x, mode=mode, generator=generator, output_check=check,
                                          vectorize=vectorize, **trace_options)
        except RuntimeError as error:
            first_error = first_error or error
            if vectorize:
                failed.append(("loop", attempt_precision, mode, device_type))
            continue
        for key in failed:  # the fast path failed where a slower one worked: skip it from now on
            remember_fallback(modules, key)
        if attempt_precision != precision and first_error is not None:  # a half attempt failed just now
            warn_precision_fallback(precision, device_type, first_error)
            remember_fallback(modules, ("half", precision, device_type))
        return estimate
    assert first_error is not None
    first_line = str(first_error).splitlines()[0][:300] if str(first_error) else type(first_error).__name__
    if mode == "forward":
        raise RuntimeError(f"forward-mode JVPs fail through this network ({first_line}); "
                           f"pass mode='reverse', which works through stock diffusers UNets.") from first_error
    if x.dtype == torch.float64 and ("Double" in first_line or "double" in first_line):  # float64 data, lower net
        raise TypeError(f"the denoiser failed on x of dtype {x.dtype} ({first_line}): cast the data to the network's "
                        f"dtype, e.g. x.float() for a float32 network (for a monitor, the data it was built with), or "
                        f"convert the network.") from first_error
    raise RuntimeError(f"the denoiser failed on x of shape {tuple(x.shape)} and dtype {x.dtype} ({first_line}); check "
                       f"that x has the shape, dtype and device the network takes, and that the network runs on its "
                       f"own on x (e.g. denoiser(x, sigma)).") from first_error


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
        check_per_sample(den, x, sigma_b)
        est = trace_of_denoiser(den, x, sigma_b, precision=precision, mode=mode, generator=generator,
                                n_probes=n_probes, probe=probe, chunk_size=chunk_size, exact_max_dim=exact_max_dim)
        lid, residual = flipd_terms(est.output, x, est.trace, sigma_b)
    bad = ~torch.isfinite(lid)
    if bool(bad.any()):
        warnings.warn(f"FLIPD is NaN or infinite at {int(bad.sum())} of {len(lid)} points: the denoiser returned "
                      f"non-finite values there (a diverged network, a σ outside its schedule, or an overflow in half "
                      f"precision). Those entries are not LIDs; drop them rather than average them.",
                      NonFiniteLIDWarning, stacklevel=3)
    return FlipdEstimate(lid=lid, trace=est.trace, residual=residual / sigma_b.to(residual.dtype) ** 2, sigma=sigma_b,
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
