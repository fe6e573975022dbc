"""Constructors that name the common model families: one call turns a trained network into D(x; σ)."""

from __future__ import annotations

from typing import Any, Callable

from .denoisers import EDMDenoiser, NetworkDenoiser
from .schedules import (
    DiscreteVPSchedule,
    FlowMatchingSchedule,
    LinearVPSchedule,
    RectifiedFlowSchedule,
    VESchedule,
)

__all__ = [
    "diffusers_denoiser",
    "vp_denoiser",
    "ve_denoiser",
    "edm_denoiser",
    "rectified_flow_denoiser",
    "flow_matching_denoiser",
]

_DIFFUSION_PREDICTIONS = ("epsilon", "v_prediction", "sample")


def diffusers_denoiser(model: Callable[..., Any], scheduler: Any, *, continuous_timesteps: bool = True,
                       **network_kwargs: Any) -> NetworkDenoiser:
    """A diffusers model (``UNet2DModel``, ``UNet2DConditionModel``, …) with its training scheduler.

    Schedulers with an ``alphas_cumprod`` table (DDPM, DDIM, Euler, DPM-Solver, …) are read as a
    discrete VP schedule with ``scheduler.config.prediction_type``; FlowMatch schedulers (no ᾱ table)
    as rectified flow with data at t = 0 and network time t·``num_train_timesteps``.

    Args:
        model: called as ``model(sample, timestep, **network_kwargs)``. For a DDP/accelerate/compile-wrapped
            model pass ``mmh_train.raw_network(model)``, which leaves the training model as it is (never
            ``accelerator.unwrap_model(model, keep_fp32_wrapper=False)``: it strips accelerate's
            mixed-precision wrapper from the model for good).
        scheduler: the diffusers scheduler the model was trained with.
        continuous_timesteps: pass fractional timesteps for the exact σ (default) or snap σ to the
            scheduler's integer timesteps.
        **network_kwargs: e.g. ``class_labels=labels`` or ``encoder_hidden_states=emb``.
    """
    config = getattr(scheduler, "config", None)
    if config is None:
        raise TypeError(f"scheduler must be a diffusers scheduler with a .config; got {type(scheduler).__name__}.")
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
    if alphas_cumprod is not None:
        prediction_type = config.get("prediction_type", "epsilon")
        if prediction_type not in _DIFFUSION_PREDICTIONS:
            raise ValueError(f"{type(scheduler).__name__}.config.prediction_type={prediction_type!r} is not "
                             f"supported; mmh_train reads {', '.join(map(repr, _DIFFUSION_PREDICTIONS))}. "
                             f"Set the scheduler's prediction_type to the one the model was trained with.")
        schedule = DiscreteVPSchedule(alphas_cumprod, continuous=continuous_timesteps)
        return NetworkDenoiser(model, schedule, prediction_type, network_kwargs)
    if "FlowMatch" in type(scheduler).__name__:
        schedule = RectifiedFlowSchedule(time_scale=float(config.get("num_train_timesteps", 1000)))
        return NetworkDenoiser(model, schedule, "velocity", network_kwargs)
    raise TypeError(f"{type(scheduler).__name__} has neither an alphas_cumprod table nor a FlowMatch type; "
                    f"wrap the model with vp_denoiser, ve_denoiser, edm_denoiser or a flow constructor instead.")


def vp_denoiser(model: Callable[..., Any], *, prediction_type: str = "epsilon", beta_min: float = 0.1,
                beta_max: float = 20.0, time_scale: float = 1.0, **network_kwargs: Any) -> NetworkDenoiser:
    """A continuous-time VP model ``model(y, t)`` with linear β on t ∈ [0, 1] (times ``time_scale``)."""
    schedule = LinearVPSchedule(beta_min, beta_max, time_scale=time_scale)
    return NetworkDenoiser(model, schedule, prediction_type, network_kwargs)


def ve_denoiser(model: Callable[..., Any], *, prediction_type: str = "sample", time: str = "sigma",
                **network_kwargs: Any) -> NetworkDenoiser:
    """A VE model ``model(x + σε, t(σ))`` predicting x0 (``"sample"``) or ε (``"epsilon"``)."""
    if prediction_type not in ("sample", "epsilon"):
        raise ValueError(f"a VE model predicts 'sample' or 'epsilon'; got prediction_type={prediction_type!r}.")
    return NetworkDenoiser(model, VESchedule(time), prediction_type, network_kwargs)


def edm_denoiser(model: Callable[..., Any], *, sigma_data: float = 0.5, **network_kwargs: Any) -> EDMDenoiser:
    """A raw EDM network F with Karras et al.'s preconditioning around it."""
    return EDMDenoiser(model, sigma_data, network_kwargs)


def rectified_flow_denoiser(model: Callable[..., Any], *, time_scale: float = 1.0,
                            **network_kwargs: Any) -> NetworkDenoiser:
    """Velocity model ``model(x_t, t)`` with x_t = (1 − t)·x0 + t·ε, v = ε − x0 (data at t = 0)."""
    return NetworkDenoiser(model, RectifiedFlowSchedule(time_scale=time_scale), "velocity", network_kwargs)


def flow_matching_denoiser(model: Callable[..., Any], *, time_scale: float = 1.0,
                           **network_kwargs: Any) -> NetworkDenoiser:
    """Velocity model ``model(x_t, t)`` with x_t = t·x1 + (1 − t)·ε, v = x1 − ε (data at t = 1)."""
    return NetworkDenoiser(model, FlowMatchingSchedule(time_scale=time_scale), "velocity", network_kwargs)
