"""Lightning callbacks over the pure-torch core (installed as ``mmh_train.callbacks``)."""

from .duplicate_reweighting import DuplicateReweighting
from .early_stopping import MemorizationEarlyStopping
from .lid_monitor import LIDMonitor
from .mixin import MemorizationMixin
from .penalty_controller import LIDPenaltyController

__all__ = ["DuplicateReweighting", "LIDMonitor", "LIDPenaltyController", "MemorizationEarlyStopping",
           "MemorizationMixin"]
