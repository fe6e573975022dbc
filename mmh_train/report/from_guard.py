"""The report of a run in one call, from its guard (or monitor), its samples and its data.

    from mmh_train.report import write_guard_report
    write_guard_report("runs/x", guard, sampler=lambda n: pipeline_samples(n), train_data=train, heldout_data=held)

Everything a recipe's report shows: LID_θ over training, LID_θ against its reference, the verdicts, the
samples next to their nearest training points, the copy rate with its held-out control, quality, and what
each remedy did. The recipes build their reports through the same functions.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..copies import detect_copies
from ..neighbors import knn
from ..probes import dataset_size, gather_points
from ..quality import mmd_rbf, sliced_wasserstein
from .record import RunRecord, VariantResult
from .write import summary_text, write_report

__all__ = ["copy_control", "default_sampler", "guard_notes", "variant_from_monitor", "write_guard_report"]


def copy_control(train_x: Tensor, heldout_x: Tensor | None) -> Tensor | None:
    """The held-out points as the copy test's control, leaving out any that equal a training point (a folder may
    hold one image on both sides of a split); None when nothing is held out."""
    if heldout_x is None or not len(heldout_x):
        return None
    distance, _ = knn(train_x.flatten(1).float(), heldout_x.flatten(1).float(), 1)
    unseen = distance[:, 0] > 0
    return heldout_x[unseen] if bool(unseen.any()) else None


def guard_notes(guard: Any) -> dict[str, str]:
    """What each remedy of ``guard`` did, in words, for the report."""
    notes = {}
    if guard.weights is not None:
        groups = guard.weights.groups
        n_dup = int(groups.duplicated.sum())
        n_groups = int(groups.group[groups.duplicated].unique().numel())
        extra = (f"; {int(guard.weights.downweighted.sum())} points in DD-labelled groups down-weighted"
                 if guard.weights.dd_factor is not None else "")
        notes["reweighting"] = f"{n_groups} duplicate groups ({n_dup} points) weigh one sample each{extra}"
    schedule = guard.schedule
    if schedule is not None:
        step = guard.monitor.steps[-1] if guard.monitor is not None and guard.monitor.steps else 0
        if schedule.activated_at is None:
            notes["penalty"] = ("never switched on (no point labelled OD)" if schedule.per_point
                                else "never switched on (no OD above the threshold)")
        elif schedule.per_point:
            targets = schedule.point_target[torch.isfinite(schedule.point_target)]
            notes["penalty"] = (f"on from step {schedule.activated_at} for the {len(targets)} points labelled OD, each "
                                f"aimed at its held-out null (median {float(targets.median()):.2f}; weight "
                                f"{schedule.weight(step):g})")
        else:
            notes["penalty"] = (f"on from step {schedule.activated_at} (target LID {schedule.target:.2f}, weight "
                                f"{schedule.weight(step):g})")
    if guard.stopper is not None:
        notes["early_stopping"] = (guard.stopper.reason or "did not stop") + \
            (f"; best weights (step {guard.restored_step}) restored" if guard.restored_step is not None else "")
    return notes


def variant_from_monitor(name: str, monitor: Any, samples: Tensor, train_x: Tensor, heldout_x: Tensor | None, *,
                         notes: dict[str, str] | None = None, seconds: float = 0.0,
                         restored_step: int | None = None) -> VariantResult:
    """Packs the monitor's history, its verdicts, the samples' copies (with the held-out control) and quality.

    With ``restored_step`` (early stopping loaded that check's weights back) labels and metrics are read as
    they stood at that check, so that they describe the weights the samples come from.

    Args:
        samples: ``[M, ...]`` generated points, shaped like the training points ``train_x [N, ...]``.
        heldout_x: ``[H, ...]`` held-out points (the copy control and the quality reference), or None.
    """
    result = monitor.result(at_step=restored_step) if restored_step is not None else monitor.result()
    history = monitor.history_tensor()[:, 0, :]
    P = len(monitor.train_index)
    samples = samples.detach().cpu().float()
    reference = heldout_x if heldout_x is not None and len(heldout_x) else train_x
    copies = detect_copies(samples, train_x.float(), control=copy_control(train_x, heldout_x))
    quality = {"sliced_wasserstein": sliced_wasserstein(samples, reference.float()),
               "mmd": mmd_rbf(samples[:1000], reference[:1000].float())}
    labels = result.labels
    return VariantResult(
        name=name, steps=torch.tensor(monitor.steps), lid_train=history[:, :P], lid_heldout=history[:, P:],
        train_index=monitor.train_index, lid_ref=labels.lid_ref if labels else None,
        labels=labels.label if labels else None, od_gap=labels.od_gap if labels else None, samples=samples,
        copy_score=copies.score, copy_nearest=copies.nearest, copy_rate=copies.copy_rate, quality=quality,
        metrics=dict(result.metrics), remedies=dict(notes or {}), train_seconds=seconds,
        copy_control_rate=copies.control_rate, copy_excess_interval=copies.excess_interval,
        restored_step=restored_step, rule=labels.rule if labels else "reference",
        score=labels.score if labels else None)


def default_sampler(guard: Any, denoiser: Any) -> Callable[[int], Tensor]:
    """``n -> [n, ...]`` samples of ``denoiser`` by the library's ODE sampler (noise drawn on the CPU with the
    guard's seed), with the EMA weights swapped in when the guard watches an EMA."""
    from ..integrations.ema import ema_weights_in
    from ..parameterizations import as_denoiser
    from ..sampling import sample

    if denoiser is None:
        raise RuntimeError("the guard has seen no denoiser in this process (no maybe_check call since the start or "
                           "the resume): pass denoiser=... (or sampler=...) to write_report.")
    networks = as_denoiser(denoiser).modules()
    shape = tuple(guard.monitor.points().shape[1:])
    device = next((p.device for net in networks for p in net.parameters()), torch.device("cpu"))

    def sampler(n: int) -> Tensor:
        with ema_weights_in(guard.ema, networks):
            return sample(denoiser, (n, *shape), sigma_min=0.02, device=device,
                          generator=torch.Generator().manual_seed(guard.seed))

    return sampler


def _check_same_training_set(monitor: Any, train_x: Tensor) -> None:
    """The report's training set must be the one the monitor watched: its probes, read from it, match."""
    P = len(monitor.train_index)
    watched = monitor.points()[:P]
    if len(train_x) != dataset_size(monitor.train_data) or tuple(train_x.shape[1:]) != tuple(watched.shape[1:]):
        raise ValueError(f"train_data has shape {tuple(train_x.shape)} but the monitor watched "
                         f"{dataset_size(monitor.train_data)} points of shape {tuple(watched.shape[1:])}: pass the "
                         f"training set the monitor was built with.")
    if not torch.equal(train_x[monitor.train_index].float(), watched.float()):
        raise ValueError("train_data is not the set the monitor watched (its probes differ): pass the training set "
                         "the monitor was built with, so that copies and labels refer to the same points.")


def _points(data: Tensor | Sequence[Any] | None, input_fn: Any) -> Tensor | None:
    if data is None:
        return None
    return gather_points(data, torch.arange(dataset_size(data)), input_fn).float()


def write_guard_report(out_dir: str | os.PathLike, guard: Any, *, sampler: Callable[[int], Tensor] | Tensor,
                       train_data: Tensor | Sequence[Any], heldout_data: Tensor | Sequence[Any] | None = None,
                       n_samples: int = 256, name: str = "model", seconds: float = 0.0,
                       config: dict[str, Any] | None = None, audit_csv: str | None = None,
                       recipe: str | None = None) -> Path:
    """Writes ``report.md`` (with ``report.html``, plots and ``summary.txt``) for a guarded run; returns its path.

    Args:
        out_dir: the run folder.
        guard: a :class:`~mmh_train.MemorizationGuard` that has checked at least once (or a bare monitor).
        sampler: ``n -> [n, ...]`` samples of the trained model, in the space of the training points (decode
            latents first), or the samples themselves.
        train_data, heldout_data: the points the monitor watches (tensors or datasets, read like the monitor
            reads them); the held-out ones are the copy test's control.
        n_samples: how many samples to ask ``sampler`` for.
        name, seconds, config, audit_csv, recipe: how the report names and describes the run (``recipe``
            defaults to the script's name, e.g. ``train_unconditional``, or "plain loop").
    """
    monitor = getattr(guard, "monitor", guard)
    if monitor is None or not monitor.history:
        raise RuntimeError("the report reads the monitor's checks, and none has run yet: call guard.maybe_check(...) "
                           "during training (at least one check) before writing the report.")
    if getattr(guard, "rank", 0) != 0:
        return Path(out_dir) / "report.md"
    train_x = _points(train_data, monitor.input_fn)
    _check_same_training_set(monitor, train_x)
    heldout_x = _points(heldout_data, monitor.input_fn)
    samples = sampler(n_samples) if callable(sampler) else sampler
    if not isinstance(samples, Tensor) or tuple(samples.shape[1:]) != tuple(train_x.shape[1:]):
        got = tuple(samples.shape) if isinstance(samples, Tensor) else type(samples).__name__
        raise ValueError(f"the samples must be a tensor [n, {', '.join(map(str, train_x.shape[1:]))}] like the "
                         f"training points; got {got}. Decode latents to the data's space first.")
    notes = guard_notes(guard) if monitor is not guard else {}
    if audit_csv is None and getattr(guard, "audit_path", None) is not None:  # the audit the guard keeps writing
        if getattr(guard, "last_result", None) is not None:  # written again (a resume with no check since, or a
            guard.write_audit(guard.audit_path)                # write that failed during training): fails loudly
        audit_csv = os.path.relpath(Path(guard.audit_path).resolve(), Path(out_dir).resolve())
    restored = getattr(guard, "restored_step", None)
    variant = variant_from_monitor(name, monitor, samples, train_x, heldout_x, notes=notes, seconds=seconds,
                                   restored_step=restored)
    kind = "vectors" if train_x.dim() == 2 else "images"
    duplicated = monitor.survey.groups.duplicated if monitor.survey is not None else None
    record = RunRecord(recipe=recipe or _script_name(), kind=kind, config=dict(config or {}), train_x=train_x,
                       heldout_x=heldout_x if heldout_x is not None else train_x[:0], variants=[variant],
                       duplicated=duplicated if duplicated is not None and bool(duplicated.any()) else None,
                       machine=_machine(), command=" ".join(["python", *sys.argv]), audit_csv=audit_csv)
    path = write_report(out_dir, record)
    print(summary_text(record))
    return path


def _script_name() -> str:
    """The running script's name (``train_unconditional`` for ``python train_unconditional.py``), else "plain loop"."""
    stem = Path(sys.argv[0]).stem if sys.argv and sys.argv[0].endswith(".py") else ""
    return stem if stem and stem not in ("__main__", "ipykernel_launcher") else "plain loop"


def _machine() -> str:
    import platform

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.machine()} {os.cpu_count()} CPU cores ({torch.get_num_threads()} threads used), {gpu}, "
            f"torch {torch.__version__}")
