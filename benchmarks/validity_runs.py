"""Trains and measures the validity suite's runs (one file per cell and seed); ``validity.py`` judges them.

    python benchmarks/validity_runs.py                 # every cell, its seeds (about an hour on 2 CPU cores)
    python benchmarks/validity_runs.py --cells toy     # the vector cells only; --cells digits16/unet/natural ...
    python benchmarks/validity_runs.py --quick         # four small cells, one seed (the test runs this)

A run that already has its file is skipped (delete ``benchmarks/results/validity/`` to measure anew). See
``_validity_scenarios.py`` for the data, models and families.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _validity_scenarios as S  # noqa: E402

RUNS = Path(__file__).resolve().parent / "results" / "validity"

#: (data, model, family, seeds). Seeds 0–2 (the UNet: 0–1, a run takes minutes).
CELLS: list[tuple[str, str, str, tuple[int, ...]]] = [
    *[("digits16", "unet", f, (0, 1)) for f in ("oversample", "natural", "generalizing")],
    *[("mix10", "mlp", f, (0, 1, 2)) for f in ("oversample", "duplicates", "conditional", "natural", "generalizing")],
    *[("mix10", "mlp_fm", f, (0, 1, 2)) for f in ("oversample", "duplicates", "generalizing")],
    ("mix10", "oracle", "generalizing", (0, 1, 2)),
    ("far12", "mlp", "oversample_far", (0, 1, 2)),
    *[("mix32", "mlp", f, (0, 1, 2)) for f in ("oversample", "duplicates", "generalizing")],
    *[("mix64", "mlp", f, (0, 1, 2)) for f in ("oversample", "generalizing")],
    *[("digits8", "mlp", f, (0, 1, 2)) for f in ("oversample", "duplicates", "conditional", "natural", "generalizing")],
    *[("digits16", "mlp", f, (0, 1, 2)) for f in ("oversample", "duplicates", "generalizing")],
    ("digits32", "mlp", "oversample", (0, 1, 2)),
]
QUICK_CELLS = [("mix10", "mlp", "oversample", (0,)), ("mix10", "mlp_fm", "duplicates", (0,)),
               ("mix10", "oracle", "generalizing", (0,)), ("digits8", "mlp", "conditional", (0,))]


def run_file(out: Path, data: str, model: str, family: str, seed: int) -> Path:
    return out / f"{data}_{model}_{family}_s{seed}.pt"


def selected(cells: list, patterns: Optional[list[str]]) -> list:
    if not patterns:
        return cells
    toy = ("mix", "far")
    keep = []
    for cell in cells:
        name = "/".join(cell[:3])
        for p in patterns:
            if (p == "toy" and name.startswith(toy)) or (p == "digits" and name.startswith("digits")) or name.startswith(p):
                keep.append(cell)
                break
    return keep


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="four small cells, one seed")
    parser.add_argument("--cells", nargs="*", help="'toy', 'digits' or prefixes of data/model/family")
    parser.add_argument("--out", type=Path, default=None, help=f"run folder (default {RUNS}, quick: <it>-quick)")
    args = parser.parse_args(argv)
    out = args.out or (RUNS.with_name("validity-quick") if args.quick else RUNS)
    out.mkdir(parents=True, exist_ok=True)
    cells = selected(QUICK_CELLS if args.quick else CELLS, args.cells)
    if not cells:
        parser.error(f"--cells {args.cells} matches no cell")
    for data, model, family, seeds in cells:
        for seed in seeds:
            path = run_file(out, data, model, family, seed)
            if path.exists():
                continue
            start = time.perf_counter()
            record = S.run(data, model, family, seed, quick=args.quick)
            tmp = path.with_suffix(".tmp")
            torch.save(record, tmp)
            tmp.replace(path)
            print(f"{record['cell']:32s} seed {seed}  {time.perf_counter() - start:6.1f} s  planted copied "
                  f"{record['planted_memorized']:.2f}  others {record['others_memorized']:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
