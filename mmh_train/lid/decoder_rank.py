"""LID of a decoder or normalizing flow x = g(z): the numerical rank of ∂g/∂z (science.md §4).

The model's manifold near x = g(z) has the dimension of the image of the decoder's Jacobian there:
LID = #{singular values of ∂g/∂z > e^τ}, with τ = −3 a common default.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor
from torch.func import jacfwd, jacrev, vmap

from .._checks import check_choice, check_points
from ..context import estimator_context

__all__ = ["decoder_jacobian_lid", "decoder_singular_values"]


def decoder_singular_values(decoder: Callable[[Tensor], Tensor], z: Tensor, *, mode: str = "forward",
                            eval_mode: bool = True) -> Tensor:
    """Singular values of ∂g/∂z per latent, ``[B, min(D, d)]`` in decreasing order.

    Args:
        decoder: maps latents ``[B, ...]`` to points ``[B, ...]`` sample by sample.
        z: ``[B, ...]`` latents.
        mode: ``"forward"`` (``jacfwd``, d JVPs: best when the latent is small) or ``"reverse"``.
        eval_mode: evaluate ``decoder`` (if an ``nn.Module``) in eval mode, restored afterwards.
    """
    check_points(z, "z")
    check_choice(mode, "mode", ("forward", "reverse"))
    jac = jacfwd if mode == "forward" else jacrev

    def one(zi: Tensor) -> Tensor:
        return decoder(zi.unsqueeze(0)).squeeze(0).flatten()

    modules = [decoder] if isinstance(decoder, torch.nn.Module) else []
    with estimator_context(modules, eval_mode=eval_mode), torch.no_grad():
        jacobians = vmap(jac(one))(z)  # [B, D, *latent_shape]
    return torch.linalg.svdvals(jacobians.flatten(2))


def decoder_jacobian_lid(decoder: Callable[[Tensor], Tensor], z: Tensor, *, tau: float = -3.0,
                         mode: str = "forward", eval_mode: bool = True) -> Tensor:
    """LID = number of singular values of ∂g/∂z above e^τ.  ``z: [B, ...]`` → ``[B]`` float."""
    if not math.isfinite(tau):
        raise ValueError(f"tau must be finite (the threshold is e^tau); got {tau}.")
    singular_values = decoder_singular_values(decoder, z, mode=mode, eval_mode=eval_mode)
    return (singular_values > math.exp(tau)).sum(1).to(singular_values.dtype)
