"""Lightning callbacks over the pure-torch core (installed as ``mmh_train.callbacks``)."""

from .early_stopping import MemorizationEarlyStopping
from .lid_monitor import LIDMonitor

__all__ = ["LIDMonitor", "MemorizationEarlyStopping"]
