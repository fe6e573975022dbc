"""The validity suite: do the per-point verdicts hold on memorization they were not tuned on?

    python benchmarks/validity.py --measure     # train and measure every missing run (about an hour on 2 CPU
                                                # cores; or benchmarks/validity_runs.py), then judge them
    python benchmarks/validity.py               # judge the stored runs: the table, leave-one-family-out
    python benchmarks/validity.py --quick       # measure and judge four small cells (the test runs this)
    python benchmarks/validity.py --table       # BENCHMARKS.md's tables from the last JSON

Every run of ``validity_runs.py`` stores what one check of the monitor (default options, every training point a
probe, up to 256 held-out probes) measured: LID_θ of the training and held-out probes at the default noise
levels, their comparison view, the duplicate groups, and the truth (planted rows, or for ``natural`` runs the
model's copies). Judging applies :func:`mmh_train.verdicts.calibrated_labels` to them, so every constant of the
rule can be varied without training again.

Per cell (data/model/family, seeds pooled): AUROC and TPR at 1 % FPR of the ranking score for "memorized"
(planted OD or DD, or copied), OD and DD precision and recall of the labels, and for ``generalizing`` cells
the share of runs with any label (each one false). ``copied`` is the share of planted rows the model's samples
copy (``memorized_points`` against held-out points): where it is low, the model did not memorize what was
planted, and no rule that reads the model can find it.

Leave-one-family-out: the rule's constants (``CONSTANTS``) are chosen, for each family, on the runs of the other
families only (``objective``), and the family is judged with them. The shipped defaults are reported beside.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from mmh_train.memorization import DD, OD
from mmh_train.verdicts import NullStatistics, calibrated_labels, decide, null_statistics

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import auroc, tpr_at_fpr  # noqa: E402
import validity_runs as R  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "validity.json"
#: the families of the leave-one-out (the two oversampling families are one: planted OD by oversampling)
FAMILY_OF = {"oversample": "oversampling", "oversample_far": "oversampling", "duplicates": "duplicates",
             "conditional": "conditional", "natural": "natural", "generalizing": "generalizing"}
#: the rule's constants and the values the calibration may choose from
CONSTANTS: dict[str, tuple] = {"standardise": ("local", "global", "local_rescaled"), "combine": ("max", "all"),
                               "size_at": ("any", "every", "deciding"), "min_drop": (0.3, 0.5, 0.7),
                               "min_spreads": (1.5, 2.0, 3.0, 4.0, 6.0)}
#: the rule of 2026-12-02 (before this suite), judged beside the shipped defaults
OLD_RULE = {"standardise": "local_rescaled", "combine": "max", "size_at": "deciding", "min_drop": 0.5, "min_spreads": 2.0}
GOALS = {"auroc": 0.95, "tpr": 0.5, "precision": 0.9, "recall": 0.9, "false_runs": 0.05}


def load_runs(folder: Path) -> list[dict[str, Any]]:
    runs = [torch.load(p) for p in sorted(folder.glob("*.pt"))]
    if not runs:
        raise SystemExit(f"no runs in {folder}; run benchmarks/validity_runs.py first.")
    return runs


_STATS: dict[tuple[int, str], NullStatistics] = {}


def judge_run(run: dict[str, Any], constants: dict[str, Any]) -> dict[str, Any]:
    """The rule with ``constants`` on one stored run: labels and score per training probe. The statistics
    (which depend on the standardisation only) are computed once per run; ``calibrated_labels`` is the same
    two steps (tests/benchmarks/test_validity_quick.py checks they agree)."""
    constants = dict(constants)
    standardise = constants.pop("standardise", "local")
    key = (id(run), standardise)
    if key not in _STATS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _STATS[key] = null_statistics(run["lid_train"], run["lid_heldout"], run["train_view"],
                                          run["heldout_view"], standardise=standardise)
    labels = decide(_STATS[key], run["duplicated"].bool().cpu(), **constants)
    return {"label": labels.label, "score": torch.nan_to_num(labels.score.double(), nan=-math.inf)}


def _pr(predicted: torch.Tensor, truth: torch.Tensor) -> tuple[int, int, int]:
    return int((predicted & truth).sum()), int((predicted & ~truth).sum()), int((~predicted & truth).sum())


def truths(run: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(od, dd)`` per training probe: the planted rows, and any other row the model's samples copy (memorized
    too, planted or not), as OD or DD by whether the data duplicate it."""
    copied = run["sample_memorized"]
    return (run["truth_od"] | (copied & ~run["duplicated"] & ~run["truth_dd"]),
            run["truth_dd"] | (copied & run["duplicated"] & ~run["truth_od"]))


def cell_metrics(runs: list[dict[str, Any]], judged: list[dict[str, Any]]) -> dict[str, Any]:
    """Seeds pooled: ranking (AUROC, TPR at 1 % FPR over the pooled points), OD/DD precision and recall; the
    recall over the planted rows that the samples copy (``recall_copied``: what a model that acted on the
    planting shows)."""
    split = [truths(r) for r in runs]
    truth = torch.cat([od | dd for od, dd in split])
    score = torch.cat([j["score"] for j in judged])
    label = torch.cat([j["label"] for j in judged])
    out: dict[str, Any] = {"cell": runs[0]["cell"], "family": runs[0]["family"], "seeds": len(runs),
                           "points": len(truth), "positives": int(truth.sum()),
                           "copied": _mean([r["planted_memorized"] for r in runs]),
                           "auroc": auroc(score, truth) if truth.any() and not truth.all() else math.nan,
                           "tpr": tpr_at_fpr(score, truth) if truth.any() and not truth.all() else math.nan,
                           "false_runs": sum(bool((j["label"] != 0).any()) for j in judged) / len(judged),
                           "labelled": float((label != 0).double().mean())}
    for name, code, which in (("od", OD, 0), ("dd", DD, 1)):
        t = torch.cat([pair[which] for pair in split])
        tp, fp, fn = _pr(label == code, t)
        out[f"{name}_precision"] = tp / (tp + fp) if tp + fp else math.nan
        out[f"{name}_recall"] = tp / (tp + fn) if tp + fn else math.nan
    tp, fp, fn = _pr(label != 0, truth)
    out["precision"] = tp / (tp + fp) if tp + fp else math.nan
    out["recall"] = tp / (tp + fn) if tp + fn else math.nan
    acted = torch.cat([(r["truth_od"] | r["truth_dd"]) & r["sample_memorized"] for r in runs])
    out["recall_copied"] = float(((label != 0) & acted).sum() / acted.sum()) if acted.any() else math.nan
    return out


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v == v]
    return sum(finite) / len(finite) if finite else math.nan


def by_cell(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    cells: dict[str, list] = {}
    for r in runs:
        cells.setdefault(r["cell"], []).append(r)
    return cells


def objective(metrics: list[dict[str, Any]]) -> float:
    """What calibration maximizes over a set of cells: the mean F1 of "labelled" for "memorized" over the cells
    with positives, minus 2 × the excess over 5 % of generalizing runs with a false label."""
    f1 = []
    for m in metrics:
        if m["positives"]:
            p, r = m["precision"], m["recall"]
            p = 0.0 if p != p else p
            f1.append(0.0 if p + r == 0 else 2 * p * r / (p + r))
    generalizing = [m["false_runs"] for m in metrics if m["family"] == "generalizing"]
    penalty = max(0.0, _mean(generalizing) - GOALS["false_runs"]) if generalizing else 0.0
    return (_mean(f1) if f1 else 0.0) - 2.0 * penalty


def grid(quick: bool = False) -> list[dict[str, Any]]:
    """Every combination of :data:`CONSTANTS` (``quick``: the first two values of each). Ties in the objective
    go to the earlier combination."""
    keys = list(CONSTANTS)
    return [dict(zip(keys, values)) for values in itertools.product(*(CONSTANTS[k][:2] if quick else CONSTANTS[k]
                                                                      for k in keys))]


def evaluate(cells: dict[str, list], constants: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: cell_metrics(runs, [judge_run(r, constants) for r in runs]) for name, runs in cells.items()}


def leave_one_family_out(cells: dict[str, list], quick: bool = False) -> dict[str, Any]:
    """For each family: the constants that maximize :func:`objective` on the other families, and its cells
    judged with them."""
    candidates = grid(quick)
    table = [evaluate(cells, c) for c in candidates]  # [candidate][cell]
    families = sorted({FAMILY_OF[runs[0]["family"]] for runs in cells.values()})
    out = {}
    for family in families:
        others = [name for name, runs in cells.items() if FAMILY_OF[runs[0]["family"]] != family]
        scores = [objective([t[name] for name in others]) for t in table]
        best = max(range(len(candidates)), key=lambda i: scores[i])
        mine = [name for name in cells if name not in others]
        out[family] = {"constants": candidates[best], "objective_on_others": scores[best],
                       "cells": {name: table[best][name] for name in mine}}
    scores_all = [objective(list(t.values())) for t in table]
    best_all = max(range(len(candidates)), key=lambda i: scores_all[i])
    return {"per_family": out, "all_families": {"constants": candidates[best_all], "objective": scores_all[best_all]}}


COLUMNS = [("cell", "cell", "s"), ("seeds", "seeds", "d"), ("positives", "memorized", "d"), ("copied", "copied", ".2f"),
           ("auroc", "AUROC", ".3f"), ("tpr", "TPR@1%", ".2f"), ("od_precision", "OD P", ".2f"),
           ("od_recall", "OD R", ".2f"), ("dd_precision", "DD P", ".2f"), ("dd_recall", "DD R", ".2f"),
           ("recall_copied", "R copied", ".2f"), ("false_runs", "runs w/ label", ".2f")]


def misses(m: dict[str, Any]) -> list[str]:
    """The goals a cell misses (a goal with nothing to measure is not a miss)."""
    missed = []
    if m["family"] == "generalizing":
        return ["false labels"] if m["false_runs"] > GOALS["false_runs"] else []
    for key, goal in (("auroc", "auroc"), ("tpr", "tpr")):
        if m[key] == m[key] and m[key] < GOALS[goal]:
            missed.append(key)
    for key in ("od_precision", "od_recall", "dd_precision", "dd_recall"):
        if m[key] == m[key] and m[key] < GOALS[key.split("_")[1]]:
            missed.append(key)
    return missed


def markdown(rows: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(h for _, h, _ in COLUMNS) + " | missed |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for m in rows:
        cells = []
        for key, _, fmt in COLUMNS:
            v = m.get(key)
            cells.append("—" if v is None or (isinstance(v, float) and v != v) else format(v, fmt))
        lines.append("| " + " | ".join(cells) + " | " + (", ".join(misses(m)) or "none") + " |")
    return "\n".join(lines)


def rule_cost(runs: list[dict[str, Any]], repeats: int = 5) -> dict[str, float]:
    """Seconds of the rule (old and new, side by side) on the run with the most probes, against that run's
    whole check (FLIPD at every level on every probe)."""
    run = max(runs, key=lambda r: r["lid_train"].shape[1] + r["lid_heldout"].shape[1])
    seconds = {}
    for name, constants in (("old", OLD_RULE), ("new", {})):
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            calibrated_labels(run["lid_train"], run["lid_heldout"], run["train_view"], run["heldout_view"],
                              duplicated=run["duplicated"], **constants)
            best = min(best, time.perf_counter() - start)
        seconds[name] = best
    return {"run": run["cell"], "probes": run["lid_train"].shape[1] + run["lid_heldout"].shape[1],
            "rule_old_s": seconds["old"], "rule_new_s": seconds["new"], "check_s": run["check_seconds"],
            "growth": (seconds["new"] - seconds["old"]) / run["check_seconds"]}


def false_run_rate(cells: dict[str, dict[str, Any]]) -> tuple[int, int]:
    """(runs with any label, runs) over every generalizing cell: BH's promise is ≤ fdr of them."""
    runs = [(m["false_runs"], m["seeds"]) for m in cells.values() if m["family"] == "generalizing"]
    return round(sum(f * n for f, n in runs)), sum(n for _, n in runs)


def tables(doc: dict[str, Any]) -> str:
    """BENCHMARKS.md's tables from the JSON: the defaults, the old rule, leave-one-family-out, and the cost."""
    parts = []
    for title, key in (("The shipped defaults", "defaults"), ("The rule of 2026-12-02", "old")):
        labelled, runs = false_run_rate(doc[key])
        parts += [f"**{title}** (generalizing runs with any label: {labelled} of {runs})", "",
                  markdown(list(doc[key].values())), ""]
    parts += ["**Leave one family out** (each family judged with the constants chosen on the others)", "",
              "| family | chosen on the other families |", "|---|---|"]
    for family, result in doc["lofo"]["per_family"].items():
        chosen = ", ".join(f"{k}={v}" for k, v in result["constants"].items())
        parts.append(f"| {family} | {chosen} |")
    parts += ["", markdown([m for f in doc["lofo"]["per_family"].values() for m in f["cells"].values()]), ""]
    every = doc["lofo"]["all_families"]
    parts.append("Chosen on every family (the shipped defaults): "
                 + ", ".join(f"{k}={v}" for k, v in every["constants"].items()))
    cost = doc["cost"]
    parts.append(f"\nCost: the rule takes {cost['rule_new_s'] * 1e3:.1f} ms (the old one {cost['rule_old_s'] * 1e3:.1f} ms) "
                 f"on {cost['probes']} probes ({cost['run']}), whose check took {cost['check_s']:.2f} s: "
                 f"{100 * cost['growth']:+.1f} % of the check.")
    return "\n".join(parts)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="measure and judge four small cells")
    parser.add_argument("--table", action="store_true", help="print the Markdown tables of the last JSON")
    parser.add_argument("--measure", action="store_true", help="first train and measure the runs not stored yet")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or (DEFAULT_OUT.with_name("validity-quick.json") if args.quick else DEFAULT_OUT)
    if args.table:
        print(tables(json.loads(out.read_text())))
        return 0
    folder = out.parent / "validity-quick" if args.quick else R.RUNS
    if args.quick:
        R.main(["--quick", "--out", str(folder)])
    elif args.measure:
        R.main(["--out", str(folder)])
    cells = by_cell(load_runs(folder))
    defaults = evaluate(cells, {})
    old = evaluate(cells, OLD_RULE)
    lofo = leave_one_family_out(cells, quick=args.quick)
    cost = rule_cost([r for runs in cells.values() for r in runs])
    doc = {"benchmark": "validity", "command": "python benchmarks/validity.py" + (" --quick" if args.quick else ""),
           "constants": {k: list(v) for k, v in CONSTANTS.items()}, "goals": GOALS, "old_rule": OLD_RULE,
           "defaults": defaults, "old": old, "lofo": lofo, "cost": cost}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=float))
    tmp.replace(out)
    print(tables(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
