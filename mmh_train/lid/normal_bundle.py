"""Normal Bundle LID (Stanczuk et al. 2024): count the directions the score pushes back along.

Near the manifold the score s(x; σ) = (D(x; σ) − x) / σ² points back onto it, so the scores of K noisy
copies x + σε_k span the normal space. With S the ``[K, D]`` stack of those scores, the number of large
singular values of S is the normal dimension n and LID = D − n. The cut is the largest gap between
consecutive singular values (or a threshold relative to the largest). Cost: K ≈ 4·D forward passes and
one K × D SVD per point, orders of magnitude above FLIPD.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._checks import check_positive_int
from ..context import estimator_context, network_precision
from ..parameterizations.conversions import broadcast_to_batch, denoiser_to_score
from ._prepare import output_checker, prepare_denoiser_call

__all__ = ["normal_bundle_lid", "normal_dimension_from_singular_values"]


def normal_dimension_from_singular_values(singular_values: Tensor, *, threshold: float | None = None) -> Tensor:
    """Number of large singular values per point.

    Args:
        singular_values: ``[B, R]`` sorted in decreasing order.
        threshold: count the values above ``threshold · s_max``; ``None`` cuts at the largest gap
            s_i − s_{i+1}, with s_{R+1} = 0 so that "every direction is normal" is a possible answer.

    Returns:
        ``[B]`` long.
    """
    if threshold is not None:
        return (singular_values > threshold * singular_values[:, :1]).sum(1)
    padded = torch.cat([singular_values, torch.zeros_like(singular_values[:, :1])], dim=1)
    gaps = padded[:, :-1] - padded[:, 1:]
    return gaps.argmax(1) + 1


def normal_bundle_lid(
    denoiser: Any,
    x: Tensor,
    sigma: float | Tensor,
    *,
    n_samples: int | None = None,
    threshold: float | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    precision: str = "fp32",
    eval_mode: bool = True,
) -> Tensor:
    """LID = D − (number of large singular values of the stacked scores of noisy copies of x).

    Args:
        denoiser: a Denoiser or a callable ``(x [N, ...], sigma [N]) -> x0_hat`` (it is called on
            ``chunk · n_samples`` copies at once, so per-sample bound conditioning is not supported).
        x: ``[B, ...]`` points.
        sigma: noise level of the copies and of the score, a float or ``[B]``.
        n_samples: copies per point K; default 4·D.
        threshold: relative singular-value threshold; ``None`` uses the largest gap.
        generator: source of the noise; ``None`` uses a fresh generator seeded with 0.
        chunk_size: points per denoiser call; ``None`` keeps chunk·K·D near 4M elements.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` autocast for the network.
        eval_mode: evaluate the network in eval mode (restored afterwards).

    Returns:
        ``[B]`` LID estimates (float32, or float64 for float64 input).
    """
    den, sigma_b = prepare_denoiser_call(denoiser, x, sigma, precision=precision, chunk_size=chunk_size,
                                         generator=generator)
    check_positive_int(n_samples, "n_samples", allow_none=True)
    if threshold is not None and not 0 < threshold < 1:
        raise ValueError(f"threshold is relative to the largest singular value and must lie in (0, 1); got {threshold}.")
    dim = x[0].numel()
    k = n_samples or 4 * dim
    if generator is None:
        generator = torch.Generator(device=x.device).manual_seed(0)
    if chunk_size is None:
        chunk_size = max(1, (1 << 22) // (k * dim))
    check = output_checker(x[:1].expand(k, *x.shape[1:]), allow_dtype_change=precision != "fp32")
    counts = []
    with estimator_context(den.modules(), eval_mode=eval_mode), torch.no_grad():
        for start in range(0, x.shape[0], chunk_size):
            xc, sc = x[start:start + chunk_size], sigma_b[start:start + chunk_size]
            copies = xc.repeat_interleave(k, dim=0)
            sigma_copies = sc.repeat_interleave(k)
            eps = torch.randn(copies.shape, generator=generator, device=generator.device,
                              dtype=torch.float64).to(copies)
            noisy = copies + broadcast_to_batch(sigma_copies, copies) * eps
            with network_precision(precision, x.device.type):
                denoised = den(noisy, sigma_copies)
            if start == 0:
                check(denoised[:k])
            acc = torch.float64 if x.dtype == torch.float64 else torch.float32
            scores = denoiser_to_score(denoised.to(acc), noisy.to(acc), sigma_copies).reshape(len(xc), k, dim)
            counts.append(normal_dimension_from_singular_values(torch.linalg.svdvals(scores), threshold=threshold))
    out_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return (dim - torch.cat(counts)).to(out_dtype)
