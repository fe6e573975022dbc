"""The estimators' assumption, checked once per network: each output row depends on its own input row only.

FLIPD traces ∂D(x)_b/∂x_b per sample. A denoiser that mixes the batch — BatchNorm in train mode, a
``y + y.mean(0)`` — still returns finite numbers, but wrong ones. The check changes the last row of a batch
and asks whether any other row of the output moved; it costs two forward passes, once per network (or per
plain callable), and runs inside the estimator's context (eval mode for the modules it can see).
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from ..parameterizations.denoisers import modules_read_globally
from ._prepare import output_checker

__all__ = ["check_per_sample"]

_CHECKED: "weakref.WeakSet[Any]" = weakref.WeakSet()  # networks (modules) and plain functions already checked
#: Relative change of the untouched rows that counts as mixing (far above float rounding between two calls).
TOLERANCE = 1e-4


def check_per_sample(denoiser: Any, x: Tensor, sigma: Tensor) -> None:
    """Raises ``ValueError`` when changing row B−1 of ``x [B, ...]`` changes rows 0..B−2 of ``denoiser(x, σ)``.

    Done once per network (the denoiser's modules) or, for a plain callable, once per callable; needs B ≥ 2.
    """
    if x.shape[0] < 2:
        return
    keys = denoiser.modules() or [_function_of(denoiser)]
    if all(_was_checked(key) for key in keys):
        return
    with torch.no_grad(), _buffers_kept(denoiser.modules() + modules_read_globally(denoiser)):
        try:
            out = denoiser(x, sigma)
        except RuntimeError:  # e.g. half-precision weights that need autocast: the estimator's own path handles it
            return
        output_checker(x, allow_dtype_change=True)(out)  # a wrong shape is named at this first call
        moved = x.clone()
        moved[-1] = x[-1] + x.detach().float().std().clamp(min=1e-3).to(x.dtype) + 1
        out_moved = denoiser(moved, sigma)
    kept = out[:-1].float()
    change = float((out_moved[:-1].float() - kept).abs().max())
    scale = float(kept.abs().max()) + 1e-6
    if change > TOLERANCE * scale:
        raise ValueError(f"the denoiser mixes the samples of a batch: changing only the last of {x.shape[0]} inputs "
                         f"moved the other outputs by up to {change:.3g} (of {scale:.3g}). FLIPD needs each output "
                         f"to depend on its own input only. Typical causes: BatchNorm in train mode inside a function "
                         f"that hides the network (pass the module itself, e.g. mmh_train.diffusers_denoiser(unet, "
                         f"scheduler), so the estimator can put it in eval mode), or an operation across the batch "
                         f"such as y.mean(0).")
    for key in keys:
        try:
            _CHECKED.add(key)
        except TypeError:  # not weak-referenceable: checked again next time, never mistaken for another
            pass


@contextlib.contextmanager
def _buffers_kept(modules: list[nn.Module]) -> Iterator[None]:
    """The check's two forward passes leave no trace: a BatchNorm in train mode (the very thing the check refuses)
    would otherwise have moved its running statistics before the error is raised."""
    saved = [(b, b.clone()) for root in modules for m in root.modules() if m.training for b in m.buffers(recurse=False)]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def _function_of(denoiser: Any) -> Any:
    """What a denoiser without modules evaluates: the plain function it wraps (weakly referenced, never by id,
    since ids of collected objects are reused)."""
    return getattr(denoiser, "fn", None) or getattr(denoiser, "network", None) or denoiser


def _was_checked(key: Any) -> bool:
    try:
        return key in _CHECKED
    except TypeError:
        return False
