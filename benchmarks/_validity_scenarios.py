"""The validity suite's scenarios: data with planted or natural memorization, the models trained on them, and
what one run measures (``benchmarks/validity.py`` runs them and judges the verdicts).

A scenario is one cell (data × model × family) at one seed:

- data: ``mix10``/``mix32``/``mix64`` (Gaussians on affine pieces of mixed dimension in R^10, R^32, R^64),
  ``far12`` (a 4-d piece of 1024 points and a far 4-d piece in R^12), ``digits8``/``digits16``/``digits32``
  (scikit-learn's digits at 64, 256 and 1024 dimensions, bilinear);
- model: ``mlp`` (a TimeMLP, DDPM ε), ``mlp_fm`` (the same net, rectified-flow velocity), ``unet`` (a diffusers
  ``UNet2DModel``, 16/32 channels, DDPM ε), ``oracle`` (the closed-form denoiser of the data's distribution:
  it generalizes perfectly);
- family: ``oversample`` (a random subset inside the bulk fills half of every batch; truth OD = the subset),
  ``oversample_far`` (the far piece's 32 training points fill half of every batch), ``duplicates`` (a subset
  each repeated with 3 exact and 3 near copies, noise 0.5 % of the spacing; truth DD = the subset and its
  copies), ``conditional`` (16 points get a class label of their own; LID_θ(x | c) with each point's own
  label; truth OD = those points), ``natural`` (a small set trained long; truth = ``memorized_points`` of
  the model's samples against held-out points), ``generalizing`` (a large set, nothing planted: every label
  is a false one).

Every run also measures the sample truth (``memorized_points``, control = held-out points) so that a planted
truth the model did not act on shows: ``planted_memorized`` is the fraction of planted rows the samples copy.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from diffusers import DDPMScheduler
from torch import Tensor

import mmh_train
from mmh_train.data import affine_mixture, load_digits
from mmh_train.models import NullLabelDefault, TimeMLP, small_unet
from mmh_train.sampling import sample as draw

STEPS_TOY, STEPS_IMAGE = 12000, 12000
N_PLANTED, COPIES = 8, 8  # planted rows (oversample, duplicates); exact and near copies of each
COSINE = False  # the learning rate decayed to 0 (sharper fits: exact copies)
FAMILIES = ("oversample", "oversample_far", "duplicates", "conditional", "natural", "generalizing")


@dataclass
class Scenario:
    """One cell at one seed, before training. Tensors ``[N, ...]`` are rows of the training set."""

    data: str
    model: str
    family: str
    seed: int
    train: Tensor
    heldout: Tensor
    steps: int
    weights: Optional[Tensor] = None        # [N] sampling weights (None: uniform)
    truth_od: Optional[Tensor] = None       # [N] bool, planted OD (None: the sample truth decides)
    truth_dd: Optional[Tensor] = None       # [N] bool, planted DD
    labels: Optional[Tensor] = None         # [N] class labels (conditional)
    heldout_labels: Optional[Tensor] = None
    num_classes: Optional[int] = None
    oracle: Any = None                      # the closed-form denoiser (model "oracle")
    origin: Optional[Tensor] = None         # [N] the planted row each copy was made from (None: each row itself)

    @property
    def cell(self) -> str:
        return f"{self.data}/{self.model}/{self.family}"


# ----------------------------------------------------------------------------------------------- data
def _pool(data: str, n: int, seed: int) -> tuple[Tensor, Optional[Tensor], Any]:
    """``n`` points of a data set (rows shuffled by ``seed``), their class (piece or digit), and the toy spec."""
    g = torch.Generator().manual_seed(seed)
    if data.startswith("mix"):
        ambient = int(data[3:])
        dims = {10: (2, 4, 8), 32: (3, 6, 12), 64: (4, 8, 16)}[ambient]
        sample = affine_mixture(n, dims, ambient, generator=g)
        return sample.x, sample.component, sample.spec
    if data == "far12":
        sample = affine_mixture(n, (4, 4), 12, weights=(0.75, 0.25), separation=8.0, generator=g)
        return sample.x, sample.component, sample.spec
    if data.startswith("digits"):
        size = int(data[6:])
        digits = load_digits(size=size, resize="bilinear" if size > 8 else "pad")
        order = torch.randperm(len(digits.images), generator=g)[:n]
        return digits.images[order], digits.labels[order], None
    raise ValueError(f"unknown data {data!r}")


def _flat(model: str, x: Tensor) -> Tensor:
    return x if model == "unet" or x.dim() == 2 else x.flatten(1)


def _near_copies(x: Tensor, rows: Tensor, copies: int, g: torch.Generator) -> Tensor:
    """``copies`` exact and ``copies`` near copies of ``x[rows]`` (noise 0.5 % of the median spacing)."""
    flat = x.flatten(1).double()
    spacing = float(torch.cdist(flat[rows], flat).topk(2, largest=False).values[:, 1].median())
    scale = 0.005 * spacing / math.sqrt(flat.shape[1])
    exact = x[rows].repeat(copies, *[1] * (x.dim() - 1))
    near = exact + scale * torch.randn(exact.shape, generator=g, dtype=exact.dtype)
    return torch.cat([exact, near])


def make_scenario(data: str, model: str, family: str, seed: int, *, quick: bool = False) -> Scenario:
    """Builds the cell ``data/model/family`` at ``seed`` (``quick``: small sizes and few steps, for tests)."""
    g = torch.Generator().manual_seed(10_000 + seed)
    image = data.startswith("digits")
    n_held = 200 if quick else (400 if image else 512)
    n = {"natural": 24 if image else 64, "generalizing": 512 if image else 2048}.get(family, 256 if image else 1024)
    if model == "unet" and family not in ("natural", "generalizing"):
        n = 128
    if quick:
        n = min(n, 128)
    steps = {"unet": 3600, "oracle": 0}.get(model, STEPS_IMAGE if image else STEPS_TOY)
    if quick:
        steps = min(steps, 300)
    if data == "far12":
        pool, comp, spec = _pool(data, 4 * (n + n_held), seed)
        bulk, far = torch.nonzero(comp == 0).flatten(), torch.nonzero(comp == 1).flatten()
        n_far = 32 if not quick else 16
        train_rows = torch.cat([bulk[:n - n_far], far[:n_far]])
        held_rows = torch.cat([bulk[n - n_far:n - n_far + n_held * 3 // 4], far[n_far:n_far + n_held // 4]])
        x, held, classes = pool[train_rows], pool[held_rows], comp[train_rows]
    else:
        pool, comp, spec = _pool(data, n + n_held, seed)
        x, held = pool[:n], pool[n:]
        classes = comp[:n] if comp is not None else None
    x, held = _flat(model, x), _flat(model, held)
    scn = Scenario(data, model, family, seed, x, held, steps,
                   oracle=spec.denoiser if model == "oracle" and spec is not None else None)
    n_planted = min(N_PLANTED, n // 8)
    planted = torch.zeros(n, dtype=torch.bool)
    if family == "oversample":
        planted[torch.randperm(n, generator=g)[:n_planted]] = True
        scn.weights = torch.where(planted, 0.5 / n_planted, 0.5 / (n - n_planted)).double()
        scn.truth_od, scn.truth_dd = planted, torch.zeros(n, dtype=torch.bool)
    elif family == "oversample_far":
        if data != "far12":
            raise ValueError("oversample_far needs data far12")
        planted = classes == 1
        scn.weights = torch.where(planted, 0.5 / int(planted.sum()), 0.5 / int((~planted).sum())).double()
        scn.truth_od, scn.truth_dd = planted, torch.zeros(n, dtype=torch.bool)
    elif family == "duplicates":
        rows = torch.randperm(n, generator=g)[:n_planted]
        extra = _near_copies(scn.train, rows, COPIES, g)
        scn.train = torch.cat([scn.train, extra])
        scn.origin = torch.cat([torch.arange(n), rows.repeat(2 * COPIES)])
        dd = torch.zeros(len(scn.train), dtype=torch.bool)
        dd[rows], dd[n:] = True, True
        scn.truth_dd, scn.truth_od = dd, torch.zeros(len(scn.train), dtype=torch.bool)
    elif family == "conditional":
        if classes is None:
            raise ValueError("conditional needs data with classes")
        k = int(classes.max()) + 1
        rows = torch.randperm(n, generator=g)[:16]
        labels = classes.clone()
        labels[rows] = k + torch.arange(len(rows))  # a label of its own
        planted[rows] = True
        scn.labels, scn.num_classes = labels, k + len(rows)
        held_classes = _pool(data, n + n_held, seed)[1][n:] if data != "far12" else None
        scn.heldout_labels = held_classes
        scn.truth_od, scn.truth_dd = planted, torch.zeros(n, dtype=torch.bool)
    elif family == "generalizing":
        scn.truth_od, scn.truth_dd = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    elif family != "natural":
        raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")
    return scn


# ----------------------------------------------------------------------------------------------- models
@dataclass
class Fitted:
    denoiser: Any
    seconds: float
    net: Optional[torch.nn.Module] = None


def train_model(scn: Scenario, *, batch_size: int = 128, lr: float = 2e-3) -> Fitted:
    """Trains the scenario's model with a plain loop (batches drawn by ``scn.weights``); global RNG untouched."""
    if scn.model == "oracle":
        return Fitted(scn.oracle, 0.0)
    n = len(scn.train)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(scn.seed)
        if scn.model == "unet":
            net = small_unet(scn.train.shape[-1], 1, channels=(16, 32))
            batch_size, lr = 32, 1e-3
        else:
            classes = scn.num_classes + 1 if scn.num_classes else None
            net = TimeMLP(scn.train.shape[1], width=256, depth=3, num_classes=classes,
                          time_scale=1.0 if scn.model == "mlp_fm" else 1000.0)
            if scn.num_classes:
                net = NullLabelDefault(net, scn.num_classes)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, scn.steps) if COSINE else None
    g = torch.Generator().manual_seed(scn.seed + 7919)
    weights = scn.weights if scn.weights is not None else torch.ones(n, dtype=torch.float64)
    start = time.perf_counter()
    net.train()
    for _ in range(scn.steps):
        index = torch.multinomial(weights, batch_size, replacement=True, generator=g)
        x0 = scn.train[index]
        noise = torch.randn(x0.shape, generator=g)
        kwargs = {}
        if scn.num_classes:
            drop = torch.rand(batch_size, generator=g) < 0.1
            kwargs["class_labels"] = torch.where(drop, torch.full_like(index, scn.num_classes), scn.labels[index])
        if scn.model == "mlp_fm":  # x_t = (1 − t)·x0 + t·ε, v = ε − x0 (rectified flow)
            t = torch.rand(batch_size, generator=g)
            tb = t.view(-1, *[1] * (x0.dim() - 1))
            pred, target = net((1 - tb) * x0 + tb * noise, t, **kwargs), noise - x0
        else:
            t = torch.randint(0, 1000, (batch_size,), generator=g)
            pred, target = net(scheduler.add_noise(x0, noise, t), t, **kwargs), noise
        pred = pred.sample if hasattr(pred, "sample") else pred
        loss = (pred - target).pow(2).flatten(1).mean(1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if decay is not None:
            decay.step()
    net.eval()
    if scn.model == "mlp_fm":
        den = mmh_train.rectified_flow_denoiser(net)
    else:
        den = mmh_train.diffusers_denoiser(net, scheduler)
    return Fitted(den, time.perf_counter() - start, net)


# ----------------------------------------------------------------------------------------------- one run
def measure(scn: Scenario, fitted: Fitted, *, n_heldout_probes: int = 256, n_samples: int = 2000) -> dict[str, Any]:
    """One check of the monitor with default options (every training point a probe), and the sample truth.

    Returns what a rule needs (``lid_train [S, P]``, ``lid_heldout [S, Q]``, the views, duplicate flags,
    σ) and the truth per probe: ``truth_od``/``truth_dd`` (planted, or from samples), ``sample_memorized``.
    """
    n = len(scn.train)
    options: dict[str, Any] = {}
    if scn.labels is not None:
        options = {"conditioning": {"class_labels": scn.labels}, "heldout_conditioning": {"class_labels": scn.heldout_labels}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monitor = mmh_train.MemorizationMonitor(scn.train, scn.heldout, n_train_probes=n,
                                                n_heldout_probes=min(n_heldout_probes, len(scn.heldout)),
                                                seed=scn.seed, **options)
        start = time.perf_counter()
        result = monitor.check(fitted.denoiser, scn.steps)
        check_seconds = time.perf_counter() - start
    latest = monitor.history_tensor()[-1]  # [S, P + Q]
    P = len(monitor.train_index)
    view = monitor.view()
    probes = monitor.train_index
    truth = sample_truth(scn, fitted, n_samples)
    planted_od = scn.truth_od[probes] if scn.truth_od is not None else None
    planted_dd = scn.truth_dd[probes] if scn.truth_dd is not None else None
    sample_mem = truth["memorized"][probes]
    duplicated = monitor.survey.groups.duplicated[probes]
    if planted_od is None:  # natural: the samples decide; duplicated rows are DD
        planted_od, planted_dd = sample_mem & ~duplicated, sample_mem & duplicated
    planted = planted_od | planted_dd
    return {
        "cell": scn.cell, "data": scn.data, "model": scn.model, "family": scn.family, "seed": scn.seed,
        "n_train": n, "steps": scn.steps, "train_seconds": fitted.seconds, "check_seconds": check_seconds,
        "sigmas": list(monitor.sigmas), "lid_train": latest[:, :P].clone(), "lid_heldout": latest[:, P:].clone(),
        "train_view": view[:P].clone(), "heldout_view": view[P:].clone(), "duplicated": duplicated.clone(),
        "truth_od": planted_od.clone(), "truth_dd": planted_dd.clone(), "sample_memorized": sample_mem.clone(),
        "planted_memorized": float(sample_mem[planted].float().mean()) if bool(planted.any()) else math.nan,
        "others_memorized": float(sample_mem[~planted].float().mean()) if bool((~planted).any()) else math.nan,
        "default_label": result.labels.label.clone(),
        "copy_rate": truth["copy_rate"], "control_copy_rate": truth["control_copy_rate"],
    }


@torch.no_grad()
def sample_truth(scn: Scenario, fitted: Fitted, n_samples: int) -> dict[str, Any]:
    """``memorized_points`` of ``n_samples`` model samples (conditional: drawn with the training labels'
    mix) against the held-out points, and the copy rate with its control."""
    g = torch.Generator().manual_seed(scn.seed + 1000)
    den = fitted.denoiser
    shape = (n_samples, *scn.train.shape[1:])
    kwargs = {}
    if scn.labels is not None:
        kwargs["class_labels"] = scn.labels[torch.randint(0, len(scn.labels), (n_samples,), generator=g)]
    samples = draw(den, shape, steps=18 if scn.model == "unet" else 32, sigma_min=0.02, sigma_max=80.0,
                               generator=g, **kwargs)
    # planted copies are judged as their original: a near copy's own ball (a quarter of its distance to the
    # original) is too small to hold any sample, and it would hide the original's nearest-neighbour ratio
    origin = scn.origin if scn.origin is not None else torch.arange(len(scn.train))
    originals = torch.unique(origin)
    train, held = scn.train[originals].flatten(1), scn.heldout.flatten(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        truth = mmh_train.memorized_points(samples.flatten(1), train, held)
        copies = mmh_train.detect_copies(samples.flatten(1), train, control=held)
    memorized = torch.zeros(len(scn.train), dtype=torch.bool)
    memorized[originals] = truth.memorized
    return {"memorized": memorized[origin], "copy_rate": copies.copy_rate, "control_copy_rate": copies.control_rate}


def run(data: str, model: str, family: str, seed: int, *, quick: bool = False) -> dict[str, Any]:
    scn = make_scenario(data, model, family, seed, quick=quick)
    fitted = train_model(scn)
    return measure(scn, fitted, n_samples=600 if scn.model == "unet" or quick else 2000)
