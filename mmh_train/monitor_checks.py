"""The monitor's arguments, checked before any work: numbers, noise levels, the labelling rule, options.

Each check raises an error that names the fix; nothing here reads the data beyond one item per set.
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Any

import torch

from ._checks import check_positive_int
from .memorization import classify_memorization
from .probes import InputFn, gather_points
from .verdicts import check_verdict_options

__all__ = ["HELDOUT_NULL_OPTIONS", "check_sigma_argument", "check_numbers", "check_estimator", "resolve_rule",
           "check_options", "check_heldout_shape"]


def check_sigma_argument(sigma: Any) -> list[float]:
    """The noise levels asked for: ``[]`` for ``"auto"`` (chosen from the data later), else finite and > 0."""
    if isinstance(sigma, str) and sigma != "auto":
        raise ValueError(f"sigma={sigma!r} is not known; pass 'auto' (fractions of the training set's spacing) "
                         f"or one or more noise levels > 0.")
    if isinstance(sigma, str):
        return []
    sigmas = [float(s) for s in (sigma if isinstance(sigma, (list, tuple)) else [sigma])]
    if not sigmas or any(not (math.isfinite(s) and s > 0) for s in sigmas):
        raise ValueError(f"sigma must be 'auto' or one or more finite noise levels > 0; got {sigma!r}.")
    return sigmas


def check_numbers(*, every_n_steps: int | None, every_n_epochs: int | None, n_train_probes: int | None,
                  n_heldout_probes: int | None, max_probes_per_check: int | None, batch_size: int, early_checks: int,
                  max_seconds_per_check: float | None, max_fraction_of_training: float | None) -> None:
    """Counts are integers ≥ 1 (or None where optional); budgets are positive and finite."""
    for name, value in (("every_n_steps", every_n_steps), ("every_n_epochs", every_n_epochs),
                        ("n_train_probes", n_train_probes), ("n_heldout_probes", n_heldout_probes),
                        ("max_probes_per_check", max_probes_per_check)):
        check_positive_int(value, name, allow_none=True)
    check_positive_int(batch_size, "batch_size")
    check_positive_int(early_checks, "early_checks")
    if max_seconds_per_check is not None and not (max_seconds_per_check > 0 and math.isfinite(max_seconds_per_check)):
        raise ValueError(f"max_seconds_per_check must be a finite number of seconds > 0; got {max_seconds_per_check!r}.")
    if max_fraction_of_training is not None and not 0 < max_fraction_of_training <= 1:
        raise ValueError(f"max_fraction_of_training must lie in (0, 1] (0.03 means 3% of training time); got "
                         f"{max_fraction_of_training!r}.")


def check_estimator(estimator: Any, known: dict[str, Any]) -> None:
    """A known estimator name or a callable."""
    if isinstance(estimator, str) and estimator not in known:
        raise ValueError(f"estimator={estimator!r} is not known; choose one of {sorted(known)} or pass a callable.")
    if not isinstance(estimator, str) and not callable(estimator):
        raise TypeError(f"estimator must be a name or a callable; got {type(estimator).__name__}.")


def resolve_rule(reference: Any, heldout_data: Any, n_held_probes: int, n_train: int,
                 reference_options: dict[str, Any] | None) -> tuple[str, Any, dict[str, Any]]:
    """Which rule labels the probes: ``("heldout_null", "heldout_null", survey options)`` or ``("reference",
    the reference, {})``. ``"auto"`` is the held-out null when there are at least 2 held-out probes."""
    if isinstance(reference, str) and reference in ("heldout", "heldout_null") and heldout_data is None:
        raise ValueError(f"reference={reference!r} needs heldout_data; pass held-out points or use reference='data'.")
    if isinstance(reference, str) and reference == "heldout_null" and n_held_probes < 2:
        raise ValueError(f"reference='heldout_null' compares each held-out probe with its nearest others, so it "
                         f"needs at least 2 held-out probes; got {n_held_probes}. Pass n_heldout_probes ≥ 2 (or "
                         f"None for up to 64) or more held-out data.")
    auto = isinstance(reference, str) and reference == "auto"
    if auto:
        reference = "heldout_null" if heldout_data is not None and n_held_probes >= 2 else "data"
    rule = "heldout_null" if isinstance(reference, str) and reference == "heldout_null" else "reference"
    survey_options = dict(reference_options or {}) if rule == "heldout_null" else {}
    if set(survey_options) - {"near_ratio"}:
        raise TypeError(f"reference_options {sorted(set(survey_options) - {'near_ratio'})} do not apply to "
                        f"reference='heldout_null'; it takes 'near_ratio'.")
    k = (reference_options or {}).get("k", 20)
    if isinstance(reference, str) and reference == "data" and k >= n_train:
        if auto and "k" not in (reference_options or {}):  # the user set nothing: say what the data lack
            raise ValueError(f"{n_train} training points and {n_held_probes} held-out points are too few to label "
                             f"memorization: the labels compare each training point with held-out points near it "
                             f"(at least 2 held-out, 16 or more for labels that are not chance) or, without "
                             f"held-out data, with its {k} nearest training neighbours. Hold out more points (e.g. "
                             f"10 % of a set of 160 or more), or pass reference=None to watch LID without labels.")
        if n_train < 3:
            raise ValueError(f"reference='data' estimates LID* from neighbours and needs at least 3 training points; "
                             f"got {n_train}. Pass more data, or reference=None.")
        raise ValueError(f"reference='data' estimates LID* from k={k} neighbours but the training set has "
                         f"{n_train} points; pass reference_options={{'k': {max(2, n_train // 3)}}} or more data.")
    return rule, reference, survey_options


#: label_options of the held-out rule (:func:`~mmh_train.verdicts.calibrated_labels`).
HELDOUT_NULL_OPTIONS = ("k", "scale_k", "fdr", "min_drop", "min_spreads", "standardise", "combine", "size_at")


def check_options(function: Any, estimator: Any, estimator_options: dict[str, Any] | None,
                   label_options: dict[str, Any] | None, rule: str) -> None:
    """Refuses option names the estimator or the labelling does not take, before the first check."""
    if rule == "heldout_null":
        labelling = set(HELDOUT_NULL_OPTIONS)
    else:
        labelling = set(inspect.signature(classify_memorization).parameters) - {"lid_model", "lid_ref", "detect_dd"}
    unknown = sorted(set(label_options or {}) - labelling)
    if unknown:
        raise ValueError(f"label_options has unknown key(s) {unknown} for the {rule!r} rule; valid keys: "
                         f"{sorted(labelling)}.")
    if rule == "heldout_null":
        check_verdict_options(**(label_options or {}))
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # a callable without an introspectable signature: its own call will tell
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = set(parameters) - {"denoiser", "x", "sigma", "generator"}
    unknown = sorted(set(estimator_options or {}) - accepted)
    if unknown:
        name = estimator if isinstance(estimator, str) else getattr(estimator, "__name__", "the estimator")
        raise ValueError(f"estimator_options has unknown key(s) {unknown} for {name}; valid keys: {sorted(accepted)}.")


def check_heldout_shape(train_data: Any, heldout_data: Any, input_fn: InputFn | None) -> None:
    """Held-out points live in the training data's space (one item of each is read)."""
    if heldout_data is None or not len(heldout_data) or not len(train_data):
        return
    first_train = gather_points(train_data, torch.zeros(1, dtype=torch.long), input_fn)
    first_held = gather_points(heldout_data, torch.zeros(1, dtype=torch.long), input_fn)
    if first_train.shape[1:] != first_held.shape[1:]:
        raise ValueError(f"held-out points have shape {tuple(first_held.shape[1:])} but training points "
                         f"have {tuple(first_train.shape[1:])}; pass held-out data in the training data's "
                         f"space (same resolution, channels and preprocessing).")


#: Fewer held-out probes than this make the held-out null's spread unreliable: the monitor warns.
MIN_HELDOUT_PROBES = 16


def warn_few_heldout(rule: str, n_heldout_probes: int) -> None:
    """Warns when the held-out null rests on fewer than :data:`MIN_HELDOUT_PROBES` probes."""
    if rule == "heldout_null" and n_heldout_probes < MIN_HELDOUT_PROBES:
        warnings.warn(f"the verdicts compare each training probe with held-out probes, and only {n_heldout_probes} "
                      f"are held out: the null's spread is then underestimated and labels come by chance (an "
                      f"untrained UNet with 5 held-out images got 46% of its training images labelled). Hold out at "
                      f"least {MIN_HELDOUT_PROBES} points (64 by default).", RuntimeWarning, stacklevel=3)


#: What :meth:`MemorizationMonitor.load_state_dict` needs (``nonfinite`` is optional).
STATE_KEYS = ("train_index", "heldout_index", "sigmas", "seed", "history", "steps", "epochs", "pointer",
              "seconds_per_point", "reference")


def check_state_keys(state: dict[str, Any]) -> None:
    """A monitor state of the known version with every key it needs, or an error that says what is wrong."""
    if not isinstance(state, dict) or state.get("version") != 1:
        version = state.get("version") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"unknown monitor state version {version!r}; pass what MemorizationMonitor.state_dict() "
                         f"returned.")
    missing = [key for key in STATE_KEYS if key not in state]
    if missing:
        raise ValueError(f"the monitor state lacks {', '.join(missing)}: it is truncated or not a state of "
                         f"MemorizationMonitor.state_dict(); resume from a complete checkpoint.")


def check_not_empty(n_train: int) -> int:
    """The training set's size, refused when empty (before any pass over the data)."""
    if n_train == 0:
        raise ValueError("train_data is empty: the monitor watches training points; pass the training set (a "
                         "tensor [N, ...] or a dataset with N ≥ 2 items).")
    return n_train
