"""Every model as one VE denoiser D(x; σ) (science.md §2)."""

from .conversions import (
    denoiser_to_score,
    epsilon_to_denoiser,
    flow_matching_velocity_to_denoiser,
    rectified_flow_velocity_to_denoiser,
    sample_to_denoiser,
    v_prediction_to_denoiser,
)
from .denoisers import PREDICTION_TYPES, CallableDenoiser, Denoiser, EDMDenoiser, NetworkDenoiser, as_denoiser
from .factories import (
    diffusers_denoiser,
    edm_denoiser,
    flow_matching_denoiser,
    rectified_flow_denoiser,
    ve_denoiser,
    vp_denoiser,
)
from .schedules import (
    DiscreteVPSchedule,
    FlowMatchingSchedule,
    LinearVPSchedule,
    NoiseLevel,
    RectifiedFlowSchedule,
    Schedule,
    VESchedule,
)

__all__ = [
    "PREDICTION_TYPES", "CallableDenoiser", "Denoiser", "EDMDenoiser", "NetworkDenoiser", "as_denoiser",
    "diffusers_denoiser", "edm_denoiser", "flow_matching_denoiser", "rectified_flow_denoiser",
    "ve_denoiser", "vp_denoiser",
    "DiscreteVPSchedule", "FlowMatchingSchedule", "LinearVPSchedule", "NoiseLevel", "RectifiedFlowSchedule",
    "Schedule", "VESchedule",
    "denoiser_to_score", "epsilon_to_denoiser", "flow_matching_velocity_to_denoiser",
    "rectified_flow_velocity_to_denoiser", "sample_to_denoiser", "v_prediction_to_denoiser",
]
