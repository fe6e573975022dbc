"""LID over training as the training set shrinks (issue 5, item 5): the picture that OD-Mem grows as N falls.

    python benchmarks/lid_vs_n.py            # N = 16 … 4096, about 6 minutes on one idle CPU core
    python benchmarks/lid_vs_n.py --quick    # two tiny runs, a few seconds (the test suite runs this)

For each training-set size N it trains the same MLP diffusion model (DDPM ε-prediction, the same number
of steps) on N points of the 2/4/8-d Gaussian mixture in R^10, and lets mmh_train's monitor measure
FLIPD at σ = 0.3 every ``check_every`` steps on training probes and on held-out probes (true LID as the
reference). At the end it samples the model and counts copies (nearest-neighbour ratio < 1/3).

It prints one row per N (final mean LID on training and held-out probes, their gap, the OD fraction, the
copy rate), writes everything (every check of every run) to JSON, and draws the curves to a PNG.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import mmh_train
from mmh_train.data import affine_mixture

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling helpers, also when loaded by path
from _timing import benchmark_parser  # noqa: E402
from _harness import generate, memorized_truth, print_table, start_output, train_diffusion, write_output  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Config:
    sizes: list = field(default_factory=lambda: [16, 32, 64, 128, 256, 512, 1024, 2048, 4096])
    steps: int = 8000
    check_every: int = 500
    sigma: float = 0.3
    probes: int = 128          # training probes (all points when N is smaller) and held-out probes
    n_samples: int = 1000      # generated for the copy rate (and as many fresh draws as its control)
    width: int = 256
    seed: int = 0

    @classmethod
    def quick(cls) -> "Config":
        return cls(sizes=[16, 64], steps=200, check_every=100, probes=16, n_samples=100, width=64)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = benchmark_parser(__doc__, RESULTS / "lid_vs_n.json", "two tiny runs, for the test suite")
    parser.add_argument("--sizes", type=int, nargs="+", help="training-set sizes N")
    parser.add_argument("--steps", type=int, help="training steps for every N")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--plot", type=Path, default=RESULTS / "lid_vs_n.png", help="PNG path")
    args = parser.parse_args(argv)
    for name in ("sizes", "steps"):
        value = getattr(args, name)
        if value is not None and min(value if isinstance(value, list) else [value]) < 1:
            parser.error(f"--{name} must be ≥ 1; got {value}")
    return args


def run_one(n: int, cfg: Config, pool: mmh_train.data.toy.ManifoldSample, heldout: torch.Tensor,
            heldout_lid: torch.Tensor) -> dict:
    """Trains on the first ``n`` points of ``pool``; returns the monitor's history and the final figures."""
    x, lid = pool.x[:n], pool.lid[:n].float()
    probes = min(n, cfg.probes)
    monitor = mmh_train.MemorizationMonitor(
        x, heldout[: cfg.probes], sigma=cfg.sigma, every_n_steps=cfg.check_every, n_train_probes=probes,
        n_heldout_probes=min(cfg.probes, len(heldout)), reference=lid, seed=cfg.seed)
    trained = train_diffusion(x, steps=cfg.steps, seed=cfg.seed, width=cfg.width, guard=mmh_train.MemorizationGuard(monitor))
    history = []
    for result in trained.checks:
        history.append({"step": result.step, "lid_train": result.lid_train.mean().item(),
                        "lid_heldout": result.lid_heldout.mean().item(),
                        "lid_train_median": result.lid_train.median().item(),
                        "lid_heldout_median": result.lid_heldout.median().item(),
                        "od_fraction": result.metrics["od_fraction"]})
    generated = generate(trained, cfg.n_samples, seed=cfg.seed + 1)
    control = pool.spec.sample(cfg.n_samples, generator=torch.Generator().manual_seed(cfg.seed + 7)).x
    truth = memorized_truth(generated, x, control)
    last = history[-1]
    return {"n": n, "train_probes": probes, "heldout_probes": len(monitor.heldout_index),
            "true_lid_train_probes": lid[monitor.train_index].mean().item(),
            "true_lid_heldout_probes": heldout_lid[monitor.heldout_index].mean().item(),
            "lid_train": last["lid_train"], "lid_heldout": last["lid_heldout"],
            "lid_train_median": last["lid_train_median"], "lid_heldout_median": last["lid_heldout_median"],
            "gap": last["lid_heldout"] - last["lid_train"], "od_fraction": last["od_fraction"],
            "copy_rate": truth["copy_rate"], "control_copy_rate": truth["control_copy_rate"],
            "excess_copy_rate": truth["excess_copy_rate"], "excess_interval": truth["excess_interval"],
            "memorized_points": int(truth["memorized"].sum()), "memorized_underpowered": truth["underpowered"],
            "train_seconds": trained.seconds,
            "history": history}


def plot(runs: list[dict], path: Path) -> None:
    """Left: final mean LID vs N. Right: mean LID over training for each N (train solid, held-out dashed)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from mmh_train.io import write_bytes_atomic

    fig = Figure(figsize=(12, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    ns = [r["n"] for r in runs]
    left.plot(ns, [r["lid_train"] for r in runs], "o-", color="tab:red", label="training probes")
    left.plot(ns, [r["lid_heldout"] for r in runs], "s--", color="tab:blue", label="held-out probes")
    left.plot(ns, [r["true_lid_train_probes"] for r in runs], ":", color="black", label="true LID (mean)")
    left.axhline(10, color="grey", lw=0.8, ls="-.", label="ambient dimension D = 10")
    left.set_xscale("log", base=2)
    left.set_xlabel("training-set size N")
    left.set_ylabel("mean FLIPD LID at the end of training")
    left.set_title("LID at the end of training: OD-Mem grows as N falls")
    left.legend(frameon=False)
    cmap = matplotlib.colormaps["viridis"]
    for i, r in enumerate(runs):
        c = cmap(i / max(len(runs) - 1, 1))
        steps = [h["step"] for h in r["history"]]
        right.plot(steps, [h["lid_train"] for h in r["history"]], "-", color=c, label=f"N={r['n']}")
        right.plot(steps, [h["lid_heldout"] for h in r["history"]], "--", color=c)
    right.set_xlabel("training step")
    right.set_ylabel("mean FLIPD LID (solid: train, dashed: held-out)")
    right.set_title("LID over training")
    right.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    write_bytes_atomic(path, buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    cfg = Config.quick() if args.quick else Config()
    for name in ("sizes", "steps", "seed"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    started = time.perf_counter()
    doc = start_output("lid_vs_n", argv, [cfg.seed], asdict(cfg))
    print(f"2/4/8-d Gaussian mixture in R^10, {cfg.steps} steps per N, FLIPD at sigma={cfg.sigma} "
          f"every {cfg.check_every} steps, true LID as the reference\n", flush=True)

    g = torch.Generator().manual_seed(cfg.seed)
    pool = affine_mixture(max(cfg.sizes) + cfg.probes, dims=(2, 4, 8), ambient_dim=10, generator=g)
    heldout, heldout_lid = pool.x[max(cfg.sizes):], pool.lid[max(cfg.sizes):].float()
    runs = []
    for n in sorted(cfg.sizes):
        run = run_one(n, cfg, pool, heldout, heldout_lid)
        runs.append(run)
        print(f"  N={n:5d}: train LID {run['lid_train']:.2f}, held-out {run['lid_heldout']:.2f}, "
              f"copies {run['copy_rate']:.1%} / control {run['control_copy_rate']:.1%} / excess "
              f"{run['excess_copy_rate']:+.1%} ({run['train_seconds']:.0f} s)", flush=True)
    print()
    print_table(runs, [("n", "N", "d"), ("lid_train", "LID train", ".2f"), ("lid_heldout", "LID held-out", ".2f"),
                       ("gap", "gap", ".2f"), ("lid_train_median", "median train", ".2f"),
                       ("lid_heldout_median", "median held-out", ".2f"), ("true_lid_train_probes", "true LID", ".2f"),
                       ("od_fraction", "OD frac", ".1%"), ("copy_rate", "copies", ".1%"),
                       ("control_copy_rate", "control", ".1%"), ("excess_copy_rate", "excess", "+.1%"),
                       ("memorized_points", "memorized pts", "d")])
    doc["runs"] = runs
    plot(runs, args.plot)
    doc["plot"] = str(args.plot)
    print(f"plot: {args.plot}")
    write_output(doc, args.out, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
