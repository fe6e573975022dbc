"""One :class:`~mmh_train.MemorizationGuard` per LightningModule and fit: where the callbacks meet.

Each callback attaches its part (the monitor, the duplicate weights, the penalty schedule, the stopper) to
the guard of the module it trains, and :class:`~mmh_train.callbacks.MemorizationMixin` calls the same guard
from ``training_step``. No callback looks for a sibling or writes attributes on the module: the registry
maps the module to its guard, weakly, and a new ``Trainer`` starts a fresh guard.
"""

from __future__ import annotations

import weakref
from typing import Any

from mmh_train.integrations import MemorizationGuard

__all__ = ["guard_of", "guard_for"]

_GUARDS: "weakref.WeakKeyDictionary[Any, tuple[weakref.ref, MemorizationGuard]]" = weakref.WeakKeyDictionary()


def guard_for(trainer: Any, pl_module: Any) -> MemorizationGuard:
    """The guard of ``pl_module`` in this fit, created on first use (a fresh one for a new trainer)."""
    entry = _GUARDS.get(pl_module)
    if entry is None or entry[0]() is not trainer:
        entry = (weakref.ref(trainer), MemorizationGuard())
        _GUARDS[pl_module] = entry
    return entry[1]


def guard_of(pl_module: Any) -> MemorizationGuard | None:
    """The guard the callbacks configured for ``pl_module`` in its current (or latest) fit; None when that fit has
    no memorization callback (a guard of an earlier fit never drives a later one)."""
    entry = _GUARDS.get(pl_module)
    if entry is None:
        return None
    try:
        trainer = pl_module.trainer
    except RuntimeError:  # not attached to a Trainer now: the latest fit's guard, for reading its results
        return entry[1]
    return entry[1] if entry[0]() is trainer else None
