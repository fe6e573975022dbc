"""Wall-time overhead of the memorization monitor and its remedies in a real Lightning training run.

    python benchmarks/monitor_overhead.py              # full run, a few minutes on 2 CPU cores
    python benchmarks/monitor_overhead.py --quick      # tiny sizes, R = 1, a few seconds (the test runs this)

The same training run — an ε-prediction DDPM (a 2-hidden-layer time-conditioned MLP of width 256) on a
mixture of Gaussians on 2-, 4- and 8-dimensional affine pieces in R^10 (``mmh_train.data.affine_mixture``,
with a few exact duplicates injected so that the reweighting has groups to find), batch 256 — is timed
with ``trainer.fit`` under each configuration:

  - ``plain``: no callback (the module's ``mmh_weighted_loss`` / ``mmh_lid_penalty`` calls are inert);
  - ``monitor``: ``LIDMonitor(train, heldout, sigma=0.17)`` at its defaults (128 train + 64 held-out
    probes, FLIPD with one probe, reference LID* from the data, a check at the end of every epoch, the
    audit CSV written after every check);
  - ``monitor_steps``: the same monitor checking every ``--step-cadence`` steps instead;
  - ``monitor`` plus each remedy: ``DuplicateReweighting(train, dd_factor=0.5)``;
    ``LIDPenaltyController(always_on=True, target=4.0)`` (its defaults otherwise: subset=16, n_probes=1,
    σ=0.1; a target must be given when the penalty is on from step 0); ``MemorizationEarlyStopping``
    on ``mmh/od_fraction`` with a patience no run can reach (it never stops, so its overhead is timed);
    and all three together.

An "epoch" here is ``--steps-per-epoch`` batches drawn with replacement by a seeded sampler (the toy
set is small, so one pass over it would be only 16 steps). Every run starts from the same weights and
draws its training noise from its own generator, so runs of one configuration are identical, and the
monitor (side-effect free) trains exactly the same weights as the plain run; the script reports it.

Each configuration is run R times, interleaved (round r runs every configuration once, in an order
rotated by r) so that load bursts on the shared cores hit them alike, after one untimed warm-up fit.
The table gives the median and min wall time, their ratios to the plain run, and the median of the
per-round ratios. It also times every callback hook and each monitor check (measurement, labels,
logging and audit CSV), which gives the overhead without the wall-time noise, and the number of steps
between checks at which a check would cost 3 % of training.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling helpers, also when loaded by path
from _timing import benchmark_parser, code_version, machine_info, print_run_header, write_output  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "monitor_overhead.json"

#: Goal of the issue: the monitor at its default cadence costs at most 3 % of training wall time.
GOAL_MONITOR_OVER_PLAIN_MAX = 1.03


@dataclass
class Config:
    """Sizes of one run; ``--quick`` swaps in :meth:`quick`."""

    n_train: int = 4000  # before duplicates are injected
    duplicate_fraction: float = 0.01  # of the points get `duplicate_copies` exact copies each
    duplicate_copies: int = 4
    n_heldout: int = 1000
    dims: tuple[int, ...] = (2, 4, 8)
    ambient_dim: int = 10
    width: int = 256
    batch: int = 256
    lr: float = 3e-3
    max_timestep: int = 250  # low-noise DDPM timesteps, as in the tests' toy module
    steps_per_epoch: int = 500
    epochs: int = 4
    step_cadence: int = 100  # the monitor_steps row
    sigma: Any = 0.17  # or "auto": the monitor's default, three levels from the spacing
    penalty_target: float = 4.0
    repeats: int = 4
    seed: int = 0

    @property
    def max_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    @classmethod
    def quick(cls) -> "Config":
        return cls(n_train=200, n_heldout=40, width=32, batch=32, steps_per_epoch=6, epochs=2, step_cadence=4,
                   repeats=1)


# ---------------------------------------------------------------- model and data


def build_module_class():
    import lightning.pytorch as pl
    from diffusers import DDPMScheduler

    import mmh_train
    from mmh_train.callbacks import MemorizationMixin

    class TimeMLP(nn.Module):
        """ε̂(y, t): sinusoidal embedding of the DDPM timestep, concatenated to y, through a 2-hidden-layer MLP."""

        def __init__(self, dim: int, width: int, embed: int = 16) -> None:
            super().__init__()
            self.embed = embed
            self.net = nn.Sequential(nn.Linear(dim + embed, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                     nn.Linear(width, dim))

        def forward(self, y: Tensor, t: Tensor) -> Tensor:
            half = self.embed // 2
            freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=y.device) / half)
            angles = t.float()[:, None] * freqs[None]
            return self.net(torch.cat([y, angles.sin(), angles.cos()], 1))

    class BenchDiffusion(MemorizationMixin, pl.LightningModule):
        """The user-side pattern: per-sample DDPM loss, duplicate-aware weights by index, plus the LID penalty."""

        def __init__(self, cfg: Config) -> None:
            super().__init__()
            with torch.random.fork_rng(devices=[]):  # same initial weights for every run, global RNG untouched
                torch.manual_seed(cfg.seed)
                self.net = TimeMLP(cfg.ambient_dim, cfg.width)
            self.scheduler = DDPMScheduler(num_train_timesteps=1000)
            self.lr, self.max_timestep = cfg.lr, cfg.max_timestep
            self.noise = torch.Generator().manual_seed(cfg.seed + 1)

        def denoiser(self):
            return mmh_train.diffusers_denoiser(self.net, self.scheduler)

        def per_sample_loss(self, x0: Tensor) -> Tensor:
            noise = torch.randn(x0.shape, generator=self.noise)
            t = torch.randint(0, self.max_timestep, (x0.shape[0],), generator=self.noise)
            eps = self.net(self.scheduler.add_noise(x0, noise, t), t.float())
            return ((eps - noise) ** 2).mean(1)

        def training_step(self, batch, batch_idx):
            x0, _, index = batch
            return self.mmh_weighted_loss(self.per_sample_loss(x0), index) + self.mmh_lid_penalty(x0, index)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=self.lr)

    return BenchDiffusion


def make_data(cfg: Config):
    """Training sample (with exact duplicates) and held-out points from the same mixture."""
    from mmh_train.data import affine_mixture, inject_duplicates_in_sample

    clean = affine_mixture(cfg.n_train, dims=cfg.dims, ambient_dim=cfg.ambient_dim,
                           generator=torch.Generator().manual_seed(cfg.seed))
    train, dup = inject_duplicates_in_sample(clean, fraction=cfg.duplicate_fraction, copies=cfg.duplicate_copies,
                                             generator=torch.Generator().manual_seed(cfg.seed + 2))
    heldout = clean.spec.sample(cfg.n_heldout, generator=torch.Generator().manual_seed(cfg.seed + 3))
    return train, heldout, int(dup.duplicated.sum())


def make_loader(train, cfg: Config):
    from torch.utils.data import DataLoader, RandomSampler

    from mmh_train.data import ToyDataset

    dataset = ToyDataset(train)  # items (x, lid, index)
    sampler = RandomSampler(dataset, replacement=True, num_samples=cfg.batch * cfg.steps_per_epoch,
                            generator=torch.Generator().manual_seed(cfg.seed + 4))
    return DataLoader(dataset, batch_size=cfg.batch, sampler=sampler,  # its own generator: no global RNG draw
                      generator=torch.Generator().manual_seed(cfg.seed + 5))


# ---------------------------------------------------------------- configurations

CONFIGS: dict[str, str] = {
    "plain": "plain (no callback)",
    "monitor": "monitor, every epoch (default)",
    "monitor_steps": "monitor, every {step_cadence} steps",
    "reweighting": "monitor + reweighting",
    "penalty": "monitor + penalty (always on)",
    "early_stopping": "monitor + early stopping",
    "all": "monitor + all three remedies",
}


def make_callbacks(name: str, cfg: Config, train, heldout, audit_dir: Path) -> list[Any]:
    from mmh_train.callbacks import DuplicateReweighting, LIDMonitor, LIDPenaltyController, MemorizationEarlyStopping

    if name == "plain":
        return []
    audit = audit_dir / "mmh_audit.csv"  # what the default path would be with a logger: written after every check
    if name == "monitor_steps":
        return [LIDMonitor(train.x, heldout.x, sigma=cfg.sigma, every_n_steps=cfg.step_cadence, audit_path=audit)]
    callbacks: list[Any] = [LIDMonitor(train.x, heldout.x, sigma=cfg.sigma, audit_path=audit)]
    if name in ("reweighting", "all"):
        callbacks.append(DuplicateReweighting(train.x, dd_factor=0.5))
    if name in ("penalty", "all"):
        callbacks.append(LIDPenaltyController(always_on=True, target=cfg.penalty_target))
    if name in ("early_stopping", "all"):
        callbacks.append(MemorizationEarlyStopping("mmh/od_fraction", patience=10**9))
    return callbacks


HOOKS = ("setup", "on_fit_start", "on_train_start", "on_train_batch_start", "on_train_batch_end",
         "on_train_epoch_start", "on_train_epoch_end", "on_train_end", "teardown")


def instrument(callbacks: list[Any]) -> tuple[dict[str, float], list[dict]]:
    """Wraps every callback's hooks (seconds per callback class) and each monitor check (seconds per check)."""
    from mmh_train.callbacks import LIDMonitor

    hook_seconds: dict[str, float] = {}
    checks: list[dict] = []

    def timed(key: str, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                hook_seconds[key] = hook_seconds.get(key, 0.0) + time.perf_counter() - start
        return wrapper

    def timed_hook(fn: Callable) -> Callable:
        """A monitor hook: the part of it outside the check (logging, audit CSV) is the check's overhead."""
        def wrapper(*args, **kwargs):
            before, start = len(checks), time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if len(checks) > before:
                    checks[-1]["log_and_audit_s"] = time.perf_counter() - start - checks[-1]["check_s"]
        return wrapper

    for callback in callbacks:
        key = type(callback).__name__
        for hook in HOOKS:
            fn = getattr(callback, hook)
            if isinstance(callback, LIDMonitor) and hook in ("on_train_batch_end", "on_train_epoch_end"):
                fn = timed_hook(fn)
            setattr(callback, hook, timed(key, fn))
        if isinstance(callback, LIDMonitor):
            monitor = callback.monitor
            check = monitor.check

            def timed_check(*args, _check=check, _monitor=monitor, **kwargs):
                start = time.perf_counter()
                result = _check(*args, **kwargs)
                checks.append({"step": result.step, "check_s": time.perf_counter() - start,
                               "estimator_s": _monitor.seconds_per_point * result.n_measured,
                               "n_measured": result.n_measured})
                return result

            monitor.check = timed_check
    return hook_seconds, checks


def fit_once(name: str, cfg: Config, train, heldout, module_class, max_steps: int | None = None,
             step_cadence: int | None = None) -> dict:
    """One timed ``trainer.fit`` of configuration ``name``."""
    import lightning.pytorch as pl

    run_cfg = cfg if step_cadence is None else Config(**{**asdict(cfg), "step_cadence": step_cadence})
    steps = max_steps if max_steps is not None else cfg.max_steps
    with tempfile.TemporaryDirectory(prefix="mmh_bench_") as tmp:
        callbacks = make_callbacks(name, run_cfg, train, heldout, Path(tmp))
        hook_seconds, checks = instrument(callbacks)
        model = module_class(cfg)
        trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp,
                             callbacks=callbacks)
        loader = make_loader(train, cfg)
        start = time.perf_counter()
        trainer.fit(model, loader)
        wall = time.perf_counter() - start
        params = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
    return {"config": name, "wall_s": wall, "steps": trainer.global_step, "stopped_early": trainer.global_step < steps,
            "checks": checks, "hook_s": hook_seconds, "callbacks_total_s": sum(hook_seconds.values()),
            "_params": params}


# ---------------------------------------------------------------- report


def summarize(runs: dict[str, list[dict]], cfg: Config, plain_params: Tensor) -> list[dict]:
    plain = runs["plain"]
    plain_med = statistics.median(r["wall_s"] for r in plain)
    plain_min = min(r["wall_s"] for r in plain)
    rows = []
    for name, rs in runs.items():
        walls = [r["wall_s"] for r in rs]
        med, mn = statistics.median(walls), min(walls)
        paired = [r["wall_s"] / p["wall_s"] for r, p in zip(rs, plain)]
        checks = [c for r in rs for c in r["checks"]]
        first = [r["checks"][0] for r in rs if r["checks"]]
        later = [c for r in rs for c in r["checks"][1:]]
        row = {
            "config": name, "label": CONFIGS[name].format(step_cadence=cfg.step_cadence), "repeats": len(rs),
            "times_s": walls, "median_s": med, "min_s": mn,
            "median_over_plain": med / plain_med, "min_over_plain": mn / plain_min,
            "paired_ratio_median": statistics.median(paired),
            "steps": rs[0]["steps"], "stopped_early": any(r["stopped_early"] for r in rs),
            "checks_per_run": len(rs[0]["checks"]),
            "callbacks_median_s": statistics.median(r["callbacks_total_s"] for r in rs),
            "callbacks_over_plain_median": statistics.median(r["callbacks_total_s"] for r in rs) / plain_med,
            "hook_s_median": {k: statistics.median(r["hook_s"].get(k, 0.0) for r in rs)
                              for k in sorted({k for r in rs for k in r["hook_s"]})},
            "same_weights_as_plain": all(torch.equal(r["_params"], plain_params) for r in rs),
        }
        if checks:
            def med_of(key: str, items: list[dict]) -> float | None:
                values = [c[key] for c in items if key in c]
                return statistics.median(values) if values else None

            row.update({
                "first_check_s_median": med_of("check_s", first),
                "later_check_s_median": med_of("check_s", later) if later else None,
                "later_estimator_s_median": med_of("estimator_s", later) if later else None,
                "later_log_and_audit_s_median": med_of("log_and_audit_s", later) if later else None,
                "first_log_and_audit_s_median": med_of("log_and_audit_s", first),
            })
        rows.append(row)
    return rows


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(rows: list[dict], cfg: Config) -> str:
    head = (f"{'configuration':<33}{'R':>2}{'median s':>10}{'min s':>9}{'med/plain':>11}{'min/plain':>11}"
            f"{'paired':>8}{'hooks/plain':>13}{'checks':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['label']:<33}{r['repeats']:>2}{r['median_s']:>10.2f}{r['min_s']:>9.2f}"
                     f"{r['median_over_plain']:>10.3f}x{r['min_over_plain']:>10.3f}x{r['paired_ratio_median']:>7.3f}x"
                     f"{100 * r['callbacks_over_plain_median']:>12.2f}%{r['checks_per_run']:>8}")
    lines += ["", "Seconds per check (median over runs; the first check also computes the data's reference LID*):"]
    head = (f"{'configuration':<33}{'first check':>12}{'later checks':>14}{'  of which FLIPD':>17}"
            f"{'log+audit':>11}")
    lines += [head, "-" * len(head)]
    for r in rows:
        if "first_check_s_median" not in r:
            continue
        audit = r.get("later_log_and_audit_s_median") or r.get("first_log_and_audit_s_median")
        lines.append(f"{r['label']:<33}{fmt(r['first_check_s_median'], '>12.4f')}"
                     f"{fmt(r.get('later_check_s_median'), '>14.4f')}{fmt(r.get('later_estimator_s_median'), '>17.4f')}"
                     f"{fmt(audit, '>11.4f')}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = benchmark_parser(__doc__, DEFAULT_OUT, "tiny sizes, R = 1: a smoke run of a few seconds")
    p.add_argument("--seed", type=int, default=None, help="data, weights, noise and loader order (default 0)")
    p.add_argument("--repeats", type=int, default=None, help="runs R of every configuration (default 4; 1 with --quick)")
    p.add_argument("--steps-per-epoch", type=int, default=None, help="batches per epoch (default 500)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default 4)")
    p.add_argument("--step-cadence", type=int, default=None, help="every_n_steps of the monitor_steps row (default 100)")
    p.add_argument("--sigma", default=None, help="the monitor's sigma: a number, or 'auto' (its default, 3 levels "
                   "from the training set's spacing); default 0.17")
    p.add_argument("--configs", default=None,
                   help=f"comma-separated subset of {','.join(CONFIGS)} (plain is always run)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    cfg = Config.quick() if args.quick else Config()
    for name in ("seed", "repeats", "steps_per_epoch", "epochs", "step_cadence"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    if args.sigma is not None:
        cfg.sigma = args.sigma if args.sigma == "auto" else float(args.sigma)
    names = list(CONFIGS)
    if args.configs:
        wanted = {n.strip() for n in args.configs.split(",")} | {"plain"}
        unknown = wanted - set(CONFIGS)
        if unknown:
            raise SystemExit(f"unknown configurations {sorted(unknown)}; choose from {list(CONFIGS)}")
        names = [n for n in CONFIGS if n in wanted]
    torch.set_num_threads(1)
    started = time.perf_counter()

    command = "python benchmarks/monitor_overhead.py" + (" " + shlex.join(argv) if argv else "")
    machine = machine_info()
    code = code_version(Path(__file__).resolve().parent.parent)
    import lightning

    machine["lightning"] = lightning.__version__
    print_run_header(command, code, machine, f"seed: {cfg.seed}", libraries=("lightning",))

    train, heldout, n_dup = make_data(cfg)
    module_class = build_module_class()
    n_params = sum(p.numel() for p in module_class(cfg).parameters())
    print(f"model: ε-MLP (2 hidden SiLU layers of width {cfg.width}, {n_params:,} parameters), DDPM t < "
          f"{cfg.max_timestep}, Adam lr {cfg.lr}")
    print(f"data:  affine mixture dims {cfg.dims} in R^{cfg.ambient_dim}: {len(train.x)} training points "
          f"({n_dup} of them in duplicate groups), {len(heldout.x)} held-out; batch {cfg.batch}")
    print(f"run:   {cfg.epochs} epochs x {cfg.steps_per_epoch} steps = {cfg.max_steps} steps; R = {cfg.repeats}, "
          f"interleaved; monitor sigma = {cfg.sigma}")

    result: dict[str, Any] = {
        "benchmark": "monitor_overhead", "command": command, "code": code, "seed": cfg.seed, "quick": args.quick,
        "config": asdict(cfg), "machine": machine, "goals": {"monitor_over_plain_max": GOAL_MONITOR_OVER_PLAIN_MAX},
        "data": {"n_train": len(train.x), "n_duplicated": n_dup, "n_heldout": len(heldout.x)},
        "model": {"parameters": n_params, "width": cfg.width},
    }

    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):  # the caller's global RNG is left alone
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*(GPU available|TPU available|HPU available).*")
        warnings.filterwarnings("ignore", category=UserWarning, module="lightning")
        import logging

        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
        # Warm-up (untimed): imports, Lightning's first-fit costs, every callback once.
        fit_once("all", cfg, train, heldout, module_class, max_steps=min(cfg.max_steps, 2 * cfg.step_cadence),
                 step_cadence=max(1, cfg.step_cadence // 2))
        runs: dict[str, list[dict]] = {name: [] for name in names}
        for r in range(cfg.repeats):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                run = fit_once(name, cfg, train, heldout, module_class)
                runs[name].append(run)
                print(f"  round {r + 1}/{cfg.repeats}  {name:<15} {run['wall_s']:8.2f} s  "
                      f"({len(run['checks'])} checks, callbacks {run['callbacks_total_s']:.2f} s)", flush=True)

    plain_params = runs["plain"][0]["_params"]
    rows = summarize(runs, cfg, plain_params)
    by_name = {r["config"]: r for r in rows}
    plain_step_s = by_name["plain"]["median_s"] / cfg.max_steps
    result["plain_seconds_per_step_median"] = plain_step_s
    print("\n" + format_table(rows, cfg))

    summary_lines = [f"\nplain run: {1e3 * plain_step_s:.3f} ms per step (median wall time / {cfg.max_steps} steps)"]
    goal: dict[str, Any] = {}
    if "monitor" in by_name:
        m = by_name["monitor"]
        check_s = m.get("later_check_s_median") or m["first_check_s_median"]
        check_total = check_s + (m.get("later_log_and_audit_s_median") or m.get("first_log_and_audit_s_median") or 0.0)
        break_even = check_total / ((GOAL_MONITOR_OVER_PLAIN_MAX - 1) * plain_step_s)
        goal = {"median": m["median_over_plain"], "min": m["min_over_plain"], "paired": m["paired_ratio_median"],
                "hooks_over_plain": m["callbacks_over_plain_median"],
                "met_median": m["median_over_plain"] <= GOAL_MONITOR_OVER_PLAIN_MAX,
                "met_min": m["min_over_plain"] <= GOAL_MONITOR_OVER_PLAIN_MAX,
                "met_hooks": 1 + m["callbacks_over_plain_median"] <= GOAL_MONITOR_OVER_PLAIN_MAX,
                "later_check_with_audit_s": check_total,
                "steps_between_checks_for_3_percent": break_even}
        summary_lines += [
            f"goal: monitor at the default cadence / plain <= {GOAL_MONITOR_OVER_PLAIN_MAX}: median "
            f"{m['median_over_plain']:.3f} ({'met' if goal['met_median'] else 'MISSED'}), min {m['min_over_plain']:.3f} "
            f"({'met' if goal['met_min'] else 'MISSED'}), paired {m['paired_ratio_median']:.3f}; "
            f"time inside the callback's hooks: {100 * m['callbacks_over_plain_median']:.2f} % of the plain run "
            f"({'met' if goal['met_hooks'] else 'MISSED'})",
            f"a later check (measure + labels + log + audit CSV) takes {check_total:.4f} s = "
            f"{check_total / plain_step_s:.1f} plain steps: 3 % overhead at one check every {break_even:.0f} steps",
        ]
    result["goal_monitor"] = goal
    same = {r["config"]: r["same_weights_as_plain"] for r in rows}
    summary_lines.append("same final weights as the plain run: " + ", ".join(f"{k} {'yes' if v else 'no'}"
                                                                            for k, v in same.items() if k != "plain"))
    stopped = [r["config"] for r in rows if r["stopped_early"]]
    if stopped:
        summary_lines.append(f"WARNING: stopped before max_steps: {stopped}")
    print("\n".join(summary_lines))

    for rs in runs.values():
        for run in rs:
            run.pop("_params")
    result["rows"] = rows
    result["runs"] = runs
    try:
        result["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    write_output(result, args.out, started)
    return result


if __name__ == "__main__":
    main()
