"""Text-to-image LoRA fine-tuning under the memorization guard: diffusers + peft, in the VAE's latent space.

    python recipes/t2i_lora.py model.tiny=true train.steps=8 monitor.every_n_steps=4 out_dir=runs/t2i_tiny
    python recipes/t2i_lora.py model.pretrained=/models/sd15 data.folder=/data/pets data.size=512
    python recipes/t2i_lora.py model.pretrained=/models/sd15 data.folder=/data/dog data.instance_prompt="a photo of sks dog"
    accelerate launch --multi_gpu --num_processes 2 recipes/t2i_lora.py model.tiny=true ...
    python recipes/t2i_lora.py model.tiny=true train.resume=runs/t2i_lora/checkpoints/step_250

Reads top to bottom: config; the captioned images (a folder with diffusers' ``metadata.jsonl``, one instance
prompt, or built-in captioned digits) and the pipeline (a local folder, or a tiny random one), all checked
before anything is written; frozen VAE and text encoder(s), a LoRA on the network; each image's latent and
caption embedding computed once; two monitors on the training latents, LID(z | c) with each image's own
caption and LID(z) with the empty prompt; the guard (duplicate reweighting, early stopping that restores the
best LoRA weights) in a plain accelerate loop; the report, with decoded samples above their nearest training
images and a table of every image's LID(z | c), LID(z) and label.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, TensorDataset

import mmh_train
from common import (MonitorConfig, RemedyConfig, TrainConfig, exit_after, monitor_options, result_from_monitor,
                    start_run, validate, write_run_report)
from mmh_train.config import ConfigError, load_config
from mmh_train.integrations.checkpoints import save_state_atomic
from mmh_train.io import write_text_atomic
from mmh_train.probes import derived_seed
from mmh_train.remedies import AdaptiveDuplicateWeights, find_duplicate_groups
from mmh_train.sampling import sample
from t2i_parts import (Progress, checkpoint_only_what_trains, embed_captions, load_data, noisy_latents, per_image_csv,
                       per_image_table, pick_model)

PRECISIONS = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class DataConfig:
    folder: Optional[str] = None          # None: built-in captioned digits ("a photo of the digit 3")
    caption_column: str = "text"          # the caption key in the folder's metadata.jsonl
    instance_prompt: Optional[str] = None  # one caption for every image (a folder without metadata.jsonl)
    size: Optional[int] = None            # centre-crop and resize to size×size; None: keep (one common square size)
    max_images: Optional[int] = None
    heldout_fraction: float = 0.25        # of a folder, held out by a seeded permutation: the verdicts' null
    n_train: int = 32                     # built-in digits: training images (as many others held out)


@dataclass
class ModelConfig:
    pretrained: Optional[str] = None      # a local diffusers pipeline folder (SD 1.x/2.x UNet or SD3)
    tiny: bool = False                    # a tiny random pipeline from configs (tests, CPU demo)
    tiny_family: str = "unet"             # "unet" (UNet2DConditionModel) or "sd3" (SD3Transformer2DModel)
    lora_rank: int = 4
    mixed_precision: Optional[str] = None  # "no", "bf16", "fp16"; None: accelerate's (launch --mixed_precision)
    gradient_checkpointing: bool = True


@dataclass
class T2IConfig:
    out_dir: str = "runs/t2i_lora"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=500, batch_size=8, lr=1e-4, n_samples=16,
                                                                   sample_steps=16, checkpoint_every=250))
    monitor: MonitorConfig = field(default_factory=lambda: MonitorConfig(every_n_steps=100, n_probes=1))
    remedies: RemedyConfig = field(default_factory=lambda: RemedyConfig(reweight=True, early_stopping=True,
                                                                        compare=False))


def check_config(cfg: T2IConfig) -> None:
    """What the schema cannot check, before any work."""
    validate(dataclasses.replace(cfg.train, resume=None), cfg.monitor, cfg.remedies)
    if cfg.model.tiny == (cfg.model.pretrained is not None):
        raise ConfigError("choose one model: model.tiny=true (a tiny random pipeline) or model.pretrained=PATH (a "
                          "local diffusers pipeline folder), not both or neither.")
    if cfg.model.tiny_family not in ("unet", "sd3"):
        raise ConfigError(f"model.tiny_family={cfg.model.tiny_family!r}; choose 'unet' or 'sd3'.")
    if cfg.model.mixed_precision is not None and cfg.model.mixed_precision not in PRECISIONS:
        raise ConfigError(f"model.mixed_precision={cfg.model.mixed_precision!r}; choose {sorted(PRECISIONS)} or null.")
    if cfg.remedies.penalty or cfg.remedies.compare:
        raise ConfigError("this recipe trains one LoRA with reweighting and early stopping: set remedies.penalty=false "
                          "and remedies.compare=false (the LID penalty is offered by recipes/digits_accelerate.py).")
    if cfg.train.objective != "ddpm":
        raise ConfigError("the pipeline's scheduler decides the objective here (DDPM for a UNet, rectified flow for "
                          "SD3): leave train.objective at its default.")
    if cfg.monitor.reference == "truth":
        raise ConfigError("monitor.reference='truth' needs data with known LID (the toy recipe); use 'auto' (the "
                          "held-out null), 'data' or 'heldout'.")
    if cfg.model.lora_rank < 1:
        raise ConfigError(f"model.lora_rank={cfg.model.lora_rank} must be ≥ 1.")
    if cfg.train.resume is not None and not Path(cfg.train.resume).is_dir():
        raise ConfigError(f"train.resume={cfg.train.resume} is not a folder written by accelerator.save_state "
                          f"(<out_dir>/checkpoints/step_N).")


def main(argv: list[str] | None = None) -> int:
    # ------------------------------------------------------------ config, data, model: all checked before any write
    try:
        cfg = load_config(T2IConfig, argv)
        check_config(cfg)
        train, heldout = load_data(cfg)
        model = pick_model(cfg, train.size)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    run_dir = Path(cfg.out_dir)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.model.mixed_precision)
    weight_dtype = PRECISIONS.get(accelerator.mixed_precision, torch.float32)
    set_seed(cfg.train.seed)
    if accelerator.is_main_process:
        start_run(cfg, default_threads=1 if cfg.model.tiny else None)

    # ------------------------------------------------------------ frozen pipeline, LoRA, latents and captions once
    model.freeze(weight_dtype)  # VAE, text encoder(s), network: no gradients, weights in the training precision
    for module in (*model.frozen_modules(), model.network):
        module.to(accelerator.device)
    lora = model.add_lora(cfg.model.lora_rank)  # the only trainable parameters (float32)
    if cfg.model.gradient_checkpointing:
        model.network.enable_gradient_checkpointing()
    z_train, z_held = model.encode_images(train.images), model.encode_images(heldout.images)
    c_train, c_held, empty = embed_captions(model, train.captions, heldout.captions)
    unconditional = {key: value.expand(len(z_train), *value.shape[1:]) for key, value in empty.items()}
    unconditional_held = {key: value.expand(len(z_held), *value.shape[1:]) for key, value in empty.items()}

    net = model.conditioned_network()
    optimizer = torch.optim.AdamW(lora, lr=cfg.train.lr)
    order = torch.Generator()  # each pass's order comes from (seed, pass): a resume draws its pass's order again
    loader = DataLoader(TensorDataset(z_train, torch.arange(len(z_train))), batch_size=cfg.train.batch_size,
                        shuffle=True, generator=order)
    net, optimizer, loader = accelerator.prepare(net, optimizer, loader)

    def denoiser():  # the network without DDP and without accelerate's autocast wrapper; the estimator sets precision
        return mmh_train.diffusers_denoiser(mmh_train.raw_network(net), model.scheduler)

    # ------------------------------------------------------------ mmh_train: LID(z | c), LID(z), remedies
    m, r = cfg.monitor, cfg.remedies
    estimator = {"n_probes": m.n_probes, "precision": {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(
        weight_dtype, "fp32")}  # autocast on purpose with half weights; FLIPD's coefficients stay float64

    def monitor(conditioning, heldout_conditioning):
        return mmh_train.MemorizationMonitor(
            z_train, z_held, **monitor_options(m), n_train_probes=m.n_train_probes, n_heldout_probes=m.n_heldout_probes,
            estimator_options=estimator, seed=cfg.train.seed, conditioning=conditioning,
            heldout_conditioning=heldout_conditioning)

    conditional, plain = monitor(c_train, c_held), monitor(unconditional, unconditional_held)
    groups = find_duplicate_groups(train.images)
    guard = mmh_train.MemorizationGuard(
        conditional, weights=AdaptiveDuplicateWeights(groups, dd_factor=r.dd_factor) if r.reweight else None,
        stopper=mmh_train.MemorizationStopper("od_fraction", patience=r.patience) if r.early_stopping else None,
        restore_best_weights=r.early_stopping, seed=cfg.train.seed)
    progress = Progress()
    accelerator.register_for_checkpointing(guard, plain, progress)
    load_checkpoint = checkpoint_only_what_trains(accelerator, [net])  # the LoRA, not the frozen network
    if cfg.train.resume:
        try:
            load_checkpoint(cfg.train.resume)
        except ConfigError as error:
            print(f"config error: {error}", file=sys.stderr)
            return 2

    # ------------------------------------------------------------ the loop
    def batches():  # resumed mid-pass: the same order, less the batches the checkpointed run had trained on
        epoch, done = divmod(progress.step, len(loader))
        while True:
            order.manual_seed(derived_seed(cfg.train.seed, epoch))
            yield from itertools.islice(loader, done, None)  # latents, no augmentation: reading one draws nothing
            epoch, done = epoch + 1, 0

    net.train()
    for z0, index in batches():
        if progress.step >= cfg.train.steps or guard.should_stop:
            break
        progress.step += 1
        start = time.perf_counter()
        caption = {key: value[index.cpu()].to(z0.device) for key, value in c_train.items()}  # each image's own
        noisy, t, target = noisy_latents(model, z0, torch.randn_like(z0), cfg.train.max_timestep)
        per_sample = (net(noisy, t, **caption).float() - target).pow(2).flatten(1).mean(1)
        accelerator.backward(guard.weighted_loss(per_sample, index))
        optimizer.step()
        optimizer.zero_grad()
        checked = time.perf_counter()
        progress.train_seconds += checked - start
        plain.maybe_check(denoiser(), progress.step)  # first: a stop below may load other weights
        result = guard.maybe_check(denoiser(), progress.step)  # every process, same steps
        progress.monitor_seconds += time.perf_counter() - checked
        if result is not None:
            progress.checks += 1
            if accelerator.is_main_process:
                write_text_atomic(run_dir / "model" / "mmh_audit.csv", per_image_csv(train, conditional, plain, groups))
                accelerator.print(f"step {progress.step}: " + ", ".join(f"{k} {v:.3f}" for k, v in result.metrics.items())
                                  + f", lid_unconditional {plain.result().metrics['lid_train']:.3f}")
        if progress.step % cfg.train.checkpoint_every == 0:
            save_state_atomic(accelerator, run_dir / "checkpoints" / f"step_{progress.step}")
    accelerator.wait_for_everyone()

    # ------------------------------------------------------------ report
    if not accelerator.is_main_process:
        return 0
    if conditional.history:  # the final audit, also when a resume had nothing left to train (no check since)
        write_text_atomic(run_dir / "model" / "mmh_audit.csv", per_image_csv(train, conditional, plain, groups))
    den = denoiser()
    rows = torch.arange(cfg.train.n_samples) % len(z_train)  # one sample per training caption, cycled
    with torch.autocast(accelerator.device.type, dtype=weight_dtype, enabled=weight_dtype != torch.float32):
        latents = sample(
            den.bind(**{key: value[rows].to(accelerator.device) for key, value in c_train.items()}),
            (len(rows), *z_train.shape[1:]), steps=cfg.train.sample_steps, sigma_min=0.02, sigma_max=80.0,
            generator=torch.Generator().manual_seed(cfg.train.seed + 1), device=accelerator.device, batch_size=len(rows))
    samples = model.decode_latents(latents.float())
    notes = {"conditioning": f"LID(z | c) with each image's caption drives labels and stopping; LID(z) with the "
                             f"empty prompt beside it ({model.family} family, LoRA rank {cfg.model.lora_rank}, "
                             f"{len(lora)} LoRA tensors trained, weights {str(weight_dtype).removeprefix('torch.')})"}
    if guard.stopper is not None:
        notes["early_stopping"] = (f"stopped at step {guard.stopper.stopped_step}: {guard.stopper.reason}; LoRA "
                                   f"weights of step {guard.restored_step} restored" if guard.should_stop
                                   else "did not stop")
    if guard.weights is not None:
        notes["reweighting"] = f"{int(groups.duplicated.sum())} duplicated images in weighted groups"
    variant = result_from_monitor("model", den, conditional, notes, cfg.train, train.images,
                                  heldout.images, progress.train_seconds + progress.monitor_seconds,
                                  restored_step=guard.restored_step, samples=samples)
    at = guard.restored_step
    variant.metrics.update({
        "lid_unconditional": plain.result(at_step=at).metrics["lid_train"] if plain.history else float("nan"),
        "seconds_per_check": progress.monitor_seconds / max(1, progress.checks),
        "monitor_share": progress.monitor_seconds / max(1e-9, progress.train_seconds + progress.monitor_seconds)})
    print(f"timing: {progress.train_seconds:.1f} s training, {progress.monitor_seconds:.1f} s in {progress.checks} "
          f"checks of both monitors ({variant.metrics['seconds_per_check']:.2f} s per check), monitor share "
          f"{100 * variant.metrics['monitor_share']:.1f}%")
    return write_run_report(run_dir, cfg, recipe="t2i_lora", kind="images", train_x=train.images,
                            heldout_x=heldout.images, variants=[variant], duplicated=groups.duplicated,
                            tables=[per_image_table(train, conditional, plain, groups, at_step=at)],
                            audit_csv="model/mmh_audit.csv")


if __name__ == "__main__":
    exit_after(main)
