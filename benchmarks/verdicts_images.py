"""OD and DD labels on a 32×32 image set, with the monitor's default options and a model whose memorization is known.

    python benchmarks/verdicts_images.py            # 3 seeds, about a minute on 2 CPU cores
    python benchmarks/verdicts_images.py --quick    # one small seed (the test runs this)

Data: scikit-learn's digits upsampled (bilinear) to 1×32×32 images in [−1, 1]. Per seed, ``n_train``
training images, of which ``n_memorized`` are memorized by the model; ``n_dup_memorized`` of those and
``n_dup_free`` others are repeated ``copies`` more times in the training set (the data duplicate them);
``n_heldout`` other digits are held out.

Model: not a trained network but the exact denoiser (posterior mean) of

    p = π · (1/M) Σ_j δ(x_j)  +  (1 − π) · N(μ, Σ),

the M memorized images as point masses and a Gaussian fit to the other training images (their mean and
covariance, rank ≤ 63 on the upsampled digits' 64-d subspace, plus 1e-4·I). So the truth is known by
construction: the model collapses at the memorized images (DD where the data duplicate them, OD
elsewhere) and generalizes everywhere else, duplicated images included. The control is the same model
with π = 0 (it memorizes nothing): every label it gets is a false one.

Monitor: ``MemorizationMonitor(train, heldout)`` with nothing else set — σ from the spacing, the held-out
null, duplicate groups in the 16×16 comparison view; FLIPD with one Hutchinson probe (the monitor's default
above 64 dimensions). Reported: OD and DD precision and recall, the control's false labels, and the AUROC
of the ranking score for "memorized", per seed and pooled.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

import mmh_train
from mmh_train.data import load_digits
from mmh_train.memorization import DD, OD

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import auroc, precision_recall, print_table, start_output, write_output  # noqa: E402
from _timing import benchmark_parser  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "verdicts_images.json"
GOAL = 0.9  # OD and DD precision and recall


@dataclass
class Config:
    seeds: tuple = (0, 1, 2)
    n_train: int = 200
    n_memorized: int = 20
    n_dup_memorized: int = 8
    n_dup_free: int = 8
    copies: int = 3
    n_heldout: int = 200
    weight: float = 0.3  # π, the mass of the memorized images
    size: int = 32

    @classmethod
    def quick(cls) -> "Config":
        # ≥ 64 images outside the memorized ones: the control's Gaussian must span the upsampled digits' 64-d
        # subspace, or it is itself overfit (held-out images off its support read far above the training ones)
        return cls(seeds=(0,), n_train=100, n_memorized=6, n_dup_memorized=2, n_dup_free=2, n_heldout=40, size=16)


class PartialMemorizer:
    """The exact denoiser of π·(1/M)Σδ(x_j) + (1 − π)·N(μ, Σ) on flattened images (float64 inside)."""

    def __init__(self, memorized: Tensor, rest: Tensor, weight: float) -> None:
        flat = rest.flatten(1).double()
        self.memorized = memorized.flatten(1).double()
        self.mu = flat.mean(0)
        cov = torch.cov(flat.T) + 1e-4 * torch.eye(flat.shape[1], dtype=torch.float64)
        self.lam, self.U = torch.linalg.eigh(cov)
        self.weight = weight

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        s2 = float(torch.as_tensor(sigma).reshape(-1)[0]) ** 2
        y = x.flatten(1).double()
        d = y.shape[1]
        z = (y - self.mu) @ self.U
        gauss_mean = self.mu + (z * (self.lam / (self.lam + s2))) @ self.U.T
        log_gauss = -0.5 * ((z**2) / (self.lam + s2)).sum(1) - 0.5 * torch.log(self.lam + s2).sum() \
            - 0.5 * d * math.log(2 * math.pi)
        if self.weight == 0.0:
            return gauss_mean.to(x.dtype).reshape(x.shape)
        m = self.memorized.shape[0]
        log_delta = -(torch.cdist(y, self.memorized) ** 2) / (2 * s2) - 0.5 * d * math.log(2 * math.pi * s2)
        logits = torch.cat([math.log(self.weight / m) + log_delta, math.log(1 - self.weight) + log_gauss[:, None]], 1)
        post = torch.softmax(logits, 1)
        out = post[:, :m] @ self.memorized + post[:, m:] * gauss_mean
        return out.to(x.dtype).reshape(x.shape)


def one_seed(cfg: Config, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    digits = load_digits(size=8)
    order = torch.randperm(len(digits), generator=g)
    images = torch.nn.functional.interpolate(digits.images[order].float(), size=(cfg.size, cfg.size),
                                             mode="bilinear", align_corners=False)
    base, heldout = images[:cfg.n_train], images[cfg.n_train:cfg.n_train + cfg.n_heldout]
    memorized = torch.zeros(cfg.n_train, dtype=torch.bool)
    memorized[:cfg.n_memorized] = True
    dup_rows = torch.cat([torch.arange(cfg.n_dup_memorized),                                  # memorized ones
                          cfg.n_memorized + torch.arange(cfg.n_dup_free)])                    # not memorized
    train = torch.cat([base, base[dup_rows].repeat(cfg.copies, 1, 1, 1)])
    source = torch.cat([torch.arange(cfg.n_train), dup_rows.repeat(cfg.copies)])  # base row of every training row
    truth_memorized = memorized[source]
    duplicated = torch.isin(source, dup_rows)
    rows = {}
    for name, weight in (("model", cfg.weight), ("control", 0.0)):
        den = PartialMemorizer(base[memorized], base[~memorized], weight)
        monitor = mmh_train.MemorizationMonitor(train, heldout, n_train_probes=len(train), every_n_steps=1, seed=seed)
        result = monitor.check(den, step=1)
        label = torch.zeros(len(train), dtype=torch.long)
        label[result.train_index] = result.labels.label
        score = torch.full((len(train),), math.nan, dtype=torch.float64)
        score[result.train_index] = result.labels.score
        dd_p, dd_r = precision_recall(label == DD, truth_memorized & duplicated)
        od_p, od_r = precision_recall(label == OD, truth_memorized & ~duplicated)
        rows[name] = {"seed": seed, "variant": name, "n_train": len(train), "od_true": int((truth_memorized & ~duplicated).sum()),
                      "dd_true": int((truth_memorized & duplicated).sum()),
                      "od_labelled": int((label == OD).sum()), "dd_labelled": int((label == DD).sum()),
                      "od_precision": od_p, "od_recall": od_r, "dd_precision": dd_p, "dd_recall": dd_r,
                      "auroc": auroc(score, truth_memorized) if name == "model" else math.nan,
                      "sigmas": [round(s, 3) for s in monitor.sigmas],
                      "found_duplicates": int(monitor.survey.groups.duplicated.sum()),
                      "true_duplicates": int(duplicated.sum())}
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = benchmark_parser(__doc__, DEFAULT_OUT, "one small seed (the test runs this)").parse_args(argv)
    cfg = Config.quick() if args.quick else Config()
    torch.set_num_threads(1)
    started = time.perf_counter()
    doc = start_output("verdicts_images", argv, list(cfg.seeds), asdict(cfg))
    rows = []
    with torch.random.fork_rng(devices=[]):
        for seed in cfg.seeds:
            out = one_seed(cfg, seed)
            rows += [out["model"], out["control"]]
    print(f"{cfg.size}×{cfg.size} upsampled digits; the exact denoiser of a partial memorizer (π = {cfg.weight}) "
          f"and its control (π = 0); monitor defaults")
    print_table(rows, [("seed", "seed", "d"), ("variant", "variant", "s"), ("n_train", "N", "d"),
                       ("od_true", "OD true", "d"), ("od_labelled", "OD lab", "d"), ("od_precision", "OD prec", ".3f"),
                       ("od_recall", "OD rec", ".3f"), ("dd_true", "DD true", "d"), ("dd_labelled", "DD lab", "d"),
                       ("dd_precision", "DD prec", ".3f"), ("dd_recall", "DD rec", ".3f"), ("auroc", "AUROC", ".3f"),
                       ("found_duplicates", "dups found", "d"), ("true_duplicates", "dups true", "d")])
    model = [r for r in rows if r["variant"] == "model"]
    pooled = {}
    for kind in ("od", "dd"):
        labelled = sum(r[f"{kind}_labelled"] for r in model)
        true = sum(r[f"{kind}_true"] for r in model)
        hits = sum(round(r[f"{kind}_precision"] * r[f"{kind}_labelled"]) for r in model if r[f"{kind}_labelled"])
        pooled[f"{kind}_precision"] = hits / labelled if labelled else math.nan
        pooled[f"{kind}_recall"] = hits / true if true else math.nan
    false_control = sum(r["od_labelled"] + r["dd_labelled"] for r in rows if r["variant"] == "control")
    met = all(v >= GOAL for v in pooled.values())
    print(f"\npooled over seeds: OD precision {pooled['od_precision']:.3f} recall {pooled['od_recall']:.3f}; "
          f"DD precision {pooled['dd_precision']:.3f} recall {pooled['dd_recall']:.3f}; control (π = 0): "
          f"{false_control} labels in {sum(r['n_train'] for r in rows if r['variant'] == 'control')} images")
    print(f"goal (OD and DD precision and recall ≥ {GOAL}): {'met' if met else 'MISSED'}")
    doc.update(rows=rows, pooled=pooled, control_false_labels=false_control, goal_met=met)
    write_output(doc, args.out, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
