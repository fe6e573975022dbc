"""Remedies for memorization: duplicate groups and weights (DD-Mem), the LID penalty (OD-Mem)."""

from .duplicate_groups import DuplicateGroups, downweight, duplicate_weights, find_duplicate_groups, weighted_loss
from .penalty import REDUCTIONS, lid_penalty, penalty_on_rows
from .schedules import AdaptiveDuplicateWeights, PenaltySchedule
from .weighted_sampler import DistributedWeightedSampler

__all__ = [
    "REDUCTIONS", "AdaptiveDuplicateWeights", "DistributedWeightedSampler", "PenaltySchedule", "DuplicateGroups", "downweight", "duplicate_weights",
    "find_duplicate_groups", "lid_penalty", "penalty_on_rows", "weighted_loss",
]
