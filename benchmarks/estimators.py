"""Cost of the LID estimators against one plain forward pass of the denoiser (issue 2).

    python benchmarks/estimators.py                  # full run, a few minutes on 2 CPU cores
    python benchmarks/estimators.py --quick          # tiny sizes, a few seconds (the test runs this)
    python benchmarks/estimators.py --device cuda    # CUDA only (adds bf16 vs fp32)

For each model (MLP ε-models at D = 64 and D = 100 wrapped with ``vp_denoiser``, and a small diffusers
``UNet2DModel`` on 1×16×16 wrapped with ``diffusers_denoiser(unet, DDPMScheduler())``) and one fixed,
seeded batch of points, it times

  - one plain forward pass of the denoiser under ``torch.no_grad()``,
  - one forward plus one VJP written by hand with ``torch.autograd.grad`` (the floor FLIPD cannot beat),
  - FLIPD with one Rademacher probe, reverse mode (the default) and, for the MLPs, forward mode,
  - FLIPD with Hutchinson over several probes and with the exact trace (D products),
  - the normal-bundle estimator (K = 4·D noisy copies and one K × D SVD per point),

and prints per-point times (median and min of R repeats after one warm-up call; the light calls are
timed round-robin, then the heavy ones — exact trace, normal bundle — so that their large buffers do not
evict the light calls' caches), the ratios that issue 2 sets goals for, and writes everything to JSON. Random weights are fine: the cost
does not depend on training. With CUDA available it repeats the table there and compares bf16 with fp32.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

import mmh_train
from mmh_train.context import fell_back

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling helpers, also when loaded by path
from _timing import (Timing, benchmark_parser, code_version, cuda_sync, machine_info, print_run_header,  # noqa: E402
                     time_round_robin, write_output)

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "estimators.json"

#: Issue-2 goals, checked on the printed ratios (never in tests: timings do not belong there).
GOAL_FLIPD1_OVER_FORWARD_MAX = 2.5
GOAL_NORMAL_BUNDLE_OVER_FLIPD1_MIN = 100.0


@dataclass
class Config:
    """Sizes of one run; ``--quick`` swaps in :meth:`quick`."""

    batch: int = 64
    repeats: int = 15  # light rows; cheap, and the shared cores are noisy
    slow_repeats: int = 3  # the UNet's exact trace and every normal-bundle row
    sigma: float = 0.17  # VE σ, the usual fixed choice for unit-variance data (science.md §3)
    seed: int = 0
    hutchinson_probes: int = 8
    mlp_dims: tuple[int, ...] = (64, 100)
    mlp_width: int = 256
    unet_size: int = 16
    unet_channels: tuple[int, ...] = (32, 64)
    unet_groups: int = 8
    unet_exact_batch: int = 8  # the exact trace of the UNet runs on the first points of the batch only
    unet_normal_bundle_batch: int = 2  # so does its normal bundle (K = 4·256 = 1024 UNet passes per point)
    large_batch: int = 1024  # diagnostic: FLIPD(1)/forward for the MLPs with the fixed per-call cost amortized

    @classmethod
    def quick(cls) -> "Config":
        return cls(batch=4, repeats=1, slow_repeats=1, mlp_dims=(8,), mlp_width=32, unet_size=8,
                   unet_channels=(8, 16), unet_groups=4, unet_exact_batch=4, unet_normal_bundle_batch=2,
                   large_batch=16)


# ---------------------------------------------------------------- models


class EpsMLP(nn.Module):
    """ε̂(y, t) of a VP model: sinusoidal embedding of t ∈ [0, 1], concatenated to y, through a 3-hidden-layer MLP."""

    def __init__(self, dim: int, width: int = 256, embed: int = 32) -> None:
        super().__init__()
        self.embed = embed
        self.net = nn.Sequential(nn.Linear(dim + embed, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, width), nn.SiLU(), nn.Linear(width, dim))

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        half = self.embed // 2
        freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=y.device, dtype=y.dtype) / half)
        angles = 1000.0 * t.to(y.dtype)[:, None] * freqs[None]
        return self.net(torch.cat([y, angles.sin(), angles.cos()], dim=1))


class ScaleNet(nn.Module):
    """ε̂(y, t) = w·y: a one-parameter network, so that FLIPD's time is the library's fixed cost per call."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.5))

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        return self.w * y


@dataclass
class Model:
    name: str
    kind: str  # "mlp" or "unet"
    shape: tuple[int, ...]  # one point's shape
    denoiser: Any
    description: str
    parameters: int

    @property
    def dim(self) -> int:
        return math.prod(self.shape)


def build_models(cfg: Config, device: torch.device) -> list[Model]:
    """The MLPs and the UNet, initialised from ``cfg.seed`` without touching the caller's global RNG."""
    from diffusers import DDPMScheduler, UNet2DModel

    models = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        for dim in cfg.mlp_dims:
            net = EpsMLP(dim, cfg.mlp_width).to(device)
            models.append(Model(f"mlp-d{dim}", "mlp", (dim,), mmh_train.vp_denoiser(net),
                                f"EpsMLP(D={dim}, width={cfg.mlp_width}, 3 hidden SiLU layers) + vp_denoiser",
                                sum(p.numel() for p in net.parameters())))
        s, (c0, c1) = cfg.unet_size, cfg.unet_channels
        unet = UNet2DModel(sample_size=s, in_channels=1, out_channels=1, layers_per_block=1,
                           block_out_channels=cfg.unet_channels, norm_num_groups=cfg.unet_groups,
                           down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "UpBlock2D")).to(device)
        models.append(Model(f"unet-{s}x{s}", "unet", (1, s, s), mmh_train.diffusers_denoiser(unet, DDPMScheduler()),
                            f"diffusers UNet2DModel 1x{s}x{s}, block_out_channels=({c0}, {c1}), layers_per_block=1, "
                            f"norm_num_groups={cfg.unet_groups}, attention at the {s // 2}x{s // 2} level and in the "
                            f"mid block + diffusers_denoiser(unet, DDPMScheduler())",
                            sum(p.numel() for p in unet.parameters())))
    return models


# ---------------------------------------------------------------- the timed calls


@dataclass
class Case:
    """One timed call: an estimator on the first ``batch`` points."""

    key: str
    label: str
    batch: int
    products: str  # Jacobian products (or network passes) per point, as printed
    slow: bool  # fewer repeats (cfg.slow_repeats)
    call: Callable[[], Any]
    trace_mode: str | None = None  # set for FLIPD rows: whose vmap fall-back to report
    heavy: bool = False  # large buffers: timed in a second round-robin group, after the light calls


def cases_for(model: Model, x: Tensor, cfg: Config) -> list[Case]:
    den, sigma, dim = model.denoiser, cfg.sigma, model.dim
    seed = cfg.seed + 1

    def probes() -> torch.Generator:  # same probes for every call and mode
        return torch.Generator(device=x.device).manual_seed(seed)

    def forward() -> Tensor:
        with torch.no_grad():
            return den(x, torch.full((x.shape[0],), sigma, dtype=torch.float64, device=x.device))

    def vjp_by_hand() -> Tensor:
        """One forward with grad and one backward for a Rademacher probe: vᵀ(∂D/∂x)v, no library code."""
        with torch.enable_grad():
            z = x.detach().requires_grad_(True)
            out = den(z, torch.full((x.shape[0],), sigma, dtype=torch.float64, device=x.device))
            v = torch.randint(0, 2, x.shape, generator=probes(), device=x.device).mul_(2).sub_(1).to(x.dtype)
            (jt_v,) = torch.autograd.grad(out, z, v)
        return (jt_v * v).flatten(1).sum(1)

    nb_batch = x.shape[0] if model.kind == "mlp" else min(cfg.unet_normal_bundle_batch, x.shape[0])
    exact_batch = x.shape[0] if model.kind == "mlp" else min(cfg.unet_exact_batch, x.shape[0])
    x_exact, x_nb = x[:exact_batch], x[:nb_batch]
    k = cfg.hutchinson_probes
    cases = [
        Case("forward", "forward (no_grad)", len(x), "0", False, forward),
        Case("vjp_by_hand", "forward + 1 VJP by hand", len(x), "1", False, vjp_by_hand),
        Case("flipd_1probe_reverse", "FLIPD 1 probe, reverse", len(x), "1", False,
             lambda: mmh_train.flipd(den, x, sigma, n_probes=1, generator=probes()), "reverse"),
    ]
    if model.kind == "mlp":  # forward-mode JVPs fail through diffusers' UNet on CPU (design.md)
        cases.append(Case("flipd_1probe_forward", "FLIPD 1 probe, forward", len(x), "1", False,
                          lambda: mmh_train.flipd(den, x, sigma, n_probes=1, generator=probes(), mode="forward"),
                          "forward"))
    cases += [
        Case(f"hutchinson_{k}", f"Hutchinson {k} probes", len(x), str(k), False,
             lambda: mmh_train.flipd(den, x, sigma, n_probes=k, generator=probes()), "reverse"),
        Case("flipd_exact", "FLIPD exact trace", exact_batch, str(dim), model.kind != "mlp",
             lambda: mmh_train.flipd(den, x_exact, sigma, n_probes=None), "reverse", heavy=True),
        Case("normal_bundle", "normal bundle K=4D", nb_batch, f"{4 * dim} fwd", True,
             lambda: mmh_train.normal_bundle_lid(den, x_nb, sigma, generator=probes()), heavy=True),
    ]
    return cases


def points(model: Model, batch: int, seed: int, device: torch.device) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *model.shape), generator=g).to(device)


def ratio(rows: dict[str, dict], num: str, den: str) -> tuple[float, float] | None:
    if num not in rows or den not in rows:
        return None
    a, b = rows[num], rows[den]
    return a["median_s_per_point"] / b["median_s_per_point"], a["min_s_per_point"] / b["min_s_per_point"]


def run_device(models: list[Model], cfg: Config, device: torch.device) -> tuple[list[dict], list[dict], list[str]]:
    """Times every case of every model on ``device``; returns rows, ratios and notes."""
    sync = cuda_sync(device)
    all_rows, ratios, notes = [], [], []
    for model in models:
        x = points(model, cfg.batch, cfg.seed, device)
        cases = cases_for(model, x, cfg)
        repeats = {c.key: cfg.slow_repeats if c.slow else cfg.repeats for c in cases}
        timings = {}
        for heavy in (False, True):  # the D-product and K-copy calls are timed after the light ones: their
            group = [c for c in cases if c.heavy == heavy]  # large buffers would evict the small calls' caches
            timings.update(time_round_robin({c.key: c.call for c in group}, {c.key: repeats[c.key] for c in group},
                                            sync=sync))
        rows = {}
        for c in cases:
            t: Timing = timings[c.key]
            looped = None
            if c.trace_mode is not None:
                looped = fell_back(model.denoiser.modules(), ("loop", "fp32", c.trace_mode, device.type))
            rows[c.key] = {
                "device": device.type, "model": model.name, "dim": model.dim, "estimator": c.key, "label": c.label,
                "batch": c.batch, "products_per_point": c.products, "repeats": t.repeats,
                "median_s_per_point": t.median / c.batch, "min_s_per_point": t.min / c.batch,
                "median_s_per_call": t.median, "min_s_per_call": t.min, "times_s": t.times,
                "products_looped": looped,
            }
        all_rows += rows.values()
        if any(r["products_looped"] for r in rows.values()):
            notes.append(f"{model.name} on {device.type}: torch.func.vmap was refused inside the network, so the "
                         f"library looped over the Jacobian products (one backward pass per probe/basis vector).")
        if model.kind == "unet":
            notes.append(f"{model.name} on {device.type}: exact trace timed on the first "
                         f"{rows['flipd_exact']['batch']} points, normal bundle on the first "
                         f"{rows['normal_bundle']['batch']} (K = {4 * model.dim} UNet passes per point); "
                         f"forward mode skipped (forward-mode JVPs fail through diffusers' GroupNorm/attention).")
        specs = [
            ("flipd1_over_forward", "FLIPD(1) / forward", "flipd_1probe_reverse", "forward",
             f"<= {GOAL_FLIPD1_OVER_FORWARD_MAX:g}x", lambda r: r <= GOAL_FLIPD1_OVER_FORWARD_MAX),
            ("flipd1_over_vjp_by_hand", "FLIPD(1) / hand VJP", "flipd_1probe_reverse", "vjp_by_hand", None, None),
            ("forward_mode_over_reverse_mode", "FLIPD(1) fwd / rev mode", "flipd_1probe_forward",
             "flipd_1probe_reverse", None, None),
            ("exact_over_hutchinson1", "exact / Hutchinson(1)", "flipd_exact", "flipd_1probe_reverse",
             f"(D = {model.dim} products)", None),
            ("normal_bundle_over_flipd1", "normal bundle / FLIPD(1)", "normal_bundle", "flipd_1probe_reverse",
             f">= {GOAL_NORMAL_BUNDLE_OVER_FLIPD1_MIN:g}x", lambda r: r >= GOAL_NORMAL_BUNDLE_OVER_FLIPD1_MIN),
        ]
        for key, label, num, den, goal, meets in specs:
            value = ratio(rows, num, den)
            if value is None:
                continue
            entry = {"device": device.type, "model": model.name, "ratio": key, "label": label,
                     "median": value[0], "min": value[1], "goal": goal}
            if meets is not None:
                entry["meets_goal_median"], entry["meets_goal_min"] = bool(meets(value[0])), bool(meets(value[1]))
            ratios.append(entry)
    return all_rows, ratios, notes


def batch_diagnostics(models: list[Model], cfg: Config, device: torch.device) -> list[dict]:
    """FLIPD(1)/forward of each MLP at a large batch: how much of the ratio is a fixed per-call cost."""
    out = []
    for model in models:
        if model.kind != "mlp":
            continue
        x = points(model, cfg.large_batch, cfg.seed, device)
        cases = {c.key: c for c in cases_for(model, x, cfg) if c.key in ("forward", "flipd_1probe_reverse")}
        t = time_round_robin({k: c.call for k, c in cases.items()}, {k: cfg.repeats for k in cases},
                             sync=cuda_sync(device))
        fwd, fl = t["forward"], t["flipd_1probe_reverse"]
        out.append({"device": device.type, "model": model.name, "batch": cfg.large_batch,
                    "forward_median_s_per_point": fwd.median / len(x), "forward_min_s_per_point": fwd.min / len(x),
                    "flipd1_median_s_per_point": fl.median / len(x), "flipd1_min_s_per_point": fl.min / len(x),
                    "flipd1_over_forward_median": fl.median / fwd.median, "flipd1_over_forward_min": fl.min / fwd.min})
    return out


def fixed_cost(cfg: Config, device: torch.device) -> dict:
    """Per-call times with a one-parameter network: what FLIPD costs beyond the network's own passes."""
    dim = cfg.mlp_dims[0]
    net = ScaleNet().to(device)
    model = Model(f"scale-d{dim}", "mlp", (dim,), mmh_train.vp_denoiser(net), "w*y + vp_denoiser", 1)
    x = points(model, cfg.batch, cfg.seed, device)
    keys = ("forward", "vjp_by_hand", "flipd_1probe_reverse", "flipd_1probe_forward")
    cases = {c.key: c for c in cases_for(model, x, cfg) if c.key in keys}
    t = time_round_robin({k: c.call for k, c in cases.items()}, {k: cfg.repeats for k in cases},
                         sync=cuda_sync(device))
    return {"device": device.type, "model": model.name, "batch": len(x),
            **{f"{k}_median_s_per_call": t[k].median for k in keys},
            **{f"{k}_min_s_per_call": t[k].min for k in keys}}


def precision_comparison(models: list[Model], cfg: Config, device: torch.device) -> list[dict]:
    """FLIPD(1 probe) under bf16 autocast against fp32 on ``device``: throughput and mean |ΔLID|."""
    out = []
    for model in models:
        x = points(model, cfg.batch, cfg.seed, device)
        den = model.denoiser

        def run(precision: str) -> Tensor:
            g = torch.Generator(device=device).manual_seed(cfg.seed + 1)
            return mmh_train.flipd(den, x, cfg.sigma, n_probes=1, generator=g, precision=precision)

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t = time_round_robin({"fp32": lambda: run("fp32"), "bf16": lambda: run("bf16")},
                                 {"fp32": cfg.repeats, "bf16": cfg.repeats}, sync=cuda_sync(device))
            lid32, lid16 = run("fp32").double(), run("bf16").double()
        out.append({
            "device": device.type, "model": model.name, "batch": len(x),
            "fp32_median_s_per_point": t["fp32"].median / len(x), "bf16_median_s_per_point": t["bf16"].median / len(x),
            "bf16_over_fp32_throughput_median": t["fp32"].median / t["bf16"].median,
            "bf16_over_fp32_throughput_min": t["fp32"].min / t["bf16"].min,
            "mean_abs_delta_lid": (lid16 - lid32).abs().mean().item(),
            "mean_abs_lid_fp32": lid32.abs().mean().item(),
            "bf16_fell_back_to_fp32": fell_back(den.modules(), ("half", "bf16", device.type)),
            "warnings": sorted({str(w.message).splitlines()[0][:200] for w in caught}),
        })
    return out


# ---------------------------------------------------------------- report


def format_table(rows: list[dict], ratios: list[dict], diagnostics: list[dict], fixed: dict) -> str:
    lines = []
    head = (f"{'model':<11}{'estimator':<27}{'B':>4}{'products/pt':>13}{'R':>3}"
            f"{'median ms/pt':>14}{'min ms/pt':>12}  products")
    lines += [head, "-" * len(head)]
    for r in rows:
        path = {None: "", True: "looped", False: "vmapped"}[r["products_looped"]]
        if r["products_per_point"] == "1" and r["products_looped"] is not None:
            path = "single product, no vmap"  # the engine skips vmap for one tangent
        lines.append(f"{r['model']:<11}{r['label']:<27}{r['batch']:>4}{r['products_per_point']:>13}{r['repeats']:>3}"
                     f"{1e3 * r['median_s_per_point']:>14.4g}{1e3 * r['min_s_per_point']:>12.4g}  {path}")
    lines.append("")
    head = f"{'model':<11}{'ratio (per point)':<27}{'median':>10}{'min':>10}  {'goal':<22}met (median/min)"
    lines += [head, "-" * len(head)]
    for q in ratios:
        met = ""
        if "meets_goal_median" in q:
            met = f"{'yes' if q['meets_goal_median'] else 'NO'}/{'yes' if q['meets_goal_min'] else 'NO'}"
        lines.append(f"{q['model']:<11}{q['label']:<27}{q['median']:>9.3g}x{q['min']:>9.3g}x  {q['goal'] or '':<22}{met}")
    if diagnostics:
        lines.append("")
        head = f"{'model':<11}{'at batch':>9}{'forward ms/pt':>15}{'FLIPD(1) ms/pt':>16}{'ratio median':>14}{'ratio min':>11}"
        lines += ["Diagnostic: FLIPD(1)/forward at a large batch (fixed per-call cost amortized), median of R:",
                  head, "-" * len(head)]
        for d in diagnostics:
            lines.append(f"{d['model']:<11}{d['batch']:>9}{1e3 * d['forward_median_s_per_point']:>15.4g}"
                         f"{1e3 * d['flipd1_median_s_per_point']:>16.4g}{d['flipd1_over_forward_median']:>13.3g}x"
                         f"{d['flipd1_over_forward_min']:>10.3g}x")
    labels = {"forward": "forward", "vjp_by_hand": "fwd + hand VJP", "flipd_1probe_reverse": "FLIPD(1) reverse",
              "flipd_1probe_forward": "FLIPD(1) forward"}
    lines += ["", f"Diagnostic: fixed cost per call with a one-parameter network (eps = w*y), B = {fixed['batch']}, "
                  f"D = {fixed['model'].split('-d')[-1]}, median (min) ms per call:",
              "  " + ", ".join(f"{label} {1e3 * fixed[f'{k}_median_s_per_call']:.3g} "
                               f"({1e3 * fixed[f'{k}_min_s_per_call']:.3g})" for k, label in labels.items())]
    return "\n".join(lines)


def format_precision(entries: list[dict]) -> str:
    head = (f"{'model':<11}{'fp32 ms/pt':>12}{'bf16 ms/pt':>12}{'bf16/fp32 throughput':>22}"
            f"{'mean |dLID|':>13}{'mean |LID|':>12}  fell back")
    lines = [head, "-" * len(head)]
    for e in entries:
        lines.append(f"{e['model']:<11}{1e3 * e['fp32_median_s_per_point']:>12.4g}{1e3 * e['bf16_median_s_per_point']:>12.4g}"
                     f"{e['bf16_over_fp32_throughput_median']:>21.3g}x{e['mean_abs_delta_lid']:>13.4g}"
                     f"{e['mean_abs_lid_fp32']:>12.4g}  {e['bf16_fell_back_to_fp32']}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = benchmark_parser(__doc__, DEFAULT_OUT, "tiny sizes, R = 1: a smoke run of a few seconds")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: CPU, plus CUDA (with bf16 vs fp32) when available; cpu or cuda: that device only")
    p.add_argument("--seed", type=int, default=None, help="points, weights and probes (default 0)")
    p.add_argument("--batch", type=int, default=None, help="points per call (default 64; 4 with --quick)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats R of the light calls (default 15; 1 with --quick)")
    p.add_argument("--slow-repeats", type=int, default=None,
                   help="repeats of the slow rows: UNet exact trace, normal bundle (default 3; 1 with --quick)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    cfg = Config.quick() if args.quick else Config()
    for name in ("seed", "batch", "repeats", "slow_repeats"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    torch.set_num_threads(1)
    started = time.perf_counter()

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False on this machine.")
    devices = [torch.device("cpu")] if args.device in ("auto", "cpu") else []
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices.append(torch.device("cuda"))

    command = "python benchmarks/estimators.py" + (" " + shlex.join(argv) if argv else "")
    machine = machine_info()
    code = code_version(Path(__file__).resolve().parent.parent)
    print_run_header(command, code, machine, f"seed: {cfg.seed}")
    print(f"sigma = {cfg.sigma}, batch = {cfg.batch}, R = {cfg.repeats} (slow rows {cfg.slow_repeats}), "
          f"Hutchinson probes = {cfg.hutchinson_probes}")

    result: dict[str, Any] = {
        "benchmark": "estimators", "command": command, "code": code, "seed": cfg.seed, "quick": args.quick,
        "config": asdict(cfg), "machine": machine,
        "goals": {"flipd1_over_forward_max": GOAL_FLIPD1_OVER_FORWARD_MAX,
                  "normal_bundle_over_flipd1_min": GOAL_NORMAL_BUNDLE_OVER_FLIPD1_MIN},
        "models": [], "rows": [], "ratios": [], "diagnostics": [], "fixed_cost": [], "notes": [],
    }
    for device in devices:
        models = build_models(cfg, device)
        if not result["models"]:
            result["models"] = [{"name": m.name, "dim": m.dim, "shape": list(m.shape), "parameters": m.parameters,
                                 "description": m.description} for m in models]
            for m in models:
                print(f"  {m.name}: {m.description} ({m.parameters:,} parameters)")
        rows, ratios, notes = run_device(models, cfg, device)
        diagnostics = batch_diagnostics(models, cfg, device)
        fixed = fixed_cost(cfg, device)
        result["fixed_cost"].append(fixed)
        result["rows"] += rows
        result["ratios"] += ratios
        result["diagnostics"] += diagnostics
        result["notes"] += notes
        print(f"\n== {device.type} ==")
        print(format_table(rows, ratios, diagnostics, fixed))
        for note in notes:
            print(f"note: {note}")
        if device.type == "cuda":
            entries = precision_comparison(models, cfg, device)
            result["gpu"] = {"ran": True, "device": machine["cuda_device"], "precision": entries}
            print("\nFLIPD(1 probe), bf16 autocast vs fp32 on CUDA (same points and probes):")
            print(format_precision(entries))
    if "gpu" not in result:
        reason = ("no GPU on this machine (torch.cuda.is_available() is False)" if not torch.cuda.is_available()
                  else "--device cpu")
        result["gpu"] = {"ran": False, "reason": reason}
        print(f"\nGPU part skipped: {reason}.")

    write_output(result, args.out, started)
    return result


if __name__ == "__main__":
    main()
