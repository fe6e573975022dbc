"""Lightning callbacks over the pure-torch core (installed as ``mmh_train.callbacks``).

Each callback configures one part of the module's :class:`~mmh_train.MemorizationGuard` (:func:`guard_of`)
and translates Lightning's hooks into its calls; the guard is the one runtime, shared with plain loops.
"""

from .duplicate_reweighting import DuplicateReweighting
from .early_stopping import MemorizationEarlyStopping
from .lid_monitor import LIDMonitor
from .mixin import MemorizationMixin
from .penalty_controller import LIDPenaltyController
from .runtime import guard_of

__all__ = ["DuplicateReweighting", "LIDMonitor", "LIDPenaltyController", "MemorizationEarlyStopping",
           "MemorizationMixin", "guard_of"]
