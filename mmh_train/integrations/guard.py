"""MemorizationGuard: the one runtime of the monitor, the labels and the remedies.

Plain loops hold it themselves; the Lightning callbacks configure one per module and translate hooks.

    guard = MemorizationGuard(monitor, weights=..., stopper=MemorizationStopper(), restore_best_weights=True)
    accelerator.register_for_checkpointing(guard)
    for epoch in range(epochs):
        for step, (x0, _, index) in enumerate(guard.until_stopped(loader), start=1):   # stops when it says so
            loss = guard.weighted_loss(per_sample_loss, index) + guard.penalty(denoiser, x0, step, index)
            accelerator.backward(loss); optimizer.step(); optimizer.zero_grad()
            guard.maybe_check(denoiser, step)          # every rank, same steps (collectives inside)

``denoiser`` wraps the network as :func:`~mmh_train.raw_network` sees it:
``mmh_train.diffusers_denoiser(mmh_train.raw_network(model), noise_scheduler)``; it unwraps DDP and
``torch.compile`` and bypasses accelerate's mixed-precision wrapper without removing it from the model that
trains (``accelerator.unwrap_model(model, keep_fp32_wrapper=False)`` removes it for good: never use it here).
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar

import torch
from torch import Tensor

from ..audit import audit_csv
from ..data.indexed import check_indices
from ..distributed import DistributedOps, default_ops
from ..io import writable_file, writable_folder, write_text_atomic
from ..monitor import CheckResult, MemorizationMonitor
from ..parameterizations import as_denoiser
from ..probes import dataset_size, derived_seed
from ..remedies import AdaptiveDuplicateWeights, PenaltySchedule, penalty_on_rows, weighted_loss
from .best_weights import BestWeights
from .ema import check_ema, ema_weights_in
from .guard_checks import check_part_types, check_penalty_subset, check_step_order, check_stopper_and_weights
from .stopping import MemorizationStopper

__all__ = ["MemorizationGuard"]

T = TypeVar("T")
PARTS = ("monitor", "weights", "penalty", "stopper")
#: ``weights="survey"``: the factor on a duplicate group's weight once the monitor labels it DD.
SURVEY_DD_FACTOR = 0.5


class MemorizationGuard:
    """The monitor with its remedies; every part is optional and can be attached later (:meth:`attach`).

    Args:
        monitor: a :class:`~mmh_train.monitor.MemorizationMonitor`.
        weights: duplicate-aware per-sample weights (down-weighted further where the monitor labels DD), or
            ``"survey"``: the duplicate groups of the monitor's streamed survey of the data (the groups its DD
            verdicts use), each group weighing one sample and a DD-labelled group half of that.
        penalty: schedule of the LID penalty (its weight stays 0 until OD appears, unless always on).
        stopper: early stopping on one of the monitor's metrics.
        restore_best_weights: with a stopper, keep the weights of the best check (the latest healthy one, else
            the first best) and load them back when the stopper stops training. ``True``: one CPU copy (saved in the guard's state);
            a path: one file there instead. With ``ema`` both the networks and the EMA are kept and restored.
        ema: an EMA of the weights (diffusers' ``EMAModel`` over the denoiser's network): checks measure the
            EMA weights (swapped in for the check, swapped back bit for bit) and restoring loads the best ones
            into it, so a script that saves the EMA saves the best check.
        penalty_sigma, penalty_probes, penalty_subset: FLIPD settings inside the penalty; ``penalty_sigma=None``
            (default) takes the monitor's primary σ, where the per-point targets were measured.
        seed: the penalty's probes at each step come from a generator seeded by (``seed``, rank, step): different
            per rank, and the same after a resume with no generator state to save.
        audit_path: when given, the audit CSV (:meth:`write_audit`) is rewritten there after every check.
        distributed: collectives; default ``torch.distributed`` when initialized.
    """

    def __init__(self, monitor: MemorizationMonitor | None = None, *,
                 weights: AdaptiveDuplicateWeights | str | None = None,
                 penalty: PenaltySchedule | None = None, stopper: MemorizationStopper | None = None,
                 restore_best_weights: bool | str | os.PathLike = False, ema: Any | None = None,
                 penalty_sigma: float | None = None, penalty_probes: int = 1, penalty_subset: int | None = 16,
                 seed: int = 0, audit_path: str | os.PathLike | None = None,
                 distributed: DistributedOps | None = None) -> None:
        self._constructed = False  # attach() validates once the constructor's parts are all in
        self.monitor: MemorizationMonitor | None = None
        self.weights: AdaptiveDuplicateWeights | None = None
        self.schedule: PenaltySchedule | None = None
        self.stopper: MemorizationStopper | None = None
        self.best: BestWeights | None = None
        self.ema = ema
        self.penalty_sigma, self.penalty_probes, self.penalty_subset, self.seed = None, 1, 16, 0
        self.distributed = distributed
        self.audit_path = writable_file(audit_path, "audit_path", "audit.csv") if self.rank == 0 else audit_path
        self.denoiser: Any | None = None  # the denoiser of the latest check (the report samples it by default)
        self.seconds = 0.0  # wall time from the first maybe_check call to the latest check (the report's "train s")
        self._first_call: float | None = None
        check_part_types(weights=weights, penalty=penalty, stopper=stopper)
        if isinstance(weights, str):
            if weights != "survey" or monitor is None:
                raise ValueError(f"weights={weights!r}: pass AdaptiveDuplicateWeights(...), or 'survey' together with "
                                 f"a monitor (its survey's duplicate groups).")
            weights = AdaptiveDuplicateWeights(monitor.data_survey().groups, dd_factor=SURVEY_DD_FACTOR)
        self.should_stop = False
        self.restored_step: int | None = None
        self.last_result: CheckResult | None = None
        #: restore the best weights at the check that stops (plain loops); the Lightning adapter restores at
        #: the end of training instead (Lightning may train on after a stop, e.g. to reach ``min_steps``)
        self.restore_on_stop = True
        self.attach(monitor=monitor, weights=weights, penalty=penalty, stopper=stopper,
                    restore_best_weights=restore_best_weights, penalty_sigma=penalty_sigma,
                    penalty_probes=penalty_probes, penalty_subset=penalty_subset, seed=seed)
        self.seed = seed  # also without a penalty: the report's default sampler draws with it
        self._last_step: int | None = None
        self._constructed = True
        if monitor is not None:
            self.validate()

    # ------------------------------------------------------------------ configuration
    def attach(self, *, monitor: MemorizationMonitor | None = None, weights: AdaptiveDuplicateWeights | None = None,
               penalty: PenaltySchedule | None = None, stopper: MemorizationStopper | None = None,
               restore_best_weights: bool | str | os.PathLike = False, penalty_sigma: float | None = None,
               penalty_probes: int = 1, penalty_subset: int | None = 16, seed: int = 0) -> "MemorizationGuard":
        """Adds parts (the Lightning callbacks each attach theirs); a part already attached is an error."""
        if monitor is not None and not isinstance(monitor, MemorizationMonitor):
            raise TypeError(f"monitor must be a mmh_train.MemorizationMonitor; got {type(monitor).__name__}.")
        for name, new, old in (("monitor", monitor, self.monitor), ("weights", weights, self.weights),
                               ("penalty", penalty, self.schedule), ("stopper", stopper, self.stopper)):
            if new is not None and old is not None and new is not old:
                raise ValueError(f"this guard already has a {name}; one runtime holds one of each (two LIDMonitor "
                                 f"callbacks, or two of the same remedy, on one module?).")
        if monitor is not None:
            self.monitor = monitor
        if weights is not None:
            self.weights = weights
        if stopper is not None:
            self.stopper = stopper
        if penalty is not None:
            self.schedule = penalty
            self.penalty_sigma, self.penalty_probes, self.penalty_subset = penalty_sigma, penalty_probes, penalty_subset
            self.seed = seed
        if restore_best_weights is not False and (self.best is None or not self.best.kept_at(restore_best_weights)):
            self.best = BestWeights(restore_best_weights)
        if self.monitor is not None and self._constructed:
            self.validate()  # parts attached later are checked like the constructor's, before any work
        return self

    def validate(self) -> None:
        """Refuses, before any work, a combination of parts that cannot work; fills in what the monitor decides
        (the penalty's σ, the per-point penalty's size)."""
        m = self.monitor
        check_penalty_subset(self.penalty_subset)
        if self.best is not None and self.stopper is None:
            raise ValueError("restore_best_weights needs a stopper: pass stopper=MemorizationStopper(...).")
        if self.schedule is not None:
            if self.penalty_sigma is None:
                if m is None:
                    raise ValueError("the LID penalty takes its σ from the monitor's primary σ; add a monitor "
                                     "(LIDMonitor) or pass the penalty's sigma.")
                self.penalty_sigma = m.sigmas[0]
            if self.schedule.per_point:
                if m is None or not m.labels_anything:
                    raise ValueError("the per-point LID penalty acts on the points a monitor labels OD; add a monitor "
                                     "(LIDMonitor) that labels (held-out data, the default rule, or reference='data').")
                if not len(self.schedule.point_target):
                    self.schedule.set_points(dataset_size(m.train_data))
                if len(self.schedule.point_target) != dataset_size(m.train_data):
                    raise ValueError(f"the per-point penalty was built for {len(self.schedule.point_target)} points but "
                                     f"the monitor's training set has {dataset_size(m.train_data)}; pass "
                                     f"PenaltySchedule(per_point=True) and the guard sizes it.")
            if not self.schedule.per_point and self.schedule.target is None and (m is None or not m.labels_anything):
                raise ValueError("the global LID penalty with target=None takes its target from the monitor's LID*; "
                                 "monitor with reference='data' (LIDMonitor(..., reference='data')) or pass target=.")
        check_stopper_and_weights(m, self.stopper, self.weights)

    def _ops(self) -> DistributedOps:
        return self.distributed or default_ops()

    @property
    def rank(self) -> int:
        """This process's rank (0 in one process)."""
        return self._ops().rank

    # ------------------------------------------------------------------ checks
    def maybe_check(self, denoiser: Any, step: int, *, epoch: int | None = None, epoch_end: bool = False) -> CheckResult | None:
        """Runs the monitor at its cadence (on the EMA weights when given) and feeds the remedies and the stopper."""
        if self.monitor is None:
            raise RuntimeError("this guard has no monitor: MemorizationGuard(monitor, ...) or add an LIDMonitor.")
        networks = as_denoiser(denoiser).modules()
        if self.best is not None and not networks:  # before any work
            raise TypeError("restore_best_weights needs a denoiser around an nn.Module (e.g. "
                            "mmh_train.diffusers_denoiser(unet, scheduler)); this one wraps a plain callable, "
                            "whose weights the guard cannot copy.")
        if self.ema is not None:
            check_ema(self.ema, networks)
        now = time.perf_counter()
        self._first_call = now if self._first_call is None else self._first_call
        self.denoiser = denoiser  # also after a resume with no check since: the report and the restore use it
        self._last_step = check_step_order(step, self._last_step)
        if not self.monitor.should_check(step, epoch=epoch, epoch_end=epoch_end) or step in self.monitor.steps:
            return None
        with ema_weights_in(self.ema, networks):
            result = self.monitor.check(denoiser, step, epoch=epoch)
        self.last_result = result
        self.seconds = now - self._first_call
        if self.weights is not None:
            self.weights.update(result)
        if self.schedule is not None:
            self.schedule.update(result)
        if self.stopper is not None and self.stopper.update(result.metrics, step, self._ops()):
            self.should_stop = True
        if self.best is not None:
            if self.stopper.improved:
                self.best.keep(networks, self.ema, step, rank=self._ops().rank)
            if self.should_stop and self.restore_on_stop and self.restored_step is None:
                self.restore_best()
        if self.audit_path is not None:
            self._write_audit_during_training()
        return result

    def _write_audit_during_training(self) -> None:
        """A failed audit write (a full disk) warns and is retried at the next check: losing a training run to a
        report file is the wrong trade. The final write (``final_check``, ``write_audit``) fails loudly."""
        try:
            self.write_audit(self.audit_path)
        except OSError as error:
            warnings.warn(f"could not write the audit table to {self.audit_path} ({type(error).__name__}: {error}); "
                          f"training goes on and the next check writes it again.", RuntimeWarning, stacklevel=3)

    def restore_best(self, denoiser: Any | None = None) -> int | None:
        """Loads the best check's weights into the networks (and the EMA) once training has stopped.

        Called at the stopping check in plain loops and at the end of training under Lightning; again after
        more training (it reloads). ``denoiser``: whose networks to load into (default: the latest seen).
        Returns the restored step, or None (nothing kept, or the stopper has not stopped).
        """
        if self.best is None or not self.should_stop or not self.best.available:
            return None
        denoiser = denoiser if denoiser is not None else self.denoiser
        if denoiser is None:
            raise RuntimeError("restore_best needs the denoiser whose weights to load: pass it, "
                               "guard.restore_best(denoiser).")
        self._ops().all_reduce_sum(torch.zeros(1))  # every rank waits for rank 0's file
        self.best.restore(as_denoiser(denoiser).modules(), self.ema)
        self.restored_step = self.best.step
        return self.restored_step

    def until_stopped(self, iterable: Iterable[T]) -> Iterator[T]:
        """Yields from ``iterable`` until the guard says stop: ``for batch in guard.until_stopped(loader):``.

        In nested epoch/step loops later epochs then run empty, so the script's end-of-training code (saving
        the model) runs on the restored weights without further edits.
        """
        iterator = iter(iterable)
        try:
            while not self.should_stop:  # asked before the next batch is read, none is read in vain
                try:
                    item = next(iterator)
                except StopIteration:
                    return
                yield item
        finally:
            close = getattr(iterator, "close", None)
            if callable(close):
                close()

    def final_check(self) -> CheckResult | None:
        """Checks the final weights when training went on past the latest check or none ran (a run shorter than the
        cadence), unless early stopping restored a check; :meth:`write_report` calls it."""
        m = self.monitor
        if m is None or self.denoiser is None or self._last_step is None or self.should_stop:
            return None
        if m.steps and self._last_step <= m.steps[-1]:
            return None
        with ema_weights_in(self.ema, as_denoiser(self.denoiser).modules()):
            self.last_result = m.check(self.denoiser, self._last_step)
        if self.audit_path is not None:
            self.write_audit(self.audit_path)
        return self.last_result

    def write_audit(self, path: str | os.PathLike) -> Path:
        """Writes the per-sample audit table of the latest check to ``path`` (CSV, atomically; rank 0 only).

        One row per probe: its LID_θ at every check, the verdict (label, score, p-value, rule), whether the
        data duplicate it and its duplicate group (see :func:`mmh_train.audit.audit_csv`). Call it after
        ``maybe_check`` returned a result, e.g. ``if guard.maybe_check(den, step): guard.write_audit(path)``.
        """
        if self.last_result is None or self.monitor is None:
            raise RuntimeError("no check has run yet: call guard.maybe_check(...) first; the audit table is "
                               "the per-sample record of the checks.")
        path = Path(path)
        if self._ops().rank == 0:
            groups = self.weights.groups.group if self.weights is not None else None
            write_text_atomic(path, audit_csv(self.monitor, self.last_result, groups))
        return path

    def write_report(self, out_dir: str | os.PathLike, *, train_data: Any, heldout_data: Any = None,
                     sampler: Any = None, denoiser: Any = None, n_samples: int = 256, **options: Any) -> Path:
        """Writes the run's report (plots, tables, samples next to their nearest training points; rank 0 only).

        ``sampler``: ``n -> [n, ...]`` samples in the data's space, or the samples themselves; default: the
        library's ODE sampler (:func:`mmh_train.sampling.sample`) on ``denoiser`` (default: the one the latest
        ``maybe_check`` call saw), with the EMA weights swapped in when the guard watches an EMA. Other arguments: see
        :func:`mmh_train.report.write_guard_report`.
        """
        from ..report.from_guard import default_sampler, write_guard_report  # matplotlib only for a report

        if self.rank == 0:  # before the final check's work
            writable_folder(out_dir, "write_report's out_dir")
        self.final_check()
        if sampler is None:
            sampler = default_sampler(self, denoiser if denoiser is not None else self.denoiser)
        options.setdefault("seconds", self.seconds)
        return write_guard_report(out_dir, self, sampler=sampler, train_data=train_data, heldout_data=heldout_data,
                                  n_samples=n_samples, **options)

    # ------------------------------------------------------------------ the loss
    def weighted_loss(self, per_sample_loss: Tensor, indices: Tensor | None) -> Tensor:
        """Σ w[index]·loss / B with the duplicate weights; the plain mean without them."""
        if self.weights is None:
            return per_sample_loss.mean()
        indices = check_indices(indices, len(self.weights.weights), allow_repeats=True)
        w = self.weights.weights.to(per_sample_loss.device)[indices.to(per_sample_loss.device)]
        return weighted_loss(per_sample_loss, w.to(per_sample_loss.dtype))

    def penalty_weight(self, step: int) -> float:
        """The penalty's weight at ``step`` (0 without a penalty or before it switches on)."""
        return self.schedule.weight(step) if self.schedule is not None else 0.0

    def penalty(self, denoiser: Any, x: Tensor, step: int, indices: Tensor | None = None) -> Tensor:
        """weight(step) · LID penalty on the batch ``x`` (``[B, ...]``); exactly 0 (no extra work) while off.

        A per-point schedule (``PenaltySchedule(n_points=N)``) acts only on the rows whose dataset index
        (``indices [B]``) the monitor labelled OD, each with its own target at the σ that decided it; a
        global one on every row at ``penalty_sigma``.
        """
        if self.schedule is not None and self.schedule.per_point and indices is None:  # before any point is flagged
            raise ValueError("the per-point LID penalty needs the batch's dataset indices: call "
                             "guard.penalty(denoiser, x0, step, indices=index) (wrap the dataset in "
                             "mmh_train.data.IndexedDataset), or build PenaltySchedule without n_points.")
        weight = self.penalty_weight(step)
        if weight == 0.0:
            return torch.zeros((), device=x.device, dtype=x.dtype)
        if self.penalty_sigma is None:
            self.validate()
        generator = torch.Generator(device=x.device).manual_seed(derived_seed(self.seed, self._ops().rank, step))
        if indices is not None:
            indices = check_indices(indices, len(self.schedule.point_target) if self.schedule.per_point else None,
                                    allow_repeats=True)
        rows, target, sigma = self.schedule.targets_for(indices, x.shape[0])
        return penalty_on_rows(denoiser, x, self.penalty_sigma if sigma is None else sigma, rows, target, weight,
                               n_probes=self.penalty_probes, subset=self.penalty_subset, generator=generator)

    # ------------------------------------------------------------------ state
    def part_state(self, part: str) -> dict[str, Any] | None:
        """The state of one part (``"monitor"``, ``"weights"``, ``"penalty"``, ``"stopper"``); None if absent."""
        if part == "monitor":
            return self.monitor.state_dict() if self.monitor is not None else None
        if part == "weights":
            return self.weights.state_dict() if self.weights is not None else None
        if part == "penalty":
            return self.schedule.state_dict() if self.schedule is not None else None
        if part == "stopper":
            if self.stopper is None:
                return None
            return {**self.stopper.state_dict(), "should_stop": self.should_stop, "restored_step": self.restored_step,
                    "best_weights": self.best.state_dict() if self.best is not None else None}
        raise KeyError(f"unknown part {part!r}; one of {PARTS}.")

    def load_part_state(self, part: str, state: dict[str, Any] | None) -> None:
        """Restores :meth:`part_state` into the attached part (nothing when either side is absent)."""
        if state is None:
            return
        if part == "monitor" and self.monitor is not None:
            self.monitor.load_state_dict(state)
            if self.monitor.history:
                self.last_result = self.monitor.result()
        elif part == "weights" and self.weights is not None:
            self.weights.load_state_dict(state)
        elif part == "penalty" and self.schedule is not None:
            if self.schedule.per_point and not len(self.schedule.point_target):
                self.validate()  # the per-point size comes from the monitor
            self.schedule.load_state_dict(state)
        elif part == "stopper" and self.stopper is not None:
            self.stopper.load_state_dict(state)
            self.should_stop, self.restored_step = state["should_stop"], state["restored_step"]
            if self.best is not None and state.get("best_weights") is not None:
                self.best.load_state_dict(state["best_weights"])

    def state_dict(self) -> dict[str, Any]:
        """Everything to resume (for ``accelerator.register_for_checkpointing``)."""
        return {part: self.part_state(part) for part in PARTS}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        attached = {"monitor": self.monitor, "weights": self.weights, "penalty": self.schedule, "stopper": self.stopper}
        dropped = [part for part in PARTS if state.get(part) is not None and attached[part] is None]
        if dropped:
            warnings.warn(f"the guard state holds the {', '.join(dropped)} state of the run that saved it, but this "
                          f"guard has no {' or '.join(dropped)}: that state is not restored. Build the guard with the "
                          f"same parts as the run that saved it to continue it.", RuntimeWarning, stacklevel=2)
        for part in PARTS:
            self.load_part_state(part, state.get(part))

