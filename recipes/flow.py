"""Flow recipe: the toy or digits recipe trained by rectified flow and monitored through the flow view.

    python recipes/flow.py                      # toy data (default)
    python recipes/flow.py dataset=digits train.steps=2000

The model learns the velocity v = ε − x0 of x_t = (1 − t)·x0 + t·ε (diffusers' FlowMatch convention);
mmh_train sees it as the denoiser D(x; σ) = y − t·v̂ with σ = t / (1 − t) (rectified_flow_denoiser), so
the monitor, the labels, the remedies and the sampler are exactly those of the diffusion recipes.
Every other key is the chosen recipe's (see recipes/toy.py and recipes/digits.py).
"""

from __future__ import annotations

import sys

import digits
import toy
from common import exit_after

RECIPES = {"toy": toy.main, "digits": digits.main}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = [a.split("=", 1)[1] for a in argv if a.startswith("dataset=")]
    dataset = chosen[-1] if chosen else "toy"
    if dataset not in RECIPES:
        print(f"config error: dataset={dataset!r}; choose one of {sorted(RECIPES)}.", file=sys.stderr)
        return 2
    rest = [a for a in argv if not a.startswith("dataset=")]
    defaults = ["train.objective=rectified_flow", f"out_dir=runs/flow_{dataset}"]
    return RECIPES[dataset]([*defaults, *rest])


if __name__ == "__main__":
    exit_after(main)
