"""Input checks shared by the estimators.

Every public entry point validates its inputs here *before* any network call, so a bad call fails
fast with a message that names the fix. Messages follow one pattern: what is wrong, then what to do.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = [
    "check_points",
    "check_query",
    "check_sigma",
    "check_positive_int",
    "check_choice",
    "as_sigma_batch",
]


def check_points(x: Any, name: str = "x", *, min_dim: int = 2) -> Tensor:
    """Checks a batch of points: a floating tensor ``[B, ...]`` with B ≥ 1 and finite entries.

    Args:
        x: the batch; the first axis indexes points.
        name: the argument name used in error messages.
        min_dim: the smallest number of axes allowed (2 means ``[B, D]`` at least).

    Returns:
        ``x`` unchanged.

    Raises:
        TypeError: ``x`` is not a tensor, or has an integer/bool/complex dtype.
        ValueError: the batch is empty, has too few axes, or holds NaN/Inf (the rows are named).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [B, ...]; got {type(x).__name__}. "
                        f"Convert it with torch.as_tensor({name}, dtype=torch.float32).")
    if not x.is_floating_point():
        raise TypeError(f"{name} has dtype {x.dtype}; estimators need a floating dtype. "
                        f"Pass {name}.float() (or .double() for float64 checks).")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} axes ([B, ...] with the batch first); "
                         f"got shape {tuple(x.shape)}. For a single point use {name}.unsqueeze(0).")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)}); pass at least one point.")
    if x[0].numel() == 0:
        raise ValueError(f"{name} has points with zero features (shape {tuple(x.shape)}).")
    finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    if not bool(finite.all()):
        rows = torch.nonzero(~finite).flatten().tolist()
        shown = ", ".join(map(str, rows[:10])) + (", ..." if len(rows) > 10 else "")
        raise ValueError(f"{name} has NaN or Inf in {len(rows)} row(s): [{shown}]. "
                         f"Drop or repair those rows before estimating LID.")
    return x


def check_query(query: Any, data: Tensor) -> None:
    """Checks optional query points against the data: valid points with the data's feature count."""
    if query is None:
        return
    check_points(query, "query")
    if query[0].numel() != data[0].numel():
        raise ValueError(f"query points have {query[0].numel()} features but data points have "
                         f"{data[0].numel()} (shapes {tuple(query.shape)} and {tuple(data.shape)}); "
                         f"pass queries of the same shape as the data points.")


def check_sigma(sigma: Any, batch_size: int, *, name: str = "sigma") -> None:
    """Checks a noise level: a positive finite float, or a tensor of shape ``[]``, ``[1]`` or ``[B]``."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, Tensor)):
        raise TypeError(f"{name} must be a float or a tensor of shape [B]; got {type(sigma).__name__}.")
    s = torch.as_tensor(sigma, dtype=torch.float64)
    if s.dim() > 1 or (s.dim() == 1 and s.shape[0] not in (1, batch_size)):
        raise ValueError(f"{name} must be a scalar or have shape [B] = [{batch_size}]; "
                         f"got shape {tuple(s.shape)}.")
    if not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
        raise ValueError(f"{name} must be finite and > 0; got {s.flatten()[:5].tolist()}. "
                         f"FLIPD needs a small positive noise level, e.g. sigma=0.17 for unit-variance data.")


def as_sigma_batch(sigma: float | Tensor, batch_size: int, *, device: torch.device) -> Tensor:
    """Returns ``sigma`` as a float64 tensor of shape ``[B]`` on ``device`` (after :func:`check_sigma`)."""
    s = torch.as_tensor(sigma, dtype=torch.float64, device=device)
    return s.reshape(-1).expand(batch_size).clone() if s.numel() == 1 else s.reshape(batch_size)


def check_positive_int(value: Any, name: str, *, allow_none: bool = False) -> None:
    """Checks that ``value`` is an int ≥ 1 (or None when allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        hint = " or None" if allow_none else ""
        raise ValueError(f"{name} must be an integer ≥ 1{hint}; got {value!r}.")


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> None:
    """Checks that ``value`` is one of ``choices`` and lists them when it is not."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {', '.join(map(repr, choices))}.")
