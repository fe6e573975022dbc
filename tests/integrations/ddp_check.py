"""Run with: torchrun --standalone --nproc_per_node 2 tests/integrations/ddp_check.py OUT_DIR

Writes OUT_DIR/rank{r}.json; tests/integrations/test_ddp.py asserts on them.
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for lightning_toys

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from lightning_toys import ReproducibleToyDiffusion, toy_data  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from mmh_train.callbacks import LIDMonitor, MemorizationEarlyStopping  # noqa: E402
from mmh_train.data import ToyDataset  # noqa: E402
from mmh_train.integrations import MemorizationGuard, MemorizationStopper  # noqa: E402
from mmh_train.monitor import MemorizationMonitor  # noqa: E402
from mmh_train.remedies import DistributedWeightedSampler, PenaltySchedule  # noqa: E402

torch.set_num_threads(1)
OUT = Path(sys.argv[1])
COLLAPSE_FROM_STEP = 12
STATE = {"step": 0}


def collapsing_estimator(denoiser, x, sigma, *, generator=None):
    """LID 2 everywhere, except on rank 1's probe batches from step 12 on: a collapse one rank sees."""
    collapsed = dist.get_rank() == 1 and STATE["step"] >= COLLAPSE_FROM_STEP
    return torch.full((x.shape[0],), 0.0 if collapsed else 2.0)


class Module(ReproducibleToyDiffusion):
    def training_step(self, batch, batch_idx):
        STATE["step"] = self.global_step + 1
        x0, _, _ = batch
        return self.per_sample_loss(x0).mean()


sample = toy_data(64)
torch.manual_seed(0)
model = Module()
monitor = LIDMonitor(sample.x, n_train_probes=32, sigma=0.1, every_n_steps=4, batch_size=8, audit_path=OUT / "audit.csv",
                     reference=torch.full((64,), 2.0), estimator=collapsing_estimator)
stopper = MemorizationEarlyStopping("mmh/od_fraction", patience=1)
trainer = pl.Trainer(max_steps=40, accelerator="cpu", devices=2, strategy="ddp", logger=False, callbacks=[monitor, stopper],
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=str(OUT))
trainer.fit(model, DataLoader(ToyDataset(sample), batch_size=8, shuffle=False))
rank = dist.get_rank()
lightning = {"global_step": trainer.global_step, "stopped": stopper.stopping_reason_message is not None,
             "check_steps": monitor.monitor.steps, "history": monitor.monitor.history_tensor().nan_to_num(-1).tolist()}

# ---- plain loop: the same monitor through MemorizationGuard, on the process group Lightning left
guard = MemorizationGuard(MemorizationMonitor(sample.x, n_train_probes=32, sigma=0.1, every_n_steps=4, batch_size=8,
                                              reference=torch.full((64,), 2.0), estimator=collapsing_estimator),
                          stopper=MemorizationStopper("od_fraction", patience=1),
                          penalty=PenaltySchedule(always_on=True, max_weight=1.0, target=5.0), penalty_subset=4)
torch.manual_seed(0)
module = ReproducibleToyDiffusion()
ddp_net = DistributedDataParallel(module.net)  # the training forward goes through DDP ...
optimizer = torch.optim.SGD(module.parameters(), lr=1e-3)
sampler = DistributedWeightedSampler(torch.ones(64), num_samples=64, seed=3)
loader = DataLoader(ToyDataset(sample), batch_size=8, sampler=sampler)


def batches():
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def per_sample_loss(x0):
    noise = torch.randn(x0.shape, generator=module.noise)
    t = torch.randint(0, module.max_timestep, (x0.shape[0],), generator=module.noise)
    eps = ddp_net(module.scheduler.add_noise(x0, noise, t), t.float())
    return ((eps - noise) ** 2).mean(1)


stopped_at, grads = None, []
for step, (x0, _, index) in enumerate(batches(), start=1):
    STATE["step"] = step
    # ... and the penalty through the raw module; one backward: DDP averages both parts of the gradient.
    loss = guard.weighted_loss(per_sample_loss(x0), index) + guard.penalty(module.denoiser(), x0, step)
    optimizer.zero_grad()
    loss.backward()
    grads.append([float(p.grad.double().pow(2).sum()) for p in module.parameters()])
    optimizer.step()
    guard.maybe_check(module.denoiser(), step)
    if guard.should_stop or step == 40:
        stopped_at = step
        break

with open(OUT / f"rank{rank}.json", "w") as handle:
    json.dump({"rank": rank, "lightning": lightning, "plain_stopped_at": stopped_at, "grad_norms": grads,
               "plain_history": guard.monitor.history_tensor().nan_to_num(-1).tolist(),
               "sampler_shard": list(iter(sampler)), "sampler_full": sampler.full_draw().tolist()}, handle)
torch.distributed.destroy_process_group()  # before interpreter shutdown: a live gloo group can abort the process
# Even so, a loaded machine once aborted a rank at interpreter shutdown ("terminate called without an active
# exception", gloo's threads) after every result was written: end the process without finalization.
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
