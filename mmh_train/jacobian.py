"""Trace of a per-sample Jacobian: exact along the basis, or Hutchinson with random probes.

The function ``f`` maps a batch ``[B, ...]`` to a batch of the same shape *sample by sample* (no
interaction across the batch, as for a network in eval mode). Its Jacobian is then block diagonal and
one JVP with a tangent ``V [B, ...]`` returns every sample's ``J_b v_b`` at once. The trace

    tr(J_b) = Σ_i e_iᵀ J_b e_i              (exact: D products along the basis)
            ≈ (1/K) Σ_k v_kᵀ J_b v_k         (Hutchinson: K probes with E[v vᵀ] = I)

is assembled from such products, batched over tangents with ``vmap`` and chunked to bound memory.
Forward mode (``torch.func.jvp``) computes J v; reverse mode (``torch.autograd.grad``) computes Jᵀ v after
a single forward pass, which gives the same quadratic form vᵀ J v. Probes come from an explicit
``torch.Generator``; the global RNG is never touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import Tensor
from torch.func import jvp, vmap

__all__ = ["TraceEstimate", "jacobian_trace", "draw_probes", "PROBES", "MODES", "EXACT_MAX_DIM"]

PROBES = ("rademacher", "gaussian")
MODES = ("reverse", "forward")
#: With ``n_probes=None`` the trace is exact up to this flattened dimension, Hutchinson above it.
EXACT_MAX_DIM = 1024
#: Default bound on tangent elements (chunk × B × D) processed in one vmapped call.
_TANGENT_ELEMENTS_PER_CHUNK = 1 << 22


@dataclass(frozen=True)
class TraceEstimate:
    """The trace of each sample's Jacobian, with the function's output from the same forward pass.

    Attributes:
        trace: ``[B]`` estimate of tr(∂f/∂x) per sample, in the accumulation dtype.
        stderr: ``[B]`` standard error of a Hutchinson estimate (``None`` when exact or ``n_probes == 1``).
        output: ``[B, ...]`` f(x).
        n_products: the number of Jacobian-vector products per sample (D when exact, K otherwise).
        exact: whether the trace was summed along the basis.
    """

    trace: Tensor
    stderr: Tensor | None
    output: Tensor
    n_products: int
    exact: bool


def draw_probes(n: int, like: Tensor, probe: str, generator: torch.Generator | None) -> Tensor:
    """``n`` probe batches ``[n, B, ...]`` shaped like ``like``, with E[v vᵀ] = I per sample.

    Rademacher probes (±1) have the smallest variance among such probes for a fixed matrix; Gaussian
    ones are offered for comparison. Drawn on the generator's device, then moved to ``like``'s.
    """
    device = generator.device if generator is not None else like.device
    shape = (n, *like.shape)
    if probe == "rademacher":
        v = torch.randint(0, 2, shape, generator=generator, device=device).mul_(2).sub_(1)
    else:
        v = torch.randn(shape, generator=generator, device=device, dtype=torch.float64)
    return v.to(device=like.device, dtype=like.dtype)


def _basis_chunk(start: int, stop: int, like: Tensor) -> Tensor:
    """Basis tangents e_start … e_{stop−1}, each replicated over the batch: ``[stop − start, B, ...]``."""
    dim = like[0].numel()
    eye = torch.zeros(stop - start, dim, device=like.device, dtype=like.dtype)
    eye[torch.arange(stop - start), torch.arange(start, stop)] = 1
    return eye[:, None, :].expand(-1, like.shape[0], -1).reshape(stop - start, *like.shape)


def _reverse_forms(f: Callable[[Tensor], Tensor], x: Tensor, tangents: Iterable[Tensor], acc: torch.dtype,
                   check: Callable[[Tensor], None], vectorize: bool) -> tuple[Tensor, list[Tensor]]:
    """One forward pass, then vᵀ (Jᵀ v) for every tangent, by ``torch.autograd.grad``.

    Plain autograd costs about a third less per call than ``torch.func.vjp`` here. The graph of f is
    built even under ``no_grad``; when the caller has grad enabled (the LID penalty), the products are
    themselves differentiable with respect to the network's parameters (``create_graph``).
    """
    create_graph = torch.is_grad_enabled()
    x_in = x.detach().requires_grad_(True)
    with torch.enable_grad():
        output = f(x_in)
    check(output)
    if isinstance(output, Tensor) and not output.requires_grad:
        raise TypeError("the denoiser's output does not depend on x through autograd: it was detached, computed "
                        "under torch.no_grad() / inference_mode, or left torch (NumPy); FLIPD needs ∂D/∂x, so "
                        "return a tensor computed from x with autograd on.")

    def pull(v: Tensor, batched: bool) -> Tensor:
        return torch.autograd.grad(output, x_in, v.to(output.dtype), retain_graph=True, create_graph=create_graph,
                                   is_grads_batched=batched)[0]

    forms = []
    for v in tangents:
        batched = vectorize and len(v) > 1  # vmap costs a fixed overhead that one tangent does not need
        jt_v = pull(v, True) if batched else torch.stack([pull(vi, False) for vi in v])
        forms.append((v.to(acc) * jt_v.to(acc)).flatten(2).sum(-1))
    return output, forms


def _forward_forms(f: Callable[[Tensor], Tensor], x: Tensor, tangents: Iterable[Tensor], acc: torch.dtype,
                   check: Callable[[Tensor], None], vectorize: bool) -> tuple[Tensor, list[Tensor]]:
    """vᵀ (J v) for every tangent; f(x) is the primal the first JVP computes anyway."""
    output, forms = None, []
    for v in tangents:
        if vectorize and len(v) > 1:  # vmap costs a fixed overhead that one tangent does not need
            out, j_v = vmap(lambda t: jvp(f, (x,), (t,)), out_dims=(None, 0))(v)
        else:
            pairs = [jvp(f, (x,), (vi,)) for vi in v]
            out, j_v = pairs[0][0], torch.stack([p[1] for p in pairs])
        if output is None:
            output = out
            check(output)
        forms.append((v.to(acc) * j_v.to(acc)).flatten(2).sum(-1))
    assert output is not None
    return output, forms


def jacobian_trace(
    f: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    n_probes: int | None = None,
    probe: str = "rademacher",
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    mode: str = "reverse",
    exact_max_dim: int = EXACT_MAX_DIM,
    output_check: Callable[[Tensor], None] | None = None,
    vectorize: bool = True,
) -> TraceEstimate:
    """Trace of ∂f/∂x per sample, with one forward pass and one JVP (or VJP) per probe.

    Args:
        f: a per-sample map ``[B, ...] -> [B, ...]``.
        x: ``[B, ...]`` points.
        n_probes: Hutchinson probes K. ``None`` means the exact trace when the flattened dimension D
            is at most ``exact_max_dim`` and a single probe above it (FLIPD's cheap setting, usable at
            small σ; curves at larger σ want tens of probes).
        probe: ``"rademacher"`` (default) or ``"gaussian"``.
        generator: source of probes; ``None`` uses a fresh generator seeded with 0 on ``x``'s device.
        chunk_size: tangents per vmapped call; ``None`` bounds chunk × B × D by about 4M elements.
        mode: ``"reverse"`` (one forward, then vmapped VJPs) or ``"forward"`` (vmapped JVPs).
        exact_max_dim: the largest D traced exactly when ``n_probes`` is ``None``.
        output_check: called with f(x) before any Jacobian product (to validate shapes early).
        vectorize: batch the products of a chunk with ``vmap`` (default) or loop over them. Some layers
            refuse batched tangents (diffusers' GroupNorm path on CPU); the loop always works.

    Returns:
        A :class:`TraceEstimate`.
    """
    dim = x[0].numel()
    exact = n_probes is None and dim <= exact_max_dim
    n_vectors = dim if exact else (n_probes or 1)
    if chunk_size is None:
        chunk_size = max(1, min(n_vectors, _TANGENT_ELEMENTS_PER_CHUNK // max(1, x.numel())))
    starts = range(0, n_vectors, chunk_size)  # basis chunks are built lazily, one at a time
    if exact:
        tangents: Iterable[Tensor] = (_basis_chunk(s, min(s + chunk_size, n_vectors), x) for s in starts)
    else:
        if generator is None:
            generator = torch.Generator(device=x.device).manual_seed(0)
        probes = draw_probes(n_vectors, x, probe, generator)
        tangents = probes.split(chunk_size)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    check = output_check or (lambda output: None)
    forms_of = _reverse_forms if mode == "reverse" else _forward_forms
    output, chunks = forms_of(f, x, tangents, acc, check, vectorize)
    forms = torch.cat(chunks)  # [K, B]
    if exact:
        return TraceEstimate(forms.sum(0), None, output, n_vectors, True)
    stderr = forms.std(0, correction=1) / n_vectors**0.5 if n_vectors > 1 else None
    return TraceEstimate(forms.mean(0), stderr, output, n_vectors, False)
