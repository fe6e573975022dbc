"""mmh_train: watch a diffusion or flow model's local intrinsic dimension while it trains.

The core is pure torch. Every model is seen as one VE denoiser D(x; σ)
(:mod:`mmh_train.parameterizations`); the Jacobian engine (:mod:`mmh_train.jacobian`) traces ∂D/∂x;
the estimators (:mod:`mmh_train.lid`) turn that into LID_θ(x) and compare with the data's LID*(x).
"""

from .lid import (
    MemorizerDenoiser,
    decoder_jacobian_lid,
    flipd,
    flipd_at_knee,
    flipd_curve,
    flipd_estimate,
    memorizer_flipd,
    normal_bundle_lid,
    reference_lid,
)
from .copies import CopyReport, detect_copies, nearest_neighbour_ratio
from .memorized import MemorizedPoints, memorized_points
from .integrations import MemorizationGuard, MemorizationStopper, raw_network
from .memorization import LABEL_NAMES, MemorizationLabels, classify_memorization, collapse_score
from .monitor import CheckResult, MemorizationMonitor
from .parameterizations import (
    Denoiser,
    as_denoiser,
    diffusers_denoiser,
    edm_denoiser,
    flow_matching_denoiser,
    rectified_flow_denoiser,
    ve_denoiser,
    vp_denoiser,
)

__version__ = "0.1.0"

__all__ = [
    "LABEL_NAMES", "CheckResult", "CopyReport", "MemorizationGuard", "MemorizationLabels", "MemorizationMonitor",
    "MemorizationStopper", "MemorizedPoints", "memorized_points", "classify_memorization", "collapse_score", "detect_copies", "nearest_neighbour_ratio",
    "Denoiser", "MemorizerDenoiser", "as_denoiser", "decoder_jacobian_lid", "diffusers_denoiser", "edm_denoiser",
    "flipd", "flipd_at_knee", "flipd_curve", "flipd_estimate", "flow_matching_denoiser", "memorizer_flipd",
    "normal_bundle_lid", "raw_network", "rectified_flow_denoiser", "reference_lid", "ve_denoiser", "vp_denoiser",
]
