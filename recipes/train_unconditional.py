"""diffusers' ``examples/unconditional_image_generation/train_unconditional.py``, ported, with mmh_train in it.

    python recipes/train_unconditional.py --output_dir runs/uncond --num_epochs 20 --use_ema --random_flip
    accelerate launch recipes/train_unconditional.py --mixed_precision bf16 --gradient_accumulation_steps 2 ...
    python recipes/train_unconditional.py --output_dir runs/uncond --resume_from_checkpoint latest

The loop, its arguments and their meaning follow the diffusers example (EMA, gradient accumulation, mixed
precision, ``accelerator.save_state`` checkpoints and resume, the pipeline saved at the end). What differs:
what a machine without internet needs (images from ``--train_data_dir``, any folder of images, or without it
scikit-learn's digits; a small UNet by default), and an exact resume wherever the checkpoint falls (each
epoch's order is drawn from the seed and the epoch, and a resume mid-epoch skips, unread, the batches its epoch
had trained on; with ``--random_flip`` the remaining flips are drawn again, and the run says so). Every line that mmh_train adds or
changes ends with ``# mmh_train`` (README.md shows them as a diff): monitor, labels, duplicate reweighting,
early stopping with the best (EMA) weights restored, the audit CSV and the report.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch.utils.data import Dataset

import mmh_train  # mmh_train
from mmh_train.data import load_digits, load_image_folder
from mmh_train.integrations.checkpoints import latest_checkpoint, save_state_atomic


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="diffusers' unconditional training loop, guarded by mmh_train.")
    parser.add_argument("--train_data_dir", default=None, help="a folder of images; default: scikit-learn's digits")
    parser.add_argument("--max_train_samples", type=int, default=None, help="use only this many images")
    parser.add_argument("--output_dir", default="runs/train_unconditional")
    parser.add_argument("--resolution", type=int, default=16)
    parser.add_argument("--random_flip", action="store_true", help="flip images horizontally at random")
    parser.add_argument("--train_batch_size", type=int, default=16)
    parser.add_argument("--num_epochs", type=int, default=40)
    parser.add_argument("--save_model_epochs", type=int, default=10)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--lr_scheduler", default="constant_with_warmup")
    parser.add_argument("--lr_warmup_steps", type=int, default=20)
    parser.add_argument("--adam_beta1", type=float, default=0.95)
    parser.add_argument("--adam_beta2", type=float, default=0.999)
    parser.add_argument("--adam_weight_decay", type=float, default=1e-6)
    parser.add_argument("--adam_epsilon", type=float, default=1e-8)
    parser.add_argument("--use_ema", action="store_true")
    parser.add_argument("--ema_inv_gamma", type=float, default=1.0)
    parser.add_argument("--ema_power", type=float, default=3 / 4)
    parser.add_argument("--ema_max_decay", type=float, default=0.9999)
    parser.add_argument("--mixed_precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--checkpointing_steps", type=int, default=100)
    parser.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder, or 'latest'")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


class AugmentedImages(Dataset):
    """What ``dataset.set_transform(transform_images)`` gives in the example: ``{"input": [C, H, W]}`` in [-1, 1],
    flipped horizontally at random (``--random_flip``) every time an item is read."""

    def __init__(self, images: torch.Tensor, random_flip: bool) -> None:
        self.images, self.random_flip = images, random_flip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        image = self.images[i]
        if self.random_flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return {"input": image}


def load_images(args: argparse.Namespace) -> torch.Tensor:
    """``[N, 3, R, R]`` images in [-1, 1] (resized and centre-cropped once, as the example's transform does)."""
    if args.train_data_dir is not None:
        images = load_image_folder(args.train_data_dir, size=args.resolution).images
    else:
        images = load_digits(size=args.resolution).images.expand(-1, 3, -1, -1).contiguous()
    return images[: args.max_train_samples] if args.max_train_samples else images


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.resume_from_checkpoint not in (None, "latest") and not Path(args.resume_from_checkpoint).is_dir():
        print(f"error: --resume_from_checkpoint {args.resume_from_checkpoint} is not a checkpoint folder; pass one "
              f"written by this script (<output_dir>/checkpoint-N) or 'latest'.", file=sys.stderr)
        return 2
    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps,
                              mixed_precision=args.mixed_precision, cpu=not torch.cuda.is_available())
    set_seed(args.seed)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)

    model = UNet2DModel(sample_size=args.resolution, in_channels=3, out_channels=3, layers_per_block=1,
                        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8)
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    dataset = AugmentedImages(load_images(args), args.random_flip)
    dataset, heldout = torch.utils.data.random_split(dataset, [0.9, 0.1], torch.Generator().manual_seed(0))  # mmh_train
    epoch_order = torch.Generator()  # each epoch's order from (seed, epoch): a resume mid-epoch continues that order
    train_dataloader = torch.utils.data.DataLoader(mmh_train.data.IndexedDataset(dataset), batch_size=args.train_batch_size, shuffle=True, generator=epoch_order)  # mmh_train
    num_update_steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer=optimizer, num_warmup_steps=args.lr_warmup_steps,
                                 num_training_steps=num_update_steps_per_epoch * args.num_epochs)
    model, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(model, optimizer, train_dataloader,
                                                                           lr_scheduler)
    num_update_steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)  # per process
    ema_model = None
    if args.use_ema:
        ema_model = EMAModel(model.parameters(), decay=args.ema_max_decay, use_ema_warmup=True,
                             inv_gamma=args.ema_inv_gamma, power=args.ema_power)
        ema_model.to(accelerator.device)
        accelerator.register_for_checkpointing(ema_model)
    guard = mmh_train.MemorizationGuard(mmh_train.MemorizationMonitor(dataset, heldout, every_n_steps=args.checkpointing_steps), weights="survey", ema=ema_model,  # mmh_train
                                        stopper=mmh_train.MemorizationStopper(), restore_best_weights=True, audit_path=os.path.join(args.output_dir, "mmh_audit.csv"))  # mmh_train
    accelerator.register_for_checkpointing(guard)  # mmh_train

    global_step, first_epoch, resume_step = 0, 0, 0
    if args.resume_from_checkpoint:
        path = (latest_checkpoint(args.output_dir, "checkpoint-") if args.resume_from_checkpoint == "latest"
                else args.resume_from_checkpoint)
        if path is None:
            accelerator.print(f"no complete checkpoint in {args.output_dir} yet; starting a new run.")
        else:
            accelerator.load_state(path)
            global_step = int(Path(path).name.split("-")[1])
            first_epoch = global_step // num_update_steps_per_epoch
            resume_step = (global_step % num_update_steps_per_epoch) * args.gradient_accumulation_steps
            if resume_step and args.random_flip:
                accelerator.print(f"resumed mid-epoch with --random_flip: the epoch goes on in the same order, but the "
                                  f"flips of its remaining images are drawn again, so the weights will differ slightly "
                                  f"from an uninterrupted run's (without --random_flip they are the same).")

    for epoch in range(first_epoch, args.num_epochs):
        model.train()
        epoch_order.manual_seed(args.seed * 1_000_003 + epoch)
        batches = train_dataloader
        if epoch == first_epoch and resume_step:  # skip, unread, the batches the checkpointed run had trained on
            batches = accelerator.skip_first_batches(train_dataloader, resume_step)
        for batch in guard.until_stopped(batches):  # mmh_train
            clean_images = batch["input"]
            noise = torch.randn(clean_images.shape, device=clean_images.device)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (clean_images.shape[0],),
                                      device=clean_images.device).long()
            noisy_images = noise_scheduler.add_noise(clean_images, noise, timesteps)
            with accelerator.accumulate(model):
                model_output = model(noisy_images, timesteps).sample
                loss = guard.weighted_loss(F.mse_loss(model_output.float(), noise.float(), reduction="none").mean((1, 2, 3)), batch["index"])  # mmh_train
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                if args.use_ema:
                    ema_model.step(model.parameters())
                global_step += 1
                guard.maybe_check(mmh_train.diffusers_denoiser(mmh_train.raw_network(model), noise_scheduler), global_step)  # mmh_train
                if global_step % args.checkpointing_steps == 0:
                    save_state_atomic(accelerator, os.path.join(args.output_dir, f"checkpoint-{global_step}"))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process and (epoch % args.save_model_epochs == 0 or epoch == args.num_epochs - 1):
            unet = accelerator.unwrap_model(model)
            if args.use_ema:
                ema_model.store(unet.parameters())
                ema_model.copy_to(unet.parameters())
            DDPMPipeline(unet=unet, scheduler=noise_scheduler).save_pretrained(args.output_dir)
            if args.use_ema:
                ema_model.restore(unet.parameters())
    guard.write_report(args.output_dir, train_data=dataset, heldout_data=heldout, denoiser=mmh_train.diffusers_denoiser(mmh_train.raw_network(model), noise_scheduler))  # mmh_train
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
