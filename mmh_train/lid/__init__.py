"""LID estimators: FLIPD, normal bundle, decoder Jacobian rank, the closed-form memorizer, LID*."""

from .closed_form import MemorizerDenoiser, memorizer_flipd
from .curve import FlipdCurve, default_sigma_grid, flipd_at_knee, flipd_curve, knee_index
from .decoder_rank import decoder_jacobian_lid, decoder_singular_values
from .flipd import FlipdEstimate, flipd, flipd_estimate, flipd_from_denoiser_terms
from .normal_bundle import normal_bundle_lid, normal_dimension_from_singular_values
from .reference import reference_lid

__all__ = [
    "FlipdCurve", "FlipdEstimate", "MemorizerDenoiser", "decoder_jacobian_lid", "decoder_singular_values",
    "default_sigma_grid", "flipd", "flipd_at_knee", "flipd_curve", "flipd_estimate", "flipd_from_denoiser_terms",
    "knee_index", "memorizer_flipd", "normal_bundle_lid", "normal_dimension_from_singular_values", "reference_lid",
]
