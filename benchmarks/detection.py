"""Detection of memorized training points: mmh_train's per-point scores against a practitioner's baselines.

    python benchmarks/detection.py            # full run, 12 minutes on 2 busy shared CPU cores
    python benchmarks/detection.py --quick    # tiny sizes, well under a minute (the test runs this)

Controlled memorization on two data sets, the toy mixture (Gaussians on affine subspaces of dimensions
2, 4 and 8 in R^10, true LID known) and scikit-learn's digits (8×8, flattened to 64-d vectors), with a
``TimeMLP`` DDPM ε-model trained by the plain loop of ``benchmarks/_harness.py`` and watched by
:class:`mmh_train.MemorizationMonitor` (every training point is a probe, ``reference="data"``):

  (a) ``few``: a small training set (most points end up copied);
  (b) ``many``: a large one (few or none are copied);
  (a/b) ``mid``: a size in between, where part of the points are copied (chosen by size, before scoring);
  (a+b) ``pooled``: the points of (a) and (b) ranked together, each scored by its own model. (a) and (b)
      alone are nearly one-class ranking problems (AUROC is NaN where a class is empty); the pool is the
      fair two-class problem "which of these points, from either run, does its model copy?";
  (c) ``duplicated``: a medium training set in which a random subset is repeated m times; points are the
      originals, a duplicate group counts as copied when any member is;
  (d) ``conditional``: a class-conditional model (label dropout 0.1) in which a few chosen training points
      get a label of their own; each point is scored conditioned on its own label (unique or class), and
      its truth comes from samples drawn conditioned on the unique labels and on every class.

Ground truth per training point: ``mmh_train.memorized_points`` — the model's samples pile up within a
quarter of the point's spacing more often than control points do there (exact conditional binomial test,
Benjamini–Hochberg at 5 %, and at least twice the control's size-scaled count). The control is data no
model produced: fresh draws of the mixture (toy) or the digits not trained on, drawn with the same mix of
classes as the samples in the conditional scenario. A generalizing model triggers it on ≤ 1 % of points
whatever the piece's dimension, unlike the earlier truth "some sample's NN ratio < 1/3", which fired by
chance on ~11 % of the samples near 2-d pieces. The model draws ``per_point`` (200) samples per training
point (at least ``n_generate``; with a finite control, digits, as many as the control holds, where the
exact test has the most power); where the control is too small for that to show anything (digits,
large N) the run says so. Scores, higher = more memorized:

  mmh_train (from the monitor's last check; the monitor's defaults: σ from the spacing, held-out null):
    ``calibrated``    the verdicts' ranking score: mean relative drop of LID_θ below the held-out null;
    ``od_gap``        LID* − LID_θ with the model-free data reference (LPCA, k neighbours; the old rule's score);
    ``od_gap_rel``    (LID* − LID_θ) / max(LID*, 1), the relative gap;
    ``heldout_gap``   mean LID_θ of the 5 nearest held-out probes − LID_θ (the "heldout" reference);
    ``neg_lid``       −LID_θ;
    ``collapse``      the drop of LID_θ from the point's own early value (needs no reference).
  baselines:
    ``neg_loss``      −(per-sample denoising loss, 20 timesteps × 4 noises);
    ``neg_rel_loss``  −(that loss ÷ the per-timestep running mean of training; IET-AGC style);
    ``neg_nn_dist``   −(distance to the nearest generated sample), generated with another seed than the
                      ground-truth samples.
  context (no model; what the truth correlates with by construction, not counted in the goal):
    ``neg_lid_star``  −LID* (model-free): samples cover low-dimensional regions densely, so their points
                      are "copied" more easily;
    ``from_few_run``  (pooled only) 1 for points of the small run: run identity alone;
    ``is_duplicated`` (duplicated only) whether the point is one of the repeated ones.

The headline mmh_train score is ``calibrated``, the monitor's default verdicts' score (until 2026-12-02 it
was ``heldout_gap``, the same idea without σ levels or standardisation): it compares LID_θ(x) with what the
same model reads on nearby unseen points, so it flags OD and DD memorization alike and needs no true LID.
Every score is reported.

Metrics: AUROC and TPR at 1 % FPR per data set × scenario × score (toy: also within each piece of the
mixture, so that a piece's dimension cannot explain a ranking), and the precision and recall of the
monitor's DD and OD labels over every run against the truth "memorized and duplicated" (DD) and "memorized and not
duplicated" (OD). The sizes are chosen for the class balance of the truth, not for the scores.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor

import mmh_train
from mmh_train.data import affine_mixture, inject_duplicates, load_digits
from mmh_train.memorization import DD, OD

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling helpers, also when loaded by path
from _timing import benchmark_parser  # noqa: E402
import _harness as H  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "detection.json"

GOAL_AUROC_MIN = 0.95
GOAL_TPR_MIN = 0.5  # at 1 % FPR
GOAL_DD_OD_PRECISION_RECALL_MIN = 0.9

MMH_SCORES = ("calibrated", "od_gap", "od_gap_rel", "heldout_gap", "neg_lid", "collapse")
BASELINE_SCORES = ("neg_loss", "neg_rel_loss", "neg_nn_dist")
#: Scores that use no model at all, shown for context and not counted in the goal (what the truth
#: correlates with by construction): −LID* (low-dimensional regions are covered, hence "copied", more
#: easily), a point's run in the pool, and whether a point is duplicated.
CONTEXT_SCORES = ("neg_lid_star",)
SCORES = MMH_SCORES + BASELINE_SCORES + CONTEXT_SCORES
HEADLINE = "calibrated"
SCENARIOS = ("few", "many", "mid", "pooled", "duplicated", "conditional")


@dataclass
class DataConfig:
    """Sizes for one data set."""

    name: str
    few: int
    many: int
    mid: int
    dup_base: int
    dup_fraction: float
    dup_copies: int
    cond_n: int
    n_unique: int
    steps: int
    sigma: Optional[float]  # None: the monitor's default noise levels (fractions of the spacing)
    reference_k: int
    n_heldout: int
    width: int = 256
    n_probes: Optional[int] = None  # FLIPD Hutchinson probes in the monitor (None: its default)


@dataclass
class Config:
    seed: int = 0
    checks: int = 8  # monitor checks per run (every steps // checks steps)
    n_generate: int = 2000  # ground-truth samples per unconditional run (at least; see per_point)
    per_point: int = 200  # ground-truth samples per training point (20 left most memorized points unfound)
    max_generate: int = 40000  # at most this many ground-truth samples per run
    n_per_unique: int = 50  # ground-truth samples per unique label (conditional run)
    n_per_class: int = 200  # ground-truth samples per class (conditional run; at least, see per_point)
    heldout_k: int = 5  # held-out neighbours of the "heldout" reference
    data: list = field(default_factory=lambda: [
        DataConfig("toy", few=64, many=1024, mid=128, dup_base=256, dup_fraction=0.1, dup_copies=8, cond_n=512,
                   n_unique=10, steps=8000, sigma=None, reference_k=20, n_heldout=256),
        DataConfig("digits", few=32, many=512, mid=64, dup_base=128, dup_fraction=0.125, dup_copies=8, cond_n=128,
                   n_unique=10, steps=20000, sigma=None, reference_k=10, n_heldout=256),
        DataConfig("digits32", few=32, many=512, mid=64, dup_base=128, dup_fraction=0.125, dup_copies=8, cond_n=128,
                   n_unique=10, steps=20000, sigma=None, reference_k=10, n_heldout=256, n_probes=4),
    ])

    @classmethod
    def quick(cls) -> "Config":
        return cls(checks=3, n_generate=200, per_point=4, n_per_unique=10, n_per_class=20, data=[
            DataConfig("toy", few=24, many=96, mid=48, dup_base=48, dup_fraction=0.1, dup_copies=4, cond_n=48,
                       n_unique=3, steps=150, sigma=None, reference_k=8, n_heldout=32, width=64),
            DataConfig("digits", few=24, many=96, mid=48, dup_base=48, dup_fraction=0.1, dup_copies=4, cond_n=48,
                       n_unique=3, steps=150, sigma=None, reference_k=8, n_heldout=32, width=64),
            DataConfig("digits32", few=24, many=96, mid=48, dup_base=48, dup_fraction=0.1, dup_copies=4, cond_n=48,
                       n_unique=3, steps=150, sigma=None, reference_k=8, n_heldout=32, width=64, n_probes=1),
        ])


# ---------------------------------------------------------------- data
@dataclass
class Pool:
    """A data set's points (``[M, D]``), class labels and true LID (toy only), drawn once per seed; ``spec``
    draws fresh points of the toy mixture (None for digits)."""

    x: Tensor
    labels: Tensor
    num_classes: int
    lid: Optional[Tensor]
    spec: Any = None


def make_pool(dc: DataConfig, seed: int) -> Pool:
    g = torch.Generator().manual_seed(seed + 101)
    if dc.name == "toy":
        n = max(dc.few, dc.many, dc.mid, dc.dup_base, dc.cond_n) * 2 + dc.n_heldout
        sample = affine_mixture(n, dims=(2, 4, 8), ambient_dim=10, generator=g)
        order = torch.randperm(n, generator=g)  # mixed components, so any prefix is a fair draw
        return Pool(sample.x[order].float(), sample.component[order].long(), 3, sample.lid[order].float(), sample.spec)
    digits = load_digits(size=8)
    order = torch.randperm(len(digits), generator=g)
    images = digits.images[order].float()
    if dc.name == "digits32":  # a 32×32 image set: each digit upsampled (bilinear), flattened to 1024-d
        images = torch.nn.functional.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    return Pool(images.reshape(len(digits), -1), digits.labels[order].long(), 10, None)


def split(pool: Pool, dc: DataConfig) -> tuple[Tensor, Tensor]:
    """(held-out points, indices of the pool usable for training): the held-out set is the pool's tail."""
    heldout = pool.x[-dc.n_heldout:]
    return heldout, torch.arange(len(pool.x) - dc.n_heldout)


def make_control(pool: Pool, train_rows: Tensor, wanted: Tensor, seed: int) -> Tensor:
    """Points no model produced, for the ground truth: ``wanted[c]`` of class c, scaled down alike where the
    digits run short (so the classes keep the samples' proportions). Toy: fresh draws of the mixture; digits:
    pool images outside ``train_rows`` that equal no training image."""
    g = torch.Generator().manual_seed(seed + 404)
    if pool.spec is not None:
        fresh = pool.spec.sample(int(wanted.sum()) * 4 + 1000, generator=g)
        x, labels = fresh.x.float(), fresh.component
    else:
        rest = torch.ones(len(pool.x), dtype=torch.bool)
        rest[train_rows] = False
        x, labels = pool.x[rest], pool.labels[rest]
        unseen = torch.cdist(x, pool.x[train_rows]).min(1).values > 0  # no exact twin of a training image
        x, labels = x[unseen], labels[unseen]
        order = torch.randperm(len(x), generator=g)
        x, labels = x[order], labels[order]
    available = torch.bincount(labels, minlength=len(wanted))
    scale = min(1.0, min(float(available[c]) / float(wanted[c]) for c in range(len(wanted)) if wanted[c] > 0))
    picks = [torch.nonzero(labels == c).flatten()[:int(scale * float(wanted[c]))] for c in range(len(wanted))]
    return x[torch.cat(picks)]


def class_counts(labels: Tensor, num_classes: int) -> Tensor:
    return torch.bincount(labels, minlength=num_classes)


# ---------------------------------------------------------------- one run
def _label_lookup(points: Tensor, labels: Tensor) -> Callable[[Tensor], Tensor]:
    """Maps points (rows of ``points``, exactly) to their labels: how the monitor's estimator finds a probe's label."""

    def lookup(x: Tensor) -> Tensor:
        return labels[torch.cdist(x.float(), points.float()).argmin(1)]

    return lookup


def conditional_flipd(lookup: Callable[[Tensor], Tensor]) -> Callable[..., Tensor]:
    """A monitor estimator measuring LID_θ(x | c) with each point's own label c (found by ``lookup``)."""

    def estimator(denoiser: Any, x: Tensor, sigma: float, *, generator: Optional[torch.Generator] = None,
                  **options: Any) -> Tensor:
        return mmh_train.flipd(denoiser.bind(class_labels=lookup(x)), x, sigma, generator=generator, **options)

    return estimator


def nearest_distance(train: Tensor, generated: Tensor) -> Tensor:
    return torch.cdist(train.double(), generated.double()).min(1).values


def run_case(x: Tensor, heldout: Tensor, dc: DataConfig, cfg: Config, *, seed: int, control: Callable[[int], Tensor],
             labels: Optional[Tensor] = None, num_classes: Optional[int] = None,
             heldout_labels: Optional[Tensor] = None, sample_labels: Optional[Tensor] = None) -> dict[str, Any]:
    """Trains one model on ``x`` with the monitor and returns per-point scores (rows of ``x``), the truth
    and the monitor's labels. ``control(G)`` gives the control points for ``G`` unconditional samples
    (conditional runs bring their own, matched to ``sample_labels``). Conditional runs give ``labels`` (per
    row, possibly unique) and the labels to draw the ground-truth samples with (``sample_labels``)."""
    n = len(x)
    options: dict[str, Any] = {}
    if labels is not None:
        lookup = _label_lookup(torch.cat([x, heldout]), torch.cat([labels, heldout_labels]))
        options = {"estimator": conditional_flipd(lookup)}
    monitor = mmh_train.MemorizationMonitor(
        x, heldout, n_train_probes=n, n_heldout_probes=len(heldout), sigma=dc.sigma or "auto",
        every_n_steps=max(1, dc.steps // cfg.checks), seed=seed,  # the default rule: held-out null
        estimator_options={} if dc.n_probes is None else {"n_probes": dc.n_probes}, **options)
    trained = H.train_diffusion(x, steps=dc.steps, seed=seed, width=dc.width, guard=mmh_train.MemorizationGuard(monitor),
                                labels=labels, num_classes=num_classes)
    result = trained.checks[-1]

    # ground truth and the generated-sample baseline (an independent set)
    if sample_labels is None:
        n_truth = min(cfg.max_generate, max(cfg.n_generate, cfg.per_point * n))
        control_points = control(n_truth)
        if len(control_points) < n_truth:
            # a finite control (the unseen digits): the test's power peaks near as many samples as control
            # points (π = G/(G+M) = 1/2: 11 samples certify a point; at G = 7.5 M it takes 58), so draw that many
            n_truth = max(cfg.n_generate, len(control_points))
            control_points = control(n_truth)
        truth_samples = H.generate(trained, n_truth, seed=seed + 1000)
        other_samples = H.generate(trained, cfg.n_generate, seed=seed + 2000)
    else:
        truth_samples = H.generate(trained, len(sample_labels), seed=seed + 1000, class_labels=sample_labels)
        other_samples = H.generate(trained, len(sample_labels), seed=seed + 2000, class_labels=sample_labels)
        control_points = control(len(sample_labels))
    truth = H.memorized_truth(truth_samples, x, control_points)

    def per_row(values: Tensor) -> Tensor:
        out = torch.full((n,), math.nan, dtype=torch.float64)
        out[result.train_index] = values.double().cpu()
        return out

    lid = per_row(result.lid_train)
    # the model-free reference LID* (what reference="data" compares with), for the older scores
    ref = mmh_train.reference_lid(x, k=min(dc.reference_k, n - 1)).double()
    label = torch.zeros(n, dtype=torch.long)
    label[result.train_index] = result.labels.label.cpu()
    # the "heldout" reference: the model's own LID on each point's nearest held-out probes
    neighbours = torch.cdist(x.double(), heldout[monitor.heldout_index].double()).topk(
        min(cfg.heldout_k, len(monitor.heldout_index)), largest=False).indices
    held_ref = result.lid_heldout.double().cpu()[neighbours].nanmean(1)
    loss, rel = H.per_sample_loss(trained, x, labels=labels, seed=seed + 3000)
    scores = {
        "calibrated": per_row(result.labels.score),
        "od_gap": ref - lid,
        "od_gap_rel": (ref - lid) / ref.abs().clamp(min=1.0),
        "heldout_gap": held_ref - lid,
        "neg_lid": -lid,
        "collapse": per_row(result.collapse),
        "neg_loss": -loss,
        "neg_rel_loss": -rel,
        "neg_nn_dist": -nearest_distance(x, other_samples),
        "neg_lid_star": -ref,
    }
    return {"scores": scores, "copied": truth["memorized"], "truth": truth, "label": label, "lid": lid, "lid_ref": ref,
            "lid_heldout_mean": float(result.lid_heldout.nanmean()), "seconds": trained.seconds,
            "steps": trained.steps_done, "sigmas": list(monitor.sigmas),
            "duplicated": monitor.survey.groups.duplicated.clone()}


# ---------------------------------------------------------------- scenarios
def scenario_rows(dataset: str, scenario: str, scores: dict[str, Tensor], copied: Tensor, note: str) -> list[dict]:
    """One row per score in ``scores`` (the common ones, then any scenario-specific context score)."""
    rows = []
    for name in [*(k for k in SCORES if k in scores), *(k for k in scores if k not in SCORES)]:
        s = scores[name]
        ok = ~torch.isnan(s)
        s, pos = s[ok], copied[ok]
        rows.append({"dataset": dataset, "scenario": scenario, "score": name,
                     "kind": "mmh" if name in MMH_SCORES else "baseline" if name in BASELINE_SCORES else "context",
                     "headline": name == HEADLINE,
                     "n": int(ok.sum()), "n_copied": int(pos.sum()), "auroc": H.auroc(s, pos),
                     "tpr_at_1pct_fpr": H.tpr_at_fpr(s, pos, 0.01), "note": note})
    return rows


def point_record(run: dict[str, Any], rows: slice = slice(None), **extra: Tensor) -> dict[str, list]:
    """Per-point values of one run for the JSON (rounded), so that other scores can be studied afterwards."""
    def r(v: Tensor) -> list:
        return [None if math.isnan(a) else round(a, 4) for a in v[rows].double().tolist()]

    out = {"copied": run["copied"][rows].tolist(), "label": run["label"][rows].tolist(), "lid": r(run["lid"]),
           "lid_ref": r(run["lid_ref"])}
    out.update({k: r(v) for k, v in run["scores"].items()})
    out.update({k: v.tolist() for k, v in extra.items()})
    return out


def run_dataset(dc: DataConfig, cfg: Config, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    pool = make_pool(dc, seed)
    heldout, usable = split(pool, dc)

    def unconditional_control(rows: Tensor) -> Callable[[int], Tensor]:
        # every class of the data in its own proportion: the pool's class mix (its draws are random)
        share = class_counts(pool.labels, pool.num_classes).double() / len(pool.labels)
        return lambda g: make_control(pool, rows, (share * g).round().long(), seed)
    rows, runs, dd_od, points = [], {}, None, {}
    verdicts = []  # (monitor label, truth, duplicated in the data) per scored run, for label precision/recall

    def stratified(scenario: str, run: dict, piece: Optional[Tensor], rows_of: slice = slice(None)) -> None:
        """Toy only: AUROC within each piece of the mixture, so that a piece's dimension cannot explain it."""
        if piece is None:
            return
        for c in piece.unique().tolist():
            inside = piece == c
            sub = {k: v[rows_of][inside] for k, v in run["scores"].items() if k in MMH_SCORES + BASELINE_SCORES}
            rows.extend(scenario_rows(dc.name, f"{scenario}|piece{c}", sub, run["copied"][rows_of][inside],
                                      f"piece {c} of the mixture only"))

    def summary(name: str, run: dict, extra: str = "") -> None:
        c = run["copied"]
        t = run["truth"]
        log(f"  {dc.name:6s} {name:11s} N={len(c):5d}  memorized {int(c.sum()):4d} ({c.double().mean():.0%})  "
            f"copies {t['copy_rate']:.1%} / control {t['control_copy_rate']:.1%} / excess "
            f"{t['excess_copy_rate']:+.1%}  (G={t['n_samples']}, M={t['n_control']}, min count {t['min_count']})  "
            f"LID_θ train {run['lid'].nanmean():.2f} / held-out {run['lid_heldout_mean']:.2f} at σ {run['sigmas'][0]:.3g}  "
            f"train {run['seconds']:.0f} s{extra}")
        runs[name] = {"n": len(c), "n_copied": int(c.sum()), "sample_copy_rate": t["copy_rate"],
                      "control_copy_rate": t["control_copy_rate"], "excess_copy_rate": t["excess_copy_rate"],
                      "excess_interval": t["excess_interval"], "n_samples": t["n_samples"],
                      "n_control": t["n_control"], "min_count": t["min_count"],
                      "lid_train_mean": float(run["lid"].nanmean()), "lid_heldout_mean": run["lid_heldout_mean"],
                      "lid_ref_mean": float(run["lid_ref"].nanmean()), "train_seconds": round(run["seconds"], 1),
                      "steps": run["steps"]}

    # (a), (b) and their pool
    few = run_case(pool.x[usable[:dc.few]], heldout, dc, cfg, seed=seed, control=unconditional_control(usable[:dc.few]))
    summary("few", few)
    many = run_case(pool.x[usable[:dc.many]], heldout, dc, cfg, seed=seed,
                    control=unconditional_control(usable[:dc.many]))
    summary("many", many)
    mid = run_case(pool.x[usable[:dc.mid]], heldout, dc, cfg, seed=seed, control=unconditional_control(usable[:dc.mid]))
    summary("mid", mid)
    points["few"], points["many"], points["mid"] = point_record(few), point_record(many), point_record(mid)
    for run_, rows_ in ((few, usable[:dc.few]), (many, usable[:dc.many]), (mid, usable[:dc.mid])):
        verdicts.append((run_["label"], run_["copied"], run_["duplicated"]))
    if pool.spec is not None:
        stratified("few", few, pool.labels[usable[:dc.few]])
        stratified("mid", mid, pool.labels[usable[:dc.mid]])
    rows += scenario_rows(dc.name, "few", few["scores"], few["copied"], f"N={dc.few}")
    rows += scenario_rows(dc.name, "many", many["scores"], many["copied"], f"N={dc.many}")
    rows += scenario_rows(dc.name, "mid", mid["scores"], mid["copied"], f"N={dc.mid}, between few and many")
    pooled = {k: torch.cat([few["scores"][k], many["scores"][k]]) for k in SCORES}
    pooled["from_few_run"] = torch.cat([torch.ones(dc.few), torch.zeros(dc.many)]).double()  # run identity alone
    rows += scenario_rows(dc.name, "pooled", pooled, torch.cat([few["copied"], many["copied"]]),
                          f"points of few (N={dc.few}) and many (N={dc.many}), each scored by its own model")

    # (c) duplicated subset
    base = pool.x[usable[:dc.dup_base]]
    dup = inject_duplicates(base, fraction=dc.dup_fraction, copies=dc.dup_copies,
                            generator=torch.Generator().manual_seed(seed + 202))
    run = run_case(dup.x, heldout, dc, cfg, seed=seed, control=unconditional_control(usable[:dc.dup_base]))
    summary("duplicated", run)
    m = dup.num_original
    scores = {k: v[:m] for k, v in run["scores"].items()}
    copied, duplicated, label = run["copied"][:m], dup.duplicated[:m], run["label"][:m]
    scores["is_duplicated"] = duplicated.double()  # the data alone
    verdicts.append((run["label"], run["copied"], run["duplicated"]))
    if pool.spec is not None:
        stratified("duplicated", {"scores": scores, "copied": copied}, pool.labels[usable[:dc.dup_base]][:m])
    points["duplicated"] = point_record(run, slice(0, m), duplicated=duplicated)
    rows += scenario_rows(dc.name, "duplicated", scores, copied,
                          f"{m} originals, {int(duplicated.sum())} of them repeated {dc.dup_copies}x more")

    # (d) class-conditional with unique labels for a few points
    idx = usable[:dc.cond_n]
    x, cls = pool.x[idx], pool.labels[idx]
    chosen = torch.randperm(dc.cond_n, generator=torch.Generator().manual_seed(seed + 303))[:dc.n_unique]
    own = cls.clone()
    own[chosen] = pool.num_classes + torch.arange(dc.n_unique)
    num_classes = pool.num_classes + dc.n_unique
    n_per_class = min(cfg.max_generate // pool.num_classes,
                      max(cfg.n_per_class, math.ceil(cfg.per_point * dc.cond_n / pool.num_classes)))
    sample_labels = torch.cat([torch.arange(pool.num_classes).repeat_interleave(n_per_class),
                               (pool.num_classes + torch.arange(dc.n_unique)).repeat_interleave(cfg.n_per_unique)])
    heldout_labels = pool.labels[-dc.n_heldout:]
    # the control has the samples' class mix: each unique label's samples stand for its point's class
    wanted = class_counts(cls[chosen], pool.num_classes) * cfg.n_per_unique + n_per_class
    run = run_case(x, heldout, dc, cfg, seed=seed, labels=own, num_classes=num_classes,
                   heldout_labels=heldout_labels, sample_labels=sample_labels,
                   control=lambda g: make_control(pool, idx, wanted, seed))
    unique = torch.zeros(dc.cond_n, dtype=torch.bool)
    unique[chosen] = True
    summary("conditional", run, f"  (unique-label points copied {int((run['copied'] & unique).sum())}/{dc.n_unique})")
    points["conditional"] = point_record(run, unique_label=unique)
    rows += scenario_rows(dc.name, "conditional", run["scores"], run["copied"],
                          f"N={dc.cond_n}, {dc.n_unique} with a label of their own; scored given their own label")
    verdicts.append((run["label"], run["copied"], run["duplicated"]))
    # every scored training row of every run: DD = memorized and duplicated in the data, OD = memorized and not
    label = torch.cat([v[0] for v in verdicts])
    copied = torch.cat([v[1] for v in verdicts])
    duplicated = torch.cat([v[2] for v in verdicts])
    dd_p, dd_r = H.precision_recall(label == DD, copied & duplicated)
    od_p, od_r = H.precision_recall(label == OD, copied & ~duplicated)
    dd_od = {"dataset": dc.name, "n": len(label), "n_duplicated": int(duplicated.sum()),
             "truth_dd": int((copied & duplicated).sum()), "truth_od": int((copied & ~duplicated).sum()),
             "pred_dd": int((label == DD).sum()), "pred_od": int((label == OD).sum()),
             "dd_precision": dd_p, "dd_recall": dd_r, "od_precision": od_p, "od_recall": od_r}
    runs["conditional"]["unique_copied"] = int((run["copied"] & unique).sum())
    runs["conditional"]["unique_auroc_headline"] = H.auroc(run["scores"][HEADLINE], unique)
    return {"rows": rows, "runs": runs, "dd_od": dd_od, "points": points}


# ---------------------------------------------------------------- main
def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = benchmark_parser(__doc__, DEFAULT_OUT, "tiny sizes and a few hundred steps (the test runs this)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--datasets", default=None, help="comma-separated subset of toy,digits,digits32")
    p.add_argument("--sigma", action="append", default=[], metavar="DATASET=SIGMA",
                   help="the monitor's noise level for one data set, e.g. digits=0.15 (repeatable)")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    cfg = Config.quick() if args.quick else Config()
    cfg.seed = args.seed
    if args.datasets:
        wanted = {d.strip() for d in args.datasets.split(",")}
        cfg.data = [d for d in cfg.data if d.name in wanted]
    for item in args.sigma:
        name, _, value = item.partition("=")
        for dc in cfg.data:
            if dc.name == name.strip():
                dc.sigma = float(value)
    torch.set_num_threads(1)
    started = time.perf_counter()
    doc = H.start_output("detection", argv, [cfg.seed], asdict(cfg))
    doc["goals"] = {"auroc_min": GOAL_AUROC_MIN, "tpr_at_1pct_fpr_min": GOAL_TPR_MIN, "auroc_above_every_baseline": True,
                    "dd_od_precision_recall_min": GOAL_DD_OD_PRECISION_RECALL_MIN}
    doc["headline"] = HEADLINE
    print(f"model: TimeMLP DDPM ε-model, Adam lr 2e-3, batch 128; monitor: every point a probe, default options "
          f"(σ from the spacing, held-out null), checks every steps/{cfg.checks}; ground truth: memorized_points with "
          f"{cfg.per_point} samples per point (at most {cfg.max_generate})")
    rows, runs, dd_od, points = [], {}, [], {}
    with torch.random.fork_rng(devices=[]):  # nothing here draws from the global RNG; this keeps it so
        for dc in cfg.data:
            print(f"\n{dc.name}: {dc.steps} steps, σ = {dc.sigma or 'auto'}, reference k = {dc.reference_k}, "
                  f"{dc.n_heldout} held-out probes", flush=True)
            out = run_dataset(dc, cfg, cfg.seed, lambda s: print(s, flush=True))
            rows += out["rows"]
            runs[dc.name] = out["runs"]
            dd_od.append(out["dd_od"])
            points[dc.name] = out["points"]
    doc.update(rows=rows, runs=runs, dd_od=dd_od, points=points)

    print("\nAUROC and TPR at 1% FPR per point (higher score = more memorized; * = mmh_train's headline score; "
          "° = context: uses no model, not a goal baseline)")
    table = [{**r, "name": f"{r['dataset']}/{r['scenario']}", "score_name": r["score"] + ("*" if r["headline"] else "°" if r["kind"] == "context" else ""),
              "pos": f"{r['n_copied']}/{r['n']}"} for r in rows]
    H.print_table(table, [("name", "data/scenario", "s"), ("score_name", "score", "s"), ("pos", "copied", "s"),
                          ("auroc", "AUROC", ".3f"), ("tpr_at_1pct_fpr", "TPR@1%FPR", ".3f")])

    print("\nDD vs OD labels of the monitor (default rule: held-out null) on every training row of every run, against "
          "the truth: DD = memorized and duplicated in the data, OD = memorized and not duplicated")
    H.print_table(dd_od, [("dataset", "data", "s"), ("truth_dd", "true DD", "d"), ("pred_dd", "pred DD", "d"),
                          ("dd_precision", "DD prec", ".3f"), ("dd_recall", "DD rec", ".3f"),
                          ("truth_od", "true OD", "d"), ("pred_od", "pred OD", "d"),
                          ("od_precision", "OD prec", ".3f"), ("od_recall", "OD rec", ".3f")])

    goals = []
    for r in rows:
        if r["score"] != HEADLINE or "|" in r["scenario"]:
            continue
        best_baseline = max((q["auroc"] for q in rows if q["dataset"] == r["dataset"] and q["scenario"] == r["scenario"]
                             and q["kind"] == "baseline" and not math.isnan(q["auroc"])), default=math.nan)
        high = None if math.isnan(r["auroc"]) else bool(r["auroc"] >= GOAL_AUROC_MIN
                                                          and r["tpr_at_1pct_fpr"] >= GOAL_TPR_MIN)
        above = None if math.isnan(r["auroc"]) else bool(math.isnan(best_baseline) or r["auroc"] > best_baseline)
        goals.append({"dataset": r["dataset"], "scenario": r["scenario"], "auroc": r["auroc"], "tpr": r["tpr_at_1pct_fpr"],
                      "best_baseline_auroc": best_baseline, "auroc_at_least_goal": high,
                      "above_every_baseline": above, "met": None if high is None else high and above})
    for q in dd_od:
        values = [q[k] for k in ("dd_precision", "dd_recall", "od_precision", "od_recall")]
        # not measurable only when a true class is empty; nothing predicted (precision NaN) is a miss
        met = None if q["truth_dd"] == 0 or q["truth_od"] == 0 else \
            all(not math.isnan(v) and v >= GOAL_DD_OD_PRECISION_RECALL_MIN for v in values)
        goals.append({"dataset": q["dataset"], "scenario": "DD vs OD labels, every run", "met": met})
    doc["goal_status"] = goals
    print(f"\ngoals (headline score {HEADLINE}: AUROC ≥ {GOAL_AUROC_MIN}, TPR@1%FPR ≥ {GOAL_TPR_MIN} and AUROC above "
          f"every baseline; DD/OD precision "
          f"and recall ≥ {GOAL_DD_OD_PRECISION_RECALL_MIN}):")
    for q in goals:
        status = {True: "met", False: "MISSED", None: "not measurable (one class empty)"}[q["met"]]
        extra = ""
        if "auroc" in q and q["met"] is not None:
            below = "below" if q["above_every_baseline"] else "not below"
            extra = (f"  AUROC {q['auroc']:.3f}, TPR {q['tpr']:.2f} ({'≥' if q['auroc_at_least_goal'] else '<'} goals), best "
                     f"baseline {q['best_baseline_auroc']:.3f} ({below} it)")
        print(f"  {q['dataset']:6s} {q['scenario']:28s} {status}{extra}")
    H.write_output(doc, args.out, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
