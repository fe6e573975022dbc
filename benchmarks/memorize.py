"""The memorization recipe over seeds: detection lead, false labels, early stopping and the remedies per check.

    OMP_NUM_THREADS=1 python benchmarks/memorize.py                       # seeds 0-2, natural and duplicated
    OMP_NUM_THREADS=1 python benchmarks/memorize.py --seeds 0 --scenarios natural --variants baseline
    OMP_NUM_THREADS=1 python benchmarks/memorize.py --seeds 0 --variants baseline --scenarios natural \
        --n-train 96 --steps 7200 --every 600                             # the copies-over-steps curve
    python benchmarks/memorize.py --quick                                 # tiny sizes, well under a minute
    python benchmarks/memorize.py --plot benchmarks/results/memorize_*.json  # docs/memorize_copies.png
    python benchmarks/memorize.py --table benchmarks/results/memorize_*.json # BENCHMARKS.md's tables

Each run is ``recipes/memorize.py``'s ``train_run`` (a 16×16 conv UNet on 24 digits, the guard with its
defaults, the truth measured at every check). Variants: ``baseline`` (no remedy; early stopping alone is the
baseline's weights at the check the stopper restores, since monitoring never changes training),
``reweight`` (duplicate groups weigh one sample), ``penalty`` (per-point LID penalty on OD-labelled digits),
``all`` (both, and early stopping). Scenarios: ``natural`` (24 distinct digits) and ``duplicated`` (4 of them
with an exact and two ±1 px shifted copies). Nothing here was tuned on these runs: the guard runs with the
library's defaults.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "recipes"))

import memorize  # noqa: E402
from memorize_evidence import detection  # noqa: E402
from mmh_train.quality import DigitsFeatures  # noqa: E402

VARIANTS = {"baseline": {}, "reweight": {"reweight": True}, "penalty": {"penalty": True},
            "all": {"reweight": True, "penalty": True}}
SCENARIOS = {"natural": 0, "duplicated": 4}


def run_one(scenario: str, variant: str, seed: int, quick: bool, features: DigitsFeatures, *, n_train: int = 24,
            steps: int = 3600, every: int = 300) -> dict:
    cfg = memorize.MemorizeConfig()
    cfg.train.seed, cfg.data.duplicates = seed, SCENARIOS[scenario]
    cfg.data.n_train, cfg.train.steps, cfg.monitor.every_n_steps = n_train, steps, every
    if quick:
        cfg.train.steps, cfg.monitor.every_n_steps, cfg.data.n_train = 40, 20, 12
        cfg.data.n_heldout, cfg.train.batch_size, cfg.model.channels = 32, 6, [8, 16]
        cfg.evidence.n_samples, cfg.evidence.sample_steps = 24, 3
        cfg.data.duplicates = min(cfg.data.duplicates, 2)
    train, heldout, _ = memorize.split(cfg)
    start = time.perf_counter()
    run = memorize.train_run(variant, cfg, train, heldout, features, **VARIANTS[variant])
    d = detection(run)
    last, best_quality = run.evidence[-1], min(e.quality for e in run.evidence)
    row = {"scenario": scenario, "variant": variant, "seed": seed, "n_train": cfg.data.n_train, "seconds": time.perf_counter() - start,
           "copied": d["copied"], "n": d["n"], "lead": d["lead"], "false": d["false"],
           "end_excess": last.excess, "end_quality": last.quality, "best_quality": best_quality,
           "copier_quality": run.copier_quality,
           "checks": [{"step": e.step, "lid_train": e.lid_train, "lid_heldout": e.lid_heldout,
                       "labelled": e.n_labelled, "od": int((e.label == 1).sum()), "dd": int((e.label == 2).sum()),
                       "memorized": int(e.memorized.sum()), "copy_rate": e.copy_rate, "control_rate": e.control_rate,
                       "auroc": e.auroc, "quality": e.quality} for e in run.evidence]}
    if run.stopped is not None:
        row.update(stopped_at=run.guard.stopper.stopped_step, restored=run.stopped.step,
                   restored_excess=run.stopped.excess, restored_quality=run.stopped.quality)
    return row


def plot_curves(paths: list[str], out: Path) -> None:
    """docs/memorize_copies.png: excess copy rate and labelled fraction over training, per N and seed (baselines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    colours: dict[str, str] = {}
    for path in paths:
        for row in json.loads(Path(path).read_text())["rows"]:
            if row["variant"] != "baseline":
                continue
            key = f"N = {row['n']}" + (" (duplicated)" if row["scenario"] == "duplicated" else "")
            first = key not in colours
            colour = colours.setdefault(key, f"C{len(colours)}")
            steps = [c["step"] for c in row["checks"]]
            top.plot(steps, [100 * (c["copy_rate"] - c["control_rate"]) for c in row["checks"]], "o-", color=colour,
                     label=key if first else None, alpha=0.8)
            bottom.plot(steps, [100 * c["labelled"] / row["n"] for c in row["checks"]], "s--", color=colour, alpha=0.8)
    top.set_ylabel("excess copies (% of samples)")
    top.legend(loc="upper left")
    bottom.set_ylabel("training digits labelled (%)")
    bottom.set_xlabel("training step")
    fig.suptitle("16×16 conv UNet on N digits: copies beyond the control (top), the guard's labels (bottom)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def markdown_tables(paths: list[str]) -> str:
    """BENCHMARKS.md's tables from result files: one summary row per run, then every run's per-check table."""
    rows = [r for path in paths for r in json.loads(Path(path).read_text())["rows"]]
    out = ["| scenario | N | variant | seed | memorized by the end | labelled at or before the copies | never-memorized "
           "labelled | end: excess / quality | stop → restored | restored: excess / quality | copier quality | s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        restored = (f"{fmt(r.get('restored_excess'), '+.1%')} / {fmt(r.get('restored_quality'), '.2f')}"
                    if "restored" in r else "—")
        out.append(f"| {r['scenario']} | {r['n']} | {r['variant']} | {r['seed']} | {r['copied']}/{r['n']} | "
                   f"{fmt(r['lead'], '.0%')} | {fmt(r['false'], '.0%')} | {r['end_excess']:+.1%} / "
                   f"{r['end_quality']:.2f} | {r.get('stopped_at', '—')} → {r.get('restored', '—')} | {restored} | "
                   f"{fmt(r.get('copier_quality'), '.2f')} | {r['seconds']:.0f} |")
    for r in rows:
        out += ["", f"{r['scenario']}, N = {r['n']}, {r['variant']}, seed {r['seed']}:", "",
                "| step | LID train | LID held-out | labelled (OD/DD) | memorized | copies | control | AUROC | quality |",
                "|---|---|---|---|---|---|---|---|---|"]
        for c in r["checks"]:
            mark = " ←" if c["step"] == r.get("restored") else (" ✕" if c["step"] == r.get("stopped_at") else "")
            out.append(f"| {c['step']}{mark} | {c['lid_train']:.1f} | {c['lid_heldout']:.1f} | {c['labelled']} "
                       f"({c['od']}/{c['dd']}) | {c['memorized']} | {c['copy_rate']:.1%} | {c['control_rate']:.1%} | "
                       f"{fmt(c['auroc'], '.2f')} | {c['quality']:.2f} |")
    return "\n".join(out)


def fmt(x: float, spec: str) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--n-train", type=int, default=24, help="training digits (the copies-over-steps curve: 24, 48, 96)")
    parser.add_argument("--steps", type=int, default=3600)
    parser.add_argument("--every", type=int, default=300, help="steps between checks")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "memorize.json"))
    parser.add_argument("--plot", nargs="+", metavar="JSON", help="only draw docs/memorize_copies.png from result files")
    parser.add_argument("--table", nargs="+", metavar="JSON", help="only print BENCHMARKS.md's tables from result files")
    args = parser.parse_args(argv)
    if args.plot:
        plot_curves(args.plot, REPO / "docs" / "memorize_copies.png")
        return 0
    if args.table:
        print(markdown_tables(args.table))
        return 0
    torch.set_num_threads(1)
    features = DigitsFeatures.trained(16, seed=0, resize="bilinear")
    rows, out = [], Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for scenario in args.scenarios:
        for seed in args.seeds:
            for variant in args.variants:
                rows.append(run_one(scenario, variant, seed, args.quick, features, n_train=args.n_train,
                                    steps=args.steps, every=args.every))
                r = rows[-1]
                print(f"{scenario:10s} {variant:8s} seed {seed}: copied {r['copied']}/{r['n']} lead {fmt(r['lead'], '.0%')} "
                      f"false {fmt(r['false'], '.0%')} end excess {r['end_excess']:+.1%} quality {r['end_quality']:.3f} "
                      f"(best {r['best_quality']:.3f}) stop {r.get('stopped_at', '—')} -> {r.get('restored', '—')} "
                      f"excess {fmt(r.get('restored_excess'), '+.1%')} quality {fmt(r.get('restored_quality'), '.3f')} "
                      f"{r['seconds']:.0f} s", flush=True)
                out.write_text(json.dumps({"argv": sys.argv if argv is None else argv, "quick": args.quick,
                                           "rows": rows}, indent=1))  # after every run: a long run keeps its rows
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
