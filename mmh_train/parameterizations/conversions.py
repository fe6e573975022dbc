"""Network outputs → the VE denoiser D(x; σ) = E[x0 | x0 + σε = x] (science.md §2).

The network sees the scaled point y = a·x at its own time t, where y = a·x0 + b·ε and σ = b / a.
Each function below is one row of the table in science.md §2 and reads like it. Coefficients ``a``,
``b`` and ``t`` are per-sample tensors of shape ``[B]``; they are broadcast over the feature axes.
All functions are exact in float64 and keep the dtype of ``y``.
"""

from __future__ import annotations

from torch import Tensor

__all__ = [
    "broadcast_to_batch",
    "epsilon_to_denoiser",
    "v_prediction_to_denoiser",
    "sample_to_denoiser",
    "rectified_flow_velocity_to_denoiser",
    "flow_matching_velocity_to_denoiser",
    "denoiser_to_score",
]


def broadcast_to_batch(coefficient: Tensor, like: Tensor) -> Tensor:
    """Reshapes a per-sample coefficient ``[B]`` to ``[B, 1, ..., 1]`` in ``like``'s dtype and device."""
    shape = (like.shape[0],) + (1,) * (like.dim() - 1)
    return coefficient.to(device=like.device, dtype=like.dtype).reshape(shape)


def epsilon_to_denoiser(eps_hat: Tensor, y: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """x̂0 = (y − b·ε̂) / a.  Shapes: ``eps_hat, y: [B, ...]``, ``a, b: [B]`` → ``[B, ...]``."""
    a, b = broadcast_to_batch(a, y), broadcast_to_batch(b, y)
    return (y - b * eps_hat) / a


def v_prediction_to_denoiser(v_hat: Tensor, y: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """x̂0 = (a·y − b·v̂) / (a² + b²) with v = a·ε − b·x0 (diffusers ``v_prediction``).

    For a variance-preserving schedule a² + b² = 1 and this is the familiar x̂0 = a·y − b·v̂.
    Shapes: ``v_hat, y: [B, ...]``, ``a, b: [B]`` → ``[B, ...]``.
    """
    a, b = broadcast_to_batch(a, y), broadcast_to_batch(b, y)
    return (a * y - b * v_hat) / (a * a + b * b)


def sample_to_denoiser(x0_hat: Tensor) -> Tensor:
    """x̂0 is the network output itself (diffusers ``sample``)."""
    return x0_hat


def rectified_flow_velocity_to_denoiser(v_hat: Tensor, y: Tensor, t: Tensor) -> Tensor:
    """x̂0 = y − t·v̂ for x_t = (1 − t)·x0 + t·ε, v = ε − x0 (data at t = 0; diffusers FlowMatch).

    Shapes: ``v_hat, y: [B, ...]``, ``t: [B]`` in [0, 1] → ``[B, ...]``.
    """
    return y - broadcast_to_batch(t, y) * v_hat


def flow_matching_velocity_to_denoiser(v_hat: Tensor, y: Tensor, t: Tensor) -> Tensor:
    """x̂1 = y + (1 − t)·v̂ for x_t = t·x1 + (1 − t)·ε, v = x1 − ε (data at t = 1; torchcfm, flow_matching).

    Shapes: ``v_hat, y: [B, ...]``, ``t: [B]`` in [0, 1] → ``[B, ...]``.
    """
    return y + (1 - broadcast_to_batch(t, y)) * v_hat


def denoiser_to_score(denoised: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
    """Score of the smoothed density: s(x; σ) = (D(x; σ) − x) / σ².  ``sigma: [B]``."""
    return (denoised - x) / broadcast_to_batch(sigma, x) ** 2
