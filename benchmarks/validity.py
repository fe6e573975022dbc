"""The validity suite: do the per-point verdicts hold on memorization they were not tuned on?

    python benchmarks/validity_runs.py          # train and measure every cell (about an hour on 2 CPU cores)
    python benchmarks/validity.py               # judge them: the table, leave-one-family-out calibration
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
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from mmh_train.memorization import DD, OD
from mmh_train.verdicts import calibrated_labels

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import auroc, tpr_at_fpr  # noqa: E402
import validity_runs as R  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "validity.json"
#: the families of the leave-one-out (the two oversampling families are one: planted OD by oversampling)
FAMILY_OF = {"oversample": "oversampling", "oversample_far": "oversampling", "duplicates": "duplicates",
             "conditional": "conditional", "natural": "natural", "generalizing": "generalizing"}
#: the rule's constants and the values the calibration may choose from
CONSTANTS: dict[str, tuple] = {"standardise": ("local", "global", "local_rescaled"),
                               "min_drop": (0.3, 0.4, 0.5, 0.6), "min_spreads": (1.5, 2.0, 3.0)}
GOALS = {"auroc": 0.95, "tpr": 0.5, "precision": 0.9, "recall": 0.9, "false_runs": 0.05}


def load_runs(folder: Path) -> list[dict[str, Any]]:
    runs = [torch.load(p) for p in sorted(folder.glob("*.pt"))]
    if not runs:
        raise SystemExit(f"no runs in {folder}; run benchmarks/validity_runs.py first.")
    return runs


def judge_run(run: dict[str, Any], constants: dict[str, Any]) -> dict[str, Any]:
    """The rule with ``constants`` on one stored run: labels and score per training probe."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labels = calibrated_labels(run["lid_train"], run["lid_heldout"], run["train_view"], run["heldout_view"],
                                   duplicated=run["duplicated"], **constants)
    return {"label": labels.label, "score": torch.nan_to_num(labels.score.double(), nan=-math.inf)}


def _pr(predicted: torch.Tensor, truth: torch.Tensor) -> tuple[int, int, int]:
    return int((predicted & truth).sum()), int((predicted & ~truth).sum()), int((~predicted & truth).sum())


def cell_metrics(runs: list[dict[str, Any]], judged: list[dict[str, Any]]) -> dict[str, Any]:
    """Seeds pooled: ranking (AUROC, TPR at 1 % FPR over the pooled points), OD/DD precision and recall."""
    truth = torch.cat([r["truth_od"] | r["truth_dd"] for r in runs])
    score = torch.cat([j["score"] for j in judged])
    label = torch.cat([j["label"] for j in judged])
    out: dict[str, Any] = {"cell": runs[0]["cell"], "family": runs[0]["family"], "seeds": len(runs),
                           "points": len(truth), "positives": int(truth.sum()),
                           "copied": _mean([r["planted_memorized"] for r in runs]),
                           "auroc": auroc(score, truth) if truth.any() and not truth.all() else math.nan,
                           "tpr": tpr_at_fpr(score, truth) if truth.any() and not truth.all() else math.nan,
                           "false_runs": sum(bool((j["label"] != 0).any()) for j in judged) / len(judged),
                           "labelled": float((label != 0).double().mean())}
    for name, code, key in (("od", OD, "truth_od"), ("dd", DD, "truth_dd")):
        t = torch.cat([r[key] for r in runs])
        tp, fp, fn = _pr(label == code, t)
        out[f"{name}_precision"] = tp / (tp + fp) if tp + fp else math.nan
        out[f"{name}_recall"] = tp / (tp + fn) if tp + fn else math.nan
    tp, fp, fn = _pr(label != 0, truth)
    out["precision"] = tp / (tp + fp) if tp + fp else math.nan
    out["recall"] = tp / (tp + fn) if tp + fn else math.nan
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


def grid() -> list[dict[str, Any]]:
    keys = list(CONSTANTS)
    return [dict(zip(keys, values)) for values in itertools.product(*(CONSTANTS[k] for k in keys))]


def evaluate(cells: dict[str, list], constants: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: cell_metrics(runs, [judge_run(r, constants) for r in runs]) for name, runs in cells.items()}


def leave_one_family_out(cells: dict[str, list]) -> dict[str, Any]:
    """For each family: the constants that maximize :func:`objective` on the other families, and its cells
    judged with them."""
    candidates = grid()
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
           ("false_runs", "runs w/ label", ".2f")]


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


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="measure and judge four small cells")
    parser.add_argument("--table", action="store_true", help="print the Markdown tables of the last JSON")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or (DEFAULT_OUT.with_name("validity-quick.json") if args.quick else DEFAULT_OUT)
    if args.table:
        doc = json.loads(out.read_text())
        print(markdown(list(doc["defaults"].values())))
        print()
        print(markdown([m for f in doc["lofo"]["per_family"].values() for m in f["cells"].values()]))
        return 0
    folder = R.RUNS.with_name("validity-quick") if args.quick else R.RUNS
    if args.quick:
        R.main(["--quick", "--out", str(folder)])
    cells = by_cell(load_runs(folder))
    defaults = evaluate(cells, {})
    lofo = leave_one_family_out(cells)
    doc = {"benchmark": "validity", "command": "python benchmarks/validity.py" + (" --quick" if args.quick else ""),
           "constants": {k: list(v) for k, v in CONSTANTS.items()}, "goals": GOALS,
           "defaults": defaults, "lofo": lofo}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=float))
    tmp.replace(out)
    print("The shipped defaults:")
    print(markdown(list(defaults.values())))
    print("\nLeave one family out (constants chosen on the other families):")
    for family, result in lofo["per_family"].items():
        print(f"  {family}: chosen {result['constants']} (objective on the others {result['objective_on_others']:.3f})")
    print(markdown([m for f in lofo["per_family"].values() for m in f["cells"].values()]))
    print(f"\nChosen on every family: {lofo['all_families']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
