"""The LID penalty: a differentiable hinge that pushes the model's FLIPD up to a target.

Overfitting-driven memorization (OD-Mem, science.md §1) is LID_θ(x) < LID*(x): the model's manifold
collapses around a training point. The remedy adds to the training loss

    penalty(x) = relu(target − FLIPD(x; σ)),
    FLIPD(x; σ) = tr(∂D/∂x) + ‖D(x; σ) − x‖² / σ²                      (science.md §3)

with the trace estimated by Hutchinson (vᵀ J v with Rademacher probes v). The value is differentiable
with respect to the network's parameters: one forward pass, then the VJPs of the probes with their
autograd graph kept, so ``loss.backward()`` runs a double backward through them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._checks import check_choice, check_positive_int
from ..context import estimator_context
from ..jacobian import EXACT_MAX_DIM
from ..lid._prepare import prepare_denoiser_call
from ..lid.flipd import flipd_terms, trace_of_denoiser

__all__ = ["lid_penalty", "penalty_on_rows", "REDUCTIONS"]

#: How :func:`lid_penalty` reduces the per-sample hinge.
REDUCTIONS = ("mean", "sum", "none")


def _check_target(target: Any, batch_size: int) -> Tensor:
    """``target`` as a finite float64 tensor ``[]`` or ``[B]`` (a constant: any graph is cut)."""
    if isinstance(target, bool) or not isinstance(target, (int, float, Tensor)):
        raise TypeError(f"target must be a float or a tensor of shape [B]; got {type(target).__name__}.")
    t = torch.as_tensor(target).detach()
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"target must be real-valued; got dtype {t.dtype}.")
    t = t.to(torch.float64)
    if t.dim() > 1 or (t.dim() == 1 and t.shape[0] not in (1, batch_size)):
        raise ValueError(f"target must be a scalar or have shape [B] = [{batch_size}]; got shape {tuple(t.shape)}.")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"target must be finite; got {t.flatten()[:5].tolist()}. Use e.g. the data's LID* or a "
                         f"fixed fraction of it.")
    return t.reshape(-1) if t.dim() == 1 and t.shape[0] == batch_size else t.reshape(())


def _chosen_rows(batch_size: int, subset: int | None, generator: torch.Generator | None) -> Tensor | None:
    """Rows of the batch to evaluate: all (None), the first ``subset``, or ``subset`` chosen by ``generator``."""
    if subset is None or subset >= batch_size:
        return None
    if generator is None:
        return torch.arange(subset)
    rows = torch.randperm(batch_size, generator=generator, device=generator.device)[:subset]
    return torch.sort(rows).values.cpu()


def lid_penalty(
    denoiser: Any,
    x: Tensor,
    sigma: float | Tensor,
    target: float | Tensor,
    *,
    n_probes: int | None = 1,
    subset: int | None = None,
    generator: torch.Generator | None = None,
    precision: str = "fp32",
    mode: str = "reverse",
    reduction: str = "mean",
    eval_mode: bool = False,
    chunk_size: int | None = None,
) -> Tensor:
    """Hinge ``relu(target − FLIPD(x; σ))`` on the model's LID, differentiable w.r.t. its parameters.

    Add it to the training loss, ``loss = diffusion_loss + λ · lid_penalty(...)``: points whose FLIPD
    already reaches ``target`` contribute nothing (and no gradient).

    Args:
        denoiser: a :class:`~mmh_train.parameterizations.Denoiser` (``vp_denoiser(net)``, ...) or a plain
            callable ``(x [B, ...], sigma [B]) -> x0_hat``. Under DDP pass the raw module
            (``model.module`` / ``accelerator.unwrap_model(model)``), and backpropagate the penalty in
            the same ``backward`` as the DDP loss so its gradients are synchronised with it.
        x: ``[B, ...]`` training points (finite, floating). They are detached: no gradient reaches x.
        sigma: VE noise level, a float or ``[B]`` tensor > 0 (≈0.17 for unit-variance data).
        target: the LID to reach, a float or ``[B]`` (e.g. the reference LID* of each point). Detached.
        n_probes: Rademacher probes for the Hutchinson trace (default 1, cheap and unbiased). None means
            the exact trace along the basis (D VJPs) when D ≤ 1024, one probe above.
        subset: evaluate only ``subset`` points of the batch: the first ones when ``generator`` is None,
            else a random choice drawn from ``generator`` (before the probes). None means all.
        generator: source of the subset and the probes. None uses a fresh generator seeded with 0, i.e.
            the *same* probe at every call; in training pass a generator that lives across steps
            (a per-rank one, e.g. ``torch.Generator().manual_seed(seed + rank)``) so the probes vary.
        precision: ``"fp32"`` (default, overrides ambient autocast), ``"bf16"`` or ``"fp16"`` for the
            network; accumulation stays fp32 and a failing half-precision pass falls back to fp32.
        mode: ``"reverse"`` (one forward + VJPs; default) or ``"forward"`` (JVPs).
        reduction: ``"mean"`` (default) or ``"sum"`` over the evaluated points, or ``"none"`` for ``[b]``.
        eval_mode: put the networks in eval mode for the call (restored afterwards). Default False:
            the penalty is part of the training loss, so the model keeps its current (train) mode.
        chunk_size: VJPs per vmapped call; None picks one.

    Returns:
        A scalar (``[b]`` for ``reduction="none"``), float32 (float64 for float64 inputs), carrying the
        graph to the network's parameters when grad is enabled. Under ``torch.no_grad()`` it is the
        value only (e.g. for logging).

    .. note::
        Cost: on the evaluated points, one forward pass plus ``n_probes`` VJPs whose graph is kept, and
        the backward then differentiates through those VJPs (a double backward): roughly 2–4 times a
        plain training step on the same points. ``subset`` bounds it. The MATH attention kernel is used
        (the only one with double backward); the train/eval flags and the grad flag are restored.

    .. note::
        In train mode, dropout draws one mask per forward pass. Reverse mode draws it once and vmaps
        only the VJPs, which works; forward mode would vmap the forward pass, which ``vmap`` refuses
        for randomness, so it falls back to one JVP at a time (each with its own mask). BatchNorm in
        train mode couples the batch; the Hutchinson estimate stays unbiased but noisier.
    """
    den, sigma_b = prepare_denoiser_call(denoiser, x, sigma, n_probes=n_probes, probe="rademacher", mode=mode,
                                         precision=precision, chunk_size=chunk_size, generator=generator)
    batch_size = x.shape[0]
    target_b = _check_target(target, batch_size)
    check_positive_int(subset, "subset", allow_none=True)
    check_choice(reduction, "reduction", REDUCTIONS)
    if not isinstance(eval_mode, bool):
        raise TypeError(f"eval_mode must be a bool; got {type(eval_mode).__name__}.")

    rows = _chosen_rows(batch_size, subset, generator)
    x_eval = x.detach() if rows is None else x.detach()[rows.to(x.device)]
    if rows is not None:
        sigma_b = sigma_b[rows.to(sigma_b.device)]
        if target_b.dim() == 1:
            target_b = target_b[rows]
    with estimator_context(den.modules(), eval_mode=eval_mode):
        # Grad mode is inherited, not forced: with grad enabled the VJPs keep their graph.
        est = trace_of_denoiser(den, x_eval, sigma_b, precision=precision, mode=mode, generator=generator,
                                n_probes=n_probes, probe="rademacher", chunk_size=chunk_size,
                                exact_max_dim=EXACT_MAX_DIM)
    lid, _ = flipd_terms(est.output, x_eval, est.trace, sigma_b)
    hinge = torch.relu(target_b.to(device=lid.device, dtype=lid.dtype) - lid)
    if reduction == "mean":
        return hinge.mean()
    if reduction == "sum":
        return hinge.sum()
    return hinge


def penalty_on_rows(denoiser: Any, x: Tensor, sigma: float | Tensor, rows: Tensor, target: float | Tensor, weight: float, *,
                    n_probes: int | None = 1, subset: int | None = None,
                    generator: torch.Generator | None = None) -> Tensor:
    """``weight · Σ_{r ∈ rows} relu(target_r − FLIPD(x_r; σ)) / B``: the penalty on some rows of a batch.

    Scaled per batch row like a mean loss, so a penalty on 3 flagged points of 128 weighs 3/128 of one on
    all of them. With ``subset`` smaller than ``len(rows)``, a random ``subset`` of the rows (from
    ``generator``; the first rows without one, as in :func:`lid_penalty`) is evaluated and the sum is scaled
    up by ``len(rows) / subset`` (unbiased with a generator). The global RNG is never used.

    Args:
        x: ``[B, ...]`` the batch; rows: ``[b]`` long indices into it; target, sigma: floats or ``[b]``.
        Other arguments as for :func:`lid_penalty`.

    Returns:
        A scalar with the graph to the network's parameters; exactly 0 (no network call) when ``rows`` is
        empty or ``weight`` is 0.
    """
    batch_size, n_rows = x.shape[0], int(rows.numel())
    if n_rows == 0 or weight == 0.0:
        return torch.zeros((), device=x.device, dtype=x.dtype)
    target = target if not isinstance(target, Tensor) else target.reshape(-1)
    if subset is not None and subset < n_rows:  # like lid_penalty: the first rows without a generator
        pick = (torch.arange(subset) if generator is None else
                torch.sort(torch.randperm(n_rows, generator=generator, device=generator.device)[:subset].cpu()).values)
        rows = rows[pick]
        target = target[pick] if isinstance(target, Tensor) else target
        sigma = sigma.reshape(-1)[pick] if isinstance(sigma, Tensor) else sigma
    hinge = lid_penalty(denoiser, x[rows.to(x.device)], sigma, target, n_probes=n_probes, generator=generator,
                        reduction="mean")
    return weight * hinge * (n_rows / batch_size)
