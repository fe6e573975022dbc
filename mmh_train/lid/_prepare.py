"""Validation and set-up shared by the model-based estimators (FLIPD, normal bundle)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from .._checks import as_sigma_batch, check_choice, check_points, check_positive_int, check_sigma
from ..context import PRECISIONS
from ..jacobian import MODES, PROBES
from ..parameterizations import Denoiser, as_denoiser
from ..parameterizations.denoisers import modules_read_globally

__all__ = ["prepare_denoiser_call", "output_checker", "check_generator"]


def check_generator(generator: Any, name: str = "generator") -> None:
    """``generator`` must be ``None`` or a ``torch.Generator``."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator (e.g. torch.Generator().manual_seed(0)) or None; "
                        f"got {type(generator).__name__}. mmh_train never draws from the global RNG.")


def prepare_denoiser_call(denoiser: Any, x: Tensor, sigma: float | Tensor, *, n_probes: int | None = None,
                          probe: str = "rademacher", mode: str = "reverse", precision: str = "fp32",
                          chunk_size: int | None = None, generator: Any = None) -> tuple[Denoiser, Tensor]:
    """Checks every argument before any network call; returns the denoiser and σ as float64 ``[B]``.

    The returned σ is the one the denoiser actually evaluates (snapped for discrete schedules).
    """
    check_points(x)
    check_sigma(sigma, x.shape[0])
    check_positive_int(n_probes, "n_probes", allow_none=True)
    check_positive_int(chunk_size, "chunk_size", allow_none=True)
    check_choice(probe, "probe", PROBES)
    check_choice(mode, "mode", MODES)
    check_choice(precision, "precision", PRECISIONS)
    check_generator(generator)
    den = as_denoiser(denoiser)
    if precision == "fp32":
        _check_network_dtype(den, x)
    sigma_b = as_sigma_batch(sigma, x.shape[0], device=x.device)
    den.check_sigma(sigma_b)
    return den, den.snap_sigma(sigma_b)


def _check_network_dtype(den: Denoiser, x: Tensor) -> None:
    """x must have a dtype the network's floating parameters have (a mismatch fails deep inside torch). The network
    is the denoiser's modules, or those a plain function reads through global names."""
    modules = den.modules() or modules_read_globally(den)
    dtypes = {p.dtype for m in modules for p in m.parameters() if p.is_floating_point()}
    if dtypes and x.dtype not in dtypes:
        names = ", ".join(sorted(str(d) for d in dtypes))
        want = next(iter(dtypes)) if len(dtypes) == 1 else None
        fix = (f"pass x.to({want}) (the data in the network's dtype)" if want is not None
               else "pass x in the network's dtype")
        raise TypeError(f"x has dtype {x.dtype} but the network's parameters are {names}; {fix}, or convert the "
                        f"network (e.g. .to(torch.{str(x.dtype).removeprefix('torch.')})). To run a float32 network "
                        f"in half precision on purpose, keep x float32 and pass precision='bf16'.")


def output_checker(x: Tensor, *, allow_dtype_change: bool) -> Callable[[Tensor], None]:
    """A check run on D(x) before any Jacobian product: same shape (and dtype unless autocast) as x."""

    def check(output: Any) -> None:
        if not isinstance(output, Tensor):
            raise TypeError(f"the denoiser returned {type(output).__name__}; it must return a Tensor shaped like "
                            f"x, {tuple(x.shape)}.")
        if output.shape != x.shape:
            raise ValueError(f"the denoiser returned shape {tuple(output.shape)} for x of shape {tuple(x.shape)}; "
                             f"D(x, sigma) must return an estimate of the clean x0 with x's shape. If the model "
                             f"predicts noise or velocity, wrap it with a parameterization (diffusers_denoiser, "
                             f"vp_denoiser, rectified_flow_denoiser, ...).")
        if output.dtype != x.dtype and not allow_dtype_change:
            raise TypeError(f"the denoiser returned dtype {output.dtype} for x of dtype {x.dtype}; return x's "
                            f"dtype (e.g. `.to(x.dtype)`), or pass precision='bf16'/'fp16' to run it in half "
                            f"precision on purpose.")

    return check
