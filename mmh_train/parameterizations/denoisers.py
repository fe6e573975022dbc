"""Every model as one VE denoiser D(x; σ) ≈ E[x0 | x0 + σε = x] (science.md §2).

The estimators only ever call ``denoiser(x, sigma)`` with ``x: [B, ...]`` and ``sigma: [B]``
(float64). The wrappers here turn a network trained under any schedule and prediction type into that
callable, keep the schedule maths in float64, and tell the estimators which ``nn.Module``\\ s they must
put in eval mode (and restore afterwards).
"""

from __future__ import annotations

import copy
import functools
import inspect
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from .conversions import (
    broadcast_to_batch,
    epsilon_to_denoiser,
    sample_to_denoiser,
    v_prediction_to_denoiser,
)
from .schedules import FlowMatchingSchedule, RectifiedFlowSchedule, Schedule

__all__ = [
    "Denoiser",
    "CallableDenoiser",
    "NetworkDenoiser",
    "EDMDenoiser",
    "as_denoiser",
    "PREDICTION_TYPES",
]

#: Prediction types a :class:`NetworkDenoiser` understands. ``velocity`` needs a flow schedule.
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "velocity")


def network_output_tensor(output: Any) -> Tensor:
    """The tensor inside a network's output: diffusers' ``.sample``, the first of a tuple, or itself."""
    if isinstance(output, Tensor):
        return output
    if hasattr(output, "sample") and isinstance(output.sample, Tensor):
        return output.sample
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(f"the network returned {type(output).__name__}; expected a Tensor, a tuple whose first "
                    f"item is a Tensor, or an object with a .sample Tensor (diffusers' output classes).")


class Denoiser:
    """Base class of every denoiser: ``D(x [B, ...], sigma [B]) -> x0_hat [B, ...]``.

    Subclasses implement :meth:`__call__`. :meth:`modules` lists the networks whose train/eval mode the
    estimators manage; :meth:`check_sigma` and :meth:`snap_sigma` expose the schedule's σ range.
    """

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        raise NotImplementedError

    def modules(self) -> list[nn.Module]:
        """The ``nn.Module``\\ s evaluated by this denoiser."""
        return []

    def check_sigma(self, sigma: Tensor) -> None:
        """Raises ``ValueError`` when a float64 ``sigma [B]`` cannot be represented."""

    def snap_sigma(self, sigma: Tensor) -> Tensor:
        """The noise level actually evaluated for a request (identity unless the schedule is discrete)."""
        return sigma


class CallableDenoiser(Denoiser):
    """Any callable ``fn(x [B, ...], sigma [B]) -> x0_hat [B, ...]`` used as is.

    ``sigma`` reaches ``fn`` as a tensor of shape ``[B]`` in ``x``'s dtype (float32 for half inputs).
    When ``fn`` is an ``nn.Module`` or a bound method of one, that module's mode is managed.
    """

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor]) -> None:
        if not callable(fn):
            raise TypeError(f"a denoiser must be callable as denoiser(x, sigma); got {type(fn).__name__}.")
        self.fn = fn

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        dtype = x.dtype if x.dtype == torch.float64 else torch.float32
        return self.fn(x, sigma.to(device=x.device, dtype=dtype))

    def modules(self) -> list[nn.Module]:
        return modules_inside(self.fn)


class NetworkDenoiser(Denoiser):
    """A network ``net(y, t, **kwargs)`` trained on y = a·x0 + b·ε, seen as the VE denoiser D(x; σ).

    For each requested σ the schedule gives (a, b, t) in float64; the network receives y = a·x and
    t; its output (cast back to ``x``'s dtype, so a bf16 network still combines in fp32) is turned into
    x̂0 by the prediction type's conversion (science.md §2).

    Args:
        network: the model; called as ``network(y, t, **network_kwargs)``. Its output may be a
            tensor, a tuple or a diffusers output object.
        schedule: a :class:`~mmh_train.parameterizations.schedules.Schedule`.
        prediction_type: one of :data:`PREDICTION_TYPES`.
        network_kwargs: extra keyword arguments for every call, e.g. ``class_labels`` or
            ``encoder_hidden_states`` (per-sample tensors must have the batch's length).
    """

    def __init__(self, network: Callable[..., Any], schedule: Schedule, prediction_type: str = "epsilon",
                 network_kwargs: dict[str, Any] | None = None) -> None:
        if not callable(network):
            raise TypeError(f"network must be callable as network(y, t); got {type(network).__name__}.")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type={prediction_type!r} is not supported; choose one of "
                             f"{', '.join(map(repr, PREDICTION_TYPES))}.")
        is_flow = isinstance(schedule, (RectifiedFlowSchedule, FlowMatchingSchedule))
        if (prediction_type == "velocity") != is_flow:
            raise ValueError(f"prediction_type={prediction_type!r} does not fit {type(schedule).__name__}: "
                             f"flow schedules predict 'velocity'; diffusion schedules predict 'epsilon', "
                             f"'v_prediction' or 'sample'.")
        self.network = network
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.network_kwargs = dict(network_kwargs or {})

    def bind(self, **network_kwargs: Any) -> "NetworkDenoiser":
        """A copy that passes extra keyword arguments (e.g. ``class_labels=c``) to every network call."""
        bound = copy.copy(self)
        bound.network_kwargs = {**self.network_kwargs, **network_kwargs}
        return bound

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        level = self.schedule.level(torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1))
        y = broadcast_to_batch(level.a, x) * x
        time_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        t = level.t.to(time_dtype).expand(x.shape[0])
        out = network_output_tensor(self.network(y, t, **self.network_kwargs)).to(x.dtype)
        if self.prediction_type == "epsilon":
            return epsilon_to_denoiser(out, y, level.a, level.b)
        if self.prediction_type == "v_prediction":
            return v_prediction_to_denoiser(out, y, level.a, level.b)
        if self.prediction_type == "sample":
            return sample_to_denoiser(out)
        return self.schedule.velocity_to_denoiser(out, y, level)  # type: ignore[attr-defined]

    def modules(self) -> list[nn.Module]:
        return modules_inside(self.network)

    def check_sigma(self, sigma: Tensor) -> None:
        self.schedule.check_sigma(sigma)

    def snap_sigma(self, sigma: Tensor) -> Tensor:
        return self.schedule.snap_sigma(sigma)


class EDMDenoiser(Denoiser):
    """EDM preconditioning (Karras et al. 2022, Table 1): D(x; σ) = c_skip·x + c_out·F(c_in·x; c_noise).

    c_skip = σ_d² / (σ² + σ_d²), c_out = σ·σ_d / sqrt(σ² + σ_d²), c_in = 1 / sqrt(σ² + σ_d²),
    c_noise = ¼·ln σ; the raw network ``F(x_in, c_noise, **kwargs)`` is what was trained.
    """

    def __init__(self, network: Callable[..., Any], sigma_data: float = 0.5,
                 network_kwargs: dict[str, Any] | None = None) -> None:
        if not callable(network):
            raise TypeError(f"network must be callable as network(x_in, c_noise); got {type(network).__name__}.")
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0 (the data's standard deviation); got {sigma_data}.")
        self.network, self.sigma_data = network, float(sigma_data)
        self.network_kwargs = dict(network_kwargs or {})

    def bind(self, **network_kwargs: Any) -> "EDMDenoiser":
        """A copy that passes extra keyword arguments to every network call."""
        bound = copy.copy(self)
        bound.network_kwargs = {**self.network_kwargs, **network_kwargs}
        return bound

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1).expand(x.shape[0])
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)  # EDM eq. 7
        c_out = sigma * self.sigma_data / torch.sqrt(sigma**2 + sd2)
        c_in = torch.rsqrt(sigma**2 + sd2)
        c_noise = 0.25 * torch.log(sigma)
        time_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        f_x = self.network(broadcast_to_batch(c_in, x) * x, c_noise.to(time_dtype), **self.network_kwargs)
        return broadcast_to_batch(c_skip, x) * x + broadcast_to_batch(c_out, x) * network_output_tensor(f_x).to(x.dtype)

    def modules(self) -> list[nn.Module]:
        return modules_inside(self.network)


def _reachable_modules(root: Any, children: Callable[[Any], Iterable[Any]], max_depth: int = 3) -> list[nn.Module]:
    """The ``nn.Module``\\ s reached from ``root`` by following ``children(obj)`` (objects that are not
    modules), each object once, at most ``max_depth`` steps away."""
    found: list[nn.Module] = []
    seen: set[int] = set()

    def visit(obj: Any, depth: int) -> None:
        if id(obj) in seen or depth > max_depth:
            return
        seen.add(id(obj))
        if isinstance(obj, nn.Module):
            found.append(obj)
            return
        for child in children(obj):
            visit(child, depth + 1)

    visit(root, 0)
    return found


def _closure_children(obj: Any) -> Iterable[Any]:
    """What a callable holds: a partial's function and arguments, a bound method's owner, a closure's cells."""
    if isinstance(obj, functools.partial):
        yield from (obj.func, *obj.args, *obj.keywords.values())
    elif inspect.ismethod(obj):
        yield obj.__self__
    elif inspect.isfunction(obj):
        for cell in obj.__closure__ or ():
            try:
                yield cell.cell_contents
            except ValueError:  # an empty cell
                continue


def _code_names(code: Any) -> set[str]:
    """Every global name a code object (and the code nested in it) reads."""
    nested = [c for c in code.co_consts if inspect.iscode(c)]
    return set(code.co_names).union(*(_code_names(c) for c in nested))


def _global_children(obj: Any) -> Iterable[Any]:
    """What a function reads through global names (and a partial's function)."""
    if isinstance(obj, functools.partial):
        yield obj.func
    elif inspect.isfunction(obj):
        for name in sorted(_code_names(obj.__code__)):
            if name in obj.__globals__:
                yield obj.__globals__[name]


def modules_inside(fn: Any) -> list[nn.Module]:
    """The ``nn.Module``\\ s a callable evaluates, as far as they can be found without running it.

    The callable itself when it is a module; the owner of a bound method; the function and arguments of a
    ``functools.partial``; modules held in a function's closure (``lambda y, t: net(y, t)`` finds ``net``),
    recursively. The estimators switch what is found to eval mode for a call and restore it afterwards; a
    module reached only through a global name is not found.
    """
    return _reachable_modules(fn, _closure_children)


def modules_read_globally(fn: Any) -> list[nn.Module]:
    """The ``nn.Module``\\ s a plain function reads through global names (``def den(y, s): return net(y, s)`` at a
    script's top level finds ``net``), also through the global functions it calls; a few levels deep.

    Not used to manage train/eval mode (that stays with what :func:`modules_inside` finds); used to learn the
    network's dtype before a call and to keep its buffers unchanged by the estimators' own checks.
    """
    return _reachable_modules(getattr(fn, "fn", None) or getattr(fn, "network", None) or fn, _global_children)


def as_denoiser(denoiser: Any) -> Denoiser:
    """Returns ``denoiser`` if it already is a :class:`Denoiser`, else wraps a plain callable ``(x, sigma) -> x0``.

    A diffusers network (``UNet2DModel``, ``UNet2DConditionModel``, ...) is refused: it predicts ε, v or a velocity
    at its own timesteps, not a denoised point at a noise level, and needs its scheduler to become one.
    """
    if isinstance(denoiser, Denoiser):
        return denoiser
    if not callable(denoiser):
        raise TypeError(f"expected a denoiser, a callable (x [B, ...], sigma [B]) -> x0 [B, ...]; got "
                        f"{type(denoiser).__name__}.")
    if hasattr(denoiser, "config") and type(denoiser).__module__.startswith("diffusers"):
        raise TypeError(f"got the bare network {type(denoiser).__name__}; wrap it with its scheduler so that it "
                        f"denoises at a noise level: mmh_train.diffusers_denoiser(mmh_train.raw_network(model), "
                        f"noise_scheduler).")
    return CallableDenoiser(denoiser)
