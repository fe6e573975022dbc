"""Estimate LID on a toy manifold with known dimension and print a table against the truth.

    python recipes/toy_lid.py            # ~1-2 minutes on 2 CPU cores
    python recipes/toy_lid.py --quick    # a few seconds: the smoke test the test suite runs

Reads top to bottom: data with known LID (Gaussian pieces of dimension 2, 4 and 8 in R^10), a small MLP
diffusion model trained with diffusers' DDPMScheduler (ε-prediction), then LID per piece from
  - FLIPD on the trained model (mmh_train.flipd through mmh_train.diffusers_denoiser),
  - FLIPD on the exact mixture denoiser (what a perfect model would read),
  - the model-free LPCA, MLE and TwoNN estimators (mmh_train.reference_lid).
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from diffusers import DDPMScheduler
from torch import nn

import mmh_train
from mmh_train.data import affine_mixture

# ---------------------------------------------------------------- config
parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--quick", action="store_true", help="tiny run for smoke tests")
parser.add_argument("--n-train", type=int, default=4000)
parser.add_argument("--steps", type=int, default=4000)
parser.add_argument("--sigma", type=float, default=0.1, help="FLIPD noise level (VE sigma)")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
if args.quick:
    args.n_train, args.steps = 600, 150
torch.manual_seed(args.seed)  # a recipe owns its process: seeding the global RNG here is the user's choice


# ---------------------------------------------------------------- data with known LID
data = affine_mixture(args.n_train, dims=(2, 4, 8), ambient_dim=10, generator=torch.Generator().manual_seed(args.seed))
probe_idx = torch.cat([torch.nonzero(data.lid == k).flatten()[:40] for k in (2, 4, 8)])
probes = data.x[probe_idx]


# ---------------------------------------------------------------- model: an MLP ε-predictor
class TimeMLP(nn.Module):
    """ε̂(y, t): sinusoidal embedding of the DDPM timestep, concatenated to y, through an MLP."""

    def __init__(self, dim: int, width: int = 256, embed: int = 32):
        super().__init__()
        self.embed = embed
        self.net = nn.Sequential(nn.Linear(dim + embed, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, width), nn.SiLU(), nn.Linear(width, dim))

    def forward(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(-math.log(1000.0) * torch.arange(self.embed // 2, device=y.device) / (self.embed // 2))
        angles = t.to(y.dtype)[:, None] * freqs[None]
        return self.net(torch.cat([y, angles.sin(), angles.cos()], dim=1))


model = TimeMLP(dim=10)
scheduler = DDPMScheduler(num_train_timesteps=1000)
optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
lr_decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps)

# ---------------------------------------------------------------- training
start = time.perf_counter()
for step in range(args.steps):
    x0 = data.x[torch.randint(0, len(data.x), (256,))]
    noise = torch.randn_like(x0)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],))
    loss = nn.functional.mse_loss(model(scheduler.add_noise(x0, noise, t), t.float()), noise)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    lr_decay.step()
    if step % max(1, args.steps // 8) == 0 or step == args.steps - 1:
        print(f"step {step:5d}  loss {loss.item():.4f}", flush=True)
train_seconds = time.perf_counter() - start

# ---------------------------------------------------------------- LID estimates on probe points
denoiser = mmh_train.diffusers_denoiser(model, scheduler)
estimates = {
    "FLIPD (trained MLP)": mmh_train.flipd(denoiser, probes, args.sigma),
    "FLIPD (exact denoiser)": mmh_train.flipd(data.spec.denoiser, probes, args.sigma),
}
for method in ("lpca", "mle", "twonn"):
    estimates[method.upper() if method != "twonn" else "TwoNN"] = mmh_train.reference_lid(data.x, method=method)[probe_idx]

# ---------------------------------------------------------------- report
truth = data.lid[probe_idx].float()
print(f"\nLID on {len(probes)} training points of a 2/4/8-d Gaussian mixture in R^10 "
      f"(n_train={args.n_train}, {args.steps} steps in {train_seconds:.0f}s, FLIPD at sigma={args.sigma})\n")
header = f"{'estimator':<24}" + "".join(f"{'LID=' + str(k):>10}" for k in (2, 4, 8)) + f"{'MAE':>8}"
print(header)
print("-" * len(header))
print(f"{'truth':<24}" + "".join(f"{k:>10.2f}" for k in (2, 4, 8)))
for name, lid in estimates.items():
    means = "".join(f"{lid[truth == k].mean().item():>10.2f}" for k in (2, 4, 8))
    print(f"{name:<24}{means}{(lid - truth).abs().mean().item():>8.2f}")
