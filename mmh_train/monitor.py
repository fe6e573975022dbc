"""The framework-free memorization monitor: LID_θ of fixed probe points, tracked while a model trains.

The monitor holds a probe set of training points and one of held-out points, chosen once by dataset
index with its own seeded generator. At its cadence it measures LID_θ (FLIPD by default) on them, keeps
a dense per-sample history (probe × check), compares the latest values with each training probe's
reference LID*, and labels OD/DD memorization. Lightning callbacks and plain-loop hooks are thin
adapters over it.

A check changes nothing in training: estimators restore modes, grad and autocast; probe noise comes from
generators seeded by (seed, check, batch), never from the global RNG; dataset items are read with the
global RNGs preserved.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from .check_result import CheckResult
from .distributed import DistributedOps, default_ops
from .lid.flipd import NonFiniteLIDWarning, flipd
from .lid.normal_bundle import normal_bundle_lid
from .memorization import MemorizationLabels, classify_memorization, collapse_score
from .parameterizations import as_denoiser
from .probe_conditioning import ProbeConditioning
from .probes import InputFn, choose_probe_indices, dataset_size, derived_seed, gather_points, interleave
from .history import latest_measured
from .reference_choice import ReferenceLID
from .monitor_checks import (check_estimator, check_heldout_shape, check_not_empty, check_numbers, check_options,
                             check_sigma_argument, check_state_keys, resolve_rule, warn_few_heldout)
from .survey import DataSurvey, sigma_grid, survey_training_data
from .verdicts import calibrated_labels
from .views import comparison_view

__all__ = ["MemorizationMonitor", "CheckResult", "ESTIMATORS"]

Estimator = Callable[..., Tensor]
#: Inputs up to this flattened size get FLIPD's exact trace in the monitor; larger ones one Hutchinson probe.
MONITOR_EXACT_MAX_DIM = 64
#: Named estimators; any callable ``(denoiser, x, sigma, *, generator, **options) -> Tensor[B]`` works too.
ESTIMATORS: dict[str, Estimator] = {"flipd": flipd, "normal_bundle": normal_bundle_lid}


def _nanmean(x: Tensor) -> float:
    return float(x.nanmean()) if bool(torch.isfinite(x).any()) else math.nan


class MemorizationMonitor:
    """Measures LID_θ on fixed train/held-out probe sets during training and labels memorization.

    Args:
        train_data: the training set: a tensor ``[N, ...]`` or a map-style dataset (see ``input_fn``).
        heldout_data: held-out points from the same distribution, or ``None``.
        n_train_probes, n_heldout_probes: probe set sizes; ``None`` takes up to 128 training and 64
            held-out points (all of them in smaller sets). A number larger than the set is an error.
        sigma: one noise level or several; the first is primary (metrics, ``lid_train``). ``"auto"`` (default)
            takes three levels where the noise moves a point by 2.5, 1.6 and 0.95 × the training set's spacing δ
            (median distance of a training probe to its nearest distinct training point): σ = f·δ/√D.
        every_n_steps, every_n_epochs: cadence (``maybe_check``); default every epoch.
        estimator: ``"flipd"`` (default), ``"normal_bundle"`` or a callable
            ``(denoiser, x, sigma, *, generator, **options) -> Tensor[B]``.
        estimator_options: keyword arguments for the estimator (e.g. ``n_probes=4, precision="bf16"``).
            FLIPD defaults to the exact trace up to 64 dimensions and one Rademacher probe above.
        max_probes_per_check: budget in probe points; probes are measured in rotation when over it.
        max_seconds_per_check: budget in seconds, converted to points with the speed of earlier checks.
        max_fraction_of_training: budget as a fraction of the training time since the previous check
            (0.03: checks may cost 3% of training), converted to points likewise; averaged over ranks.
        reference: how training probes are labelled. ``"auto"`` (default): ``"heldout_null"`` when held-out
            data are given, else ``"data"``. ``"heldout_null"``: calibrated verdicts against the model's own
            LID_θ on nearby held-out probes at every σ (:func:`~mmh_train.verdicts.calibrated_labels`; Benjamini–
            Hochberg at ``fdr``), DD where the data duplicate the point (exact or near copies in the
            comparison view). The model-free rules compare LID_θ with a LID* and fixed margins: ``"data"``
            (``reference_lid`` over the training set, computed once), a tensor ``[N]`` of known LID per dataset
            index, ``"heldout"`` (the mean LID of each probe's nearest held-out probes); ``None``: no labels.
        reference_options: for ``"data"``: ``method``, ``k``, ``duplicate_radius``; for ``"heldout"``: ``k``;
            for ``"heldout_null"``: ``near_ratio`` (near-duplicate links, see :mod:`mmh_train.survey`).
        label_options: ``"heldout_null"``: ``k``, ``scale_k``, ``fdr``, ``min_drop``, ``min_spreads``,
            ``standardise``, ``combine``, ``size_at`` of ``calibrated_labels``; the model-free rules: ``od_margin``,
            ``relative``, ``dd_threshold`` of ``classify_memorization``.
        early_checks: checks averaged into each probe's own baseline for the collapse signal.
        batch_size: probes per estimator call.
        seed: seeds the probe choice and the estimator's noise.
        input_fn: maps a dataset item to its input tensor (default: the item, its first element, or a
            known dict key such as ``"x"``/``"pixel_values"``).
        distributed: collectives; default ``torch.distributed`` when initialized, else one process.
        conditioning: each training point's own condition for a conditional model, ``{keyword: [N, ...]}``
            per dataset index (``{"class_labels": labels}``, ``{"encoder_hidden_states": caption_embeddings}``);
            each probe batch is measured as LID_θ(x | c) with ``denoiser.bind(**rows)``.
            ``heldout_conditioning``: the same for the held-out points (needed with held-out data).
    """

    def __init__(self, train_data: Tensor | Sequence[Any], heldout_data: Tensor | Sequence[Any] | None = None, *,
                 n_train_probes: int | None = None, n_heldout_probes: int | None = None,
                 sigma: float | Sequence[float] | str = "auto", every_n_steps: int | None = None,
                 every_n_epochs: int | None = None, estimator: str | Estimator = "flipd",
                 estimator_options: dict[str, Any] | None = None, max_probes_per_check: int | None = None,
                 max_seconds_per_check: float | None = None, max_fraction_of_training: float | None = None,
                 reference: str | Tensor | None = "auto", reference_options: dict[str, Any] | None = None,
                 label_options: dict[str, Any] | None = None,
                 early_checks: int = 2, batch_size: int = 128, seed: int = 0, input_fn: InputFn | None = None,
                 distributed: DistributedOps | None = None, conditioning: dict[str, Tensor] | None = None,
                 heldout_conditioning: dict[str, Tensor] | None = None) -> None:
        n_train = check_not_empty(dataset_size(train_data))
        n_held = dataset_size(heldout_data) if heldout_data is not None else 0
        sigmas = check_sigma_argument(sigma)
        check_numbers(every_n_steps=every_n_steps, every_n_epochs=every_n_epochs, n_train_probes=n_train_probes,
                      n_heldout_probes=n_heldout_probes, max_probes_per_check=max_probes_per_check,
                      batch_size=batch_size, early_checks=early_checks, max_seconds_per_check=max_seconds_per_check,
                      max_fraction_of_training=max_fraction_of_training)
        check_estimator(estimator, ESTIMATORS)
        n_held_probes = min(n_held, n_heldout_probes or 64) if heldout_data is not None else 0
        self.rule, reference, survey_options = resolve_rule(reference, heldout_data, n_held_probes, n_train,
                                                            reference_options)
        self.reference = ReferenceLID(None if self.rule == "heldout_null" else reference,
                                      {} if self.rule == "heldout_null" else (reference_options or {}))
        generator = torch.Generator().manual_seed(seed)
        self.train_index = choose_probe_indices(n_train, n_train_probes or min(n_train, 128), generator,
                                                name="n_train_probes")
        self.heldout_index = (choose_probe_indices(n_held, n_heldout_probes or min(n_held, 64), generator,
                                                   name="n_heldout_probes")
                              if heldout_data is not None else torch.zeros(0, dtype=torch.long))
        check_options(ESTIMATORS.get(estimator) if isinstance(estimator, str) else estimator, estimator,
                      estimator_options, label_options, self.rule)
        check_heldout_shape(train_data, heldout_data, input_fn)
        self.conditioning = (ProbeConditioning(conditioning, heldout_conditioning, n_train=n_train, n_heldout=n_held,
                                               has_heldout=len(self.heldout_index) > 0)
                             if conditioning is not None else None)
        if self.conditioning is not None:
            self.conditioning.gather(self.train_index, self.heldout_index)
        elif heldout_conditioning is not None:
            raise ValueError("heldout_conditioning needs conditioning for the training points too.")
        warn_few_heldout(self.rule, len(self.heldout_index))
        self.train_data, self.heldout_data, self.input_fn = train_data, heldout_data, input_fn
        self.survey: DataSurvey | None = None
        self._survey_options = survey_options
        if self.rule == "heldout_null" or not sigmas:  # one pass over the data, before any training
            self.data_survey()
            if not sigmas:
                sigmas = sigma_grid(self.survey.spacing, self.survey.dim)
        self.sigmas, self.seed, self.batch_size, self.early_checks = sigmas, seed, batch_size, early_checks
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs if (every_n_epochs or every_n_steps) else 1
        self.estimator = ESTIMATORS[estimator] if isinstance(estimator, str) else estimator
        self.estimator_options = dict(estimator_options or {})
        if self.estimator is flipd:  # a monitor runs all training long: exact traces only for small inputs
            self.estimator_options.setdefault("exact_max_dim", MONITOR_EXACT_MAX_DIM)
        self.max_probes_per_check, self.max_seconds_per_check = max_probes_per_check, max_seconds_per_check
        self.max_fraction_of_training = max_fraction_of_training
        self._last_check_end: float | None = None
        self.label_options = dict(label_options or {})
        self.distributed = distributed
        self.order = interleave(len(self.train_index), len(self.heldout_index))
        # State saved by state_dict: the per-sample history and where the rotation stands.
        self.history: list[Tensor] = []  # one [S, P + Q] row per check, NaN where not measured
        self.nonfinite: list[Tensor] = []  # one bool [P + Q] row per check: measured, and not finite at some σ
        self.steps: list[int] = []
        self.epochs: list[int] = []
        self.pointer = 0
        self.seconds_per_point: float | None = None
        self._points: Tensor | None = None

    # ------------------------------------------------------------------ cadence
    def should_check(self, step: int, *, epoch: int | None = None, epoch_end: bool = False) -> bool:
        """Whether the cadence asks for a check at this step (or at the end of this epoch)."""
        if epoch_end:
            return self.every_n_epochs is not None and epoch is not None and (epoch + 1) % self.every_n_epochs == 0
        return self.every_n_steps is not None and step > 0 and step % self.every_n_steps == 0

    def maybe_check(self, denoiser: Any, step: int, *, epoch: int | None = None,
                    epoch_end: bool = False) -> CheckResult | None:
        """Runs :meth:`check` when :meth:`should_check` says so; every rank must call it at the same steps."""
        if not self.should_check(step, epoch=epoch, epoch_end=epoch_end) or step in self.steps:
            return None
        return self.check(denoiser, step, epoch=epoch)

    def data_survey(self) -> DataSurvey:
        """The one streamed pass over the training set (view, duplicate groups, spacing), made once; its groups
        are the ones the verdicts call DD and ``MemorizationGuard(weights="survey")`` reweights."""
        if self.survey is None:
            self.survey = survey_training_data(self.train_data, self.train_index, input_fn=self.input_fn,
                                               **self._survey_options)
        return self.survey

    # ------------------------------------------------------------------ measuring
    @property
    def labels_anything(self) -> bool:
        """Whether checks label points (a held-out null or a reference LID*), so remedies can act on them."""
        return self.rule == "heldout_null" or self.reference.kind is not None

    @property
    def n_probes(self) -> int:
        return len(self.train_index) + len(self.heldout_index)

    def points(self) -> Tensor:
        """Every probe's input, ``[P + Q, ...]`` on the CPU (train probes first), gathered once."""
        if self._points is None:
            parts = [gather_points(self.train_data, self.train_index, self.input_fn)]
            if self.heldout_data is not None and len(self.heldout_index):
                parts.append(gather_points(self.heldout_data, self.heldout_index, self.input_fn))
            self._points = torch.cat(parts)
        return self._points

    def _budget(self) -> int:
        """Probe points this check may measure: identical on every rank."""
        budget = min(self.n_probes, self.max_probes_per_check or self.n_probes)
        if self.max_seconds_per_check is None and self.max_fraction_of_training is None:
            return budget
        if self.seconds_per_point is None:  # first check: calibrate the speed on one batch per rank
            return min(budget, self.batch_size * self._ops().world_size)
        if self.max_seconds_per_check is not None:
            budget = min(budget, max(1, int(self.max_seconds_per_check / self.seconds_per_point)))
        if self.max_fraction_of_training is not None and self._last_check_end is not None:
            ops = self._ops()
            trained = time.perf_counter() - self._last_check_end  # training time since the last check
            trained = float(ops.all_reduce_sum(torch.tensor([trained], dtype=torch.float64))) / ops.world_size
            budget = min(budget, max(1, int(self.max_fraction_of_training * trained / self.seconds_per_point)))
        return budget

    def _ops(self) -> DistributedOps:
        return self.distributed or default_ops()

    def _measure(self, denoiser: Any, positions: Tensor, device: torch.device, check_index: int) -> tuple[Tensor, float]:
        """LID at ``positions`` for every σ: ``[S, P + Q]`` (NaN elsewhere), identical on every rank."""
        ops = self._ops()
        values = torch.zeros(len(self.sigmas), self.n_probes, dtype=torch.float64)
        counted = torch.zeros(self.n_probes, dtype=torch.float64)
        start, mine = time.perf_counter(), 0
        for b, batch in enumerate(positions.split(self.batch_size)):
            if b % ops.world_size != ops.rank:  # whole batches per rank: probes do not depend on the rank count
                continue
            x = self.points()[batch].to(device)
            den = self.conditioning.bind(denoiser, batch, device) if self.conditioning is not None else denoiser
            for s, sigma in enumerate(self.sigmas):
                generator = torch.Generator(device=device).manual_seed(derived_seed(self.seed, check_index, b, s))
                try:
                    with warnings.catch_warnings():  # the check's own warning below names the probes and the step
                        warnings.simplefilter("ignore", NonFiniteLIDWarning)
                        lid = self.estimator(den, x, sigma, generator=generator, **self.estimator_options)
                except (RuntimeError, ValueError, TypeError) as error:  # a shape the network cannot take
                    if self.conditioning is None:
                        raise
                    raise self.conditioning.explain(error, batch) from error
                values[s, batch] = lid.detach().to("cpu", torch.float64)
            counted[batch] = 1.0
            mine += len(batch)
        elapsed = time.perf_counter() - start
        values, counted = ops.all_reduce_sum(values), ops.all_reduce_sum(counted)
        mean_seconds = float(ops.all_reduce_sum(torch.tensor([elapsed], dtype=torch.float64))) / ops.world_size
        values[:, counted == 0] = math.nan
        per_rank_points = max(1.0, len(positions) / ops.world_size)
        return values, mean_seconds / per_rank_points

    def check(self, denoiser: Any, step: int, *, epoch: int | None = None) -> CheckResult:
        """Measures the next probes in rotation, records them, and returns the labels and metrics."""
        start = time.perf_counter()
        den = as_denoiser(denoiser)
        params = [p for m in den.modules() for p in m.parameters()]
        device = params[0].device if params else torch.device("cpu")
        count = self._budget()
        positions = self.order[(self.pointer + torch.arange(count)) % self.n_probes]
        values, seconds_per_point = self._measure(den, positions, device, len(self.history))
        self.pointer = (self.pointer + count) % self.n_probes
        self.seconds_per_point = seconds_per_point
        bad = torch.zeros(self.n_probes, dtype=torch.bool)
        bad[positions] = ~torch.isfinite(values[:, positions]).all(0)  # non-finite at any noise level
        if bool(bad.any()):
            P = len(self.train_index)
            warnings.warn(f"mmh_train monitor, step {step}: LID_θ is NaN or infinite for {int(bad.sum())} of {count} "
                          f"probes measured ({int(bad[:P].sum())} training, {int(bad[P:].sum())} held-out): the "
                          f"denoiser returned non-finite values, most likely because the model diverged. This "
                          f"check's metrics are NaN (check_finite stopping fires) and no earlier value of those "
                          f"probes is carried forward.", RuntimeWarning, stacklevel=2)
        values[:, bad] = math.nan  # every level of a bad probe: nothing of it is averaged or carried forward
        self.nonfinite.append(bad)
        self.history.append(values.float())
        self.steps.append(int(step))
        self.epochs.append(int(epoch) if epoch is not None else -1)
        self._last_check_end = time.perf_counter()
        return self.result(n_measured=count, seconds=self._last_check_end - start)

    # ------------------------------------------------------------------ reading the history
    def history_tensor(self) -> Tensor:
        """``[C, S, P + Q]`` LID per check, σ and probe (train probes first); NaN where not measured."""
        if not self.history:
            return torch.zeros(0, len(self.sigmas), self.n_probes)
        return torch.stack(self.history)

    def reference_lid(self) -> Tensor | None:
        """``[P]`` LID* of the training probes (computed once, then cached), or ``None``."""
        return self._reference_for_probes()

    def _reference_for_probes(self, latest: Tensor | None = None) -> Tensor | None:
        n = dataset_size(self.train_data)
        return self.reference.for_probes(train_index=self.train_index, probes=self.points(), n_train=n, latest=latest,
                                         training_points=lambda: gather_points(self.train_data, torch.arange(n),
                                                                               self.input_fn))

    def result(self, *, n_measured: int = 0, seconds: float = 0.0, at_step: int | None = None) -> CheckResult:
        """Labels and metrics from the history as it stands (primary σ).

        ``at_step`` reads them as they stood right after the check at that training step (e.g. the check
        whose weights early stopping restored); it must be the step of a recorded check.
        """
        if not self.history:
            raise RuntimeError("the monitor has not checked yet; call check() or maybe_check() first.")
        upto = len(self.history)
        if at_step is not None:
            if at_step not in self.steps:
                raise ValueError(f"at_step={at_step} is not the step of a check; the checks ran at steps "
                                 f"{self.steps}.")
            upto = len(self.steps) - self.steps[::-1].index(at_step)
        P = len(self.train_index)
        primary = self.history_tensor()[:upto, 0, :]
        latest = latest_measured(primary)
        bad = self.nonfinite[upto - 1] if len(self.nonfinite) >= upto else torch.zeros(self.n_probes, dtype=torch.bool)
        latest[bad] = math.nan  # a probe that just went non-finite keeps no earlier value
        lid_train, lid_heldout = latest[:P], latest[P:]
        reference = self._reference_for_probes(latest)
        # Held-out neighbours are never duplicates of a training point: that reference cannot show DD-Mem.
        options = {"detect_dd": self.reference.kind != "heldout", **self.label_options}
        # After a healthy check, a check where every probe went non-finite has nothing to label: its metrics
        # turn NaN below and stopping fires. On the first check the same is an error that names the causes.
        diverged = bool(bad.any()) and upto > 1 and not bool(torch.isfinite(lid_train).any())
        if self.rule == "heldout_null":
            labels = None if diverged else self._calibrated(upto, bad)
        else:
            labels = (classify_memorization(lid_train, reference, **options)
                      if reference is not None and not diverged else None)
        collapse = collapse_score(primary[:, :P], early_checks=self.early_checks)
        # A metric is absent (not NaN) where it does not apply or is not available yet, so that NaN keeps
        # meaning "the model produced NaN" for check_finite-style stopping.
        metrics = {"lid_train": _nanmean(lid_train)}
        if len(self.heldout_index):
            metrics["lid_heldout"] = _nanmean(lid_heldout)
            metrics["lid_gap"] = metrics["lid_heldout"] - metrics["lid_train"]
        if bool(torch.isfinite(collapse).any()):
            metrics["collapse"] = _nanmean(collapse)
        if (reference is not None or self.rule == "heldout_null") and (labels is None or labels.n_measured):
            # absent while no probe is measured yet (a rotation under a budget); NaN for a diverged model
            metrics["od_fraction"] = labels.fraction("od") if labels is not None else math.nan
            metrics["dd_fraction"] = labels.fraction("dd") if labels is not None else math.nan
        if bool(bad.any()):  # a diverged model: no metric of this check is a number
            metrics = {key: math.nan for key in metrics}
            collapse = torch.where(bad[:P], torch.full_like(collapse, math.nan), collapse)
        return CheckResult(step=self.steps[upto - 1], epoch=self.epochs[upto - 1], train_index=self.train_index,
                           lid_train=lid_train, heldout_index=self.heldout_index, lid_heldout=lid_heldout,
                           labels=labels, collapse=collapse, n_measured=n_measured, seconds=seconds, metrics=metrics)

    def _calibrated(self, upto: int, bad: Tensor) -> MemorizationLabels:
        """Held-out-null verdicts from the latest value of every probe at every σ, as of check ``upto``."""
        history = self.history_tensor()[:upto]  # [C, S, P + Q]
        latest = torch.stack([latest_measured(history[:, s, :]) for s in range(history.shape[1])])
        latest[:, bad] = math.nan
        P = len(self.train_index)
        if bool(bad.any()) and not bool(torch.isfinite(latest[:, :P]).any()):
            raise ValueError(f"every training probe's LID_θ is NaN or infinite at step {self.steps[upto - 1]} "
                             f"({int(bad.sum())} probes went non-finite): the denoiser returned non-finite "
                             f"values. Check the model (a diverged network), sigma and the precision.")
        view = self.view()
        return calibrated_labels(latest[:, :P], latest[:, P:], view[:P], view[P:],
                                 duplicated=self.survey.groups.duplicated[self.train_index], sigmas=self.sigmas,
                                 **self.label_options)

    def view(self) -> Tensor:
        """``[P + Q, F]`` the probes in the comparison view (train probes first), where "near" is measured."""
        parts = [self.survey.view[self.train_index]] if self.survey is not None else \
            [comparison_view(self.points()[: len(self.train_index)])]
        if len(self.heldout_index):
            parts.append(comparison_view(self.points()[len(self.train_index):]))
        return torch.cat(parts)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: probe indices (for verification), history, rotation, cached LID*."""
        nonfinite = torch.stack(self.nonfinite) if self.nonfinite else torch.zeros(0, self.n_probes, dtype=torch.bool)
        return {"version": 1, "train_index": self.train_index.clone(), "heldout_index": self.heldout_index.clone(),
                "sigmas": list(self.sigmas), "seed": self.seed, "history": self.history_tensor().clone(),
                "nonfinite": nonfinite, "steps": list(self.steps), "epochs": list(self.epochs), "pointer": self.pointer,
                "seconds_per_point": self.seconds_per_point, "reference": self.reference.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`; refuses a state made with other probes, σ or seed."""
        check_state_keys(state)
        same = (torch.equal(state["train_index"], self.train_index) and torch.equal(state["heldout_index"], self.heldout_index)
                and list(state["sigmas"]) == self.sigmas and state["seed"] == self.seed)
        if not same:
            raise ValueError("this monitor state was saved with other probe sets, sigma or seed; construct the "
                             "monitor with the same data, n_*_probes, sigma and seed as the run that saved it.")
        self.history = list(state["history"].unbind(0))
        nonfinite = state.get("nonfinite")  # absent in states saved before it was recorded
        self.nonfinite = (list(nonfinite.unbind(0)) if nonfinite is not None and len(nonfinite) == len(self.history)
                          else [torch.zeros(self.n_probes, dtype=torch.bool) for _ in self.history])
        self.steps, self.epochs = list(state["steps"]), list(state["epochs"])
        self.pointer, self.seconds_per_point = int(state["pointer"]), state["seconds_per_point"]
        self.reference.load_state_dict(state["reference"])
