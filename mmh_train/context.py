"""The side-effect-free evaluation context every estimator runs in, and the network precision policy.

Monitoring must never change training: after an estimator returns, every module's train/eval flag,
the grad-enabled flag and the autocast state are exactly what they were, and the global RNG was never
drawn from (estimators take explicit ``torch.Generator``\\ s).
"""

from __future__ import annotations

import contextlib
import random
import warnings
import weakref
from typing import Iterator

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["PRECISIONS", "estimator_context", "preserve_global_rng", "seed_global_rng", "preserve_torch_rng", "network_precision", "fell_back", "remember_fallback",
           "warn_precision_fallback"]

#: Precision policies for the network during estimation; accumulation is always fp32 (or fp64).
PRECISIONS = ("fp32", "bf16", "fp16")
_HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# Configurations that failed once per network (a half-precision JVP, a vmapped product): skipped later.
_FALLBACKS: "weakref.WeakKeyDictionary[nn.Module, set[tuple[str, ...]]]" = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def preserve_torch_rng() -> Iterator[None]:
    """Restores torch's global RNGs (CPU, and the current CUDA device once CUDA is initialised) on exit.

    What a network draws from (dropout, noise layers). About 10 µs, against ~0.25 ms for NumPy's and
    Python's states as well, which is why estimators use this and not :func:`preserve_global_rng`.
    """
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        yield


def seed_global_rng(seed: int) -> None:
    """Seeds torch's CPU RNG, NumPy's and Python's ``random`` (inside :func:`preserve_global_rng` only)."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.random.default_generator.manual_seed(seed)


@contextlib.contextmanager
def preserve_global_rng() -> Iterator[None]:
    """Restores the global RNGs (torch CPU and CUDA, NumPy, Python's ``random``) on exit.

    For code that must call user code which may draw from them, e.g. a dataset's ``__getitem__`` with
    random augmentations while the monitor gathers its probe points: training must not see the draw.
    """
    import numpy as np

    python_state, numpy_state = random.getstate(), np.random.get_state()
    with preserve_torch_rng():
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


@contextlib.contextmanager
def estimator_context(modules: list[nn.Module], *, eval_mode: bool = True, preserve_rng: bool = True) -> Iterator[None]:
    """Runs estimators in eval mode with the MATH attention kernel, then restores everything.

    Eval mode makes estimates deterministic (dropout off, BatchNorm on running statistics) and is
    required by ``vmap``, which refuses randomness such as dropout. The MATH SDPA kernel is the only one
    with forward-mode AD and double backward. On exit each submodule's own ``training`` flag is restored
    (not a blanket ``.train()``, which would overwrite submodules the user froze in eval mode), as is the
    grad-enabled flag. Torch's global RNGs are restored too: a plain callable may hide a network in train
    mode whose dropout draws from them, and training must not see those draws. NumPy's and Python's RNGs
    are not saved here (a network's forward pass does not draw from them, and saving them would cost more
    than a small network's forward pass); the estimators themselves never draw from any global RNG.

    Args:
        modules: the networks the estimator evaluates.
        eval_mode: put them in eval mode for the duration (default True).
        preserve_rng: restore the global RNGs on exit (default True; the training-loss penalty opts out).
    """
    saved_modes = [(m, m.training) for root in modules for m in root.modules()]
    grad_enabled = torch.is_grad_enabled()
    try:
        if eval_mode and any(training for _, training in saved_modes):
            for root in modules:
                root.eval()
        with sdpa_kernel(SDPBackend.MATH), (preserve_torch_rng() if preserve_rng else contextlib.nullcontext()):
            yield
    finally:
        for module, training in saved_modes:
            if module.training != training:  # nn.Module.__setattr__ is slow: touch only what changed
                module.training = training
        torch.set_grad_enabled(grad_enabled)


@contextlib.contextmanager
def network_precision(precision: str, device_type: str) -> Iterator[None]:
    """Autocast for the network's forward and JVPs: off for ``"fp32"``, bf16/fp16 otherwise.

    ``"fp32"`` disables any autocast the caller left on (e.g. inside ``accelerator.autocast()``), so
    estimates do not silently depend on the training loop's mixed-precision setting.
    """
    if precision == "fp32":
        with torch.autocast(device_type=device_type, enabled=False):
            yield
    else:
        with torch.autocast(device_type=device_type, dtype=_HALF_DTYPES[precision]):
            yield


def fell_back(modules: list[nn.Module], key: tuple[str, ...]) -> bool:
    """True when a configuration ``key`` failed before for one of ``modules`` (see :func:`remember_fallback`)."""
    return any(key in _FALLBACKS.get(m, ()) for m in modules)


def remember_fallback(modules: list[nn.Module], key: tuple[str, ...]) -> None:
    """Records that configuration ``key`` failed for these networks, so later calls skip it."""
    for m in modules:
        _FALLBACKS.setdefault(m, set()).add(key)


def warn_precision_fallback(precision: str, device_type: str, error: Exception) -> None:
    """Says once per network that a half-precision JVP failed and fp32 is used instead."""
    warnings.warn(
        f"The {precision} JVP through this network failed on {device_type} ({type(error).__name__}: "
        f"{str(error).splitlines()[0][:200]}); mmh_train falls back to fp32 for it from now on. Pass "
        f"precision='fp32' to silence this warning.",
        RuntimeWarning,
        stacklevel=4,
    )
