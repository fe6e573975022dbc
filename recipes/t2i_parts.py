"""The pieces recipes/t2i_lora.py calls, so that the recipe itself reads top to bottom.

Data and model choice (errors become :class:`~mmh_train.config.ConfigError`, raised before anything is
written), the caption embeddings computed once, the training noise of either family, the loop's step and
timers (saved with the checkpoint), and the per-image table: LID(z | c), LID(z) and the verdict of every
training image. Recipe code, not library API: copy and adapt it.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from mmh_train.config import ConfigError
from mmh_train.data import CaptionedImages, captioned_digits, load_captioned_folder
from mmh_train.memorization import LABEL_NAMES
from mmh_train.remedies import find_duplicate_groups
from mmh_train.report import ReportTable
from mmh_train.t2i import T2IModel, load_pretrained, tiny_pipeline
from mmh_train.t2i.tiny import TINY_IMAGE_SIZE

__all__ = ["Progress", "load_data", "pick_model", "embed_captions", "noisy_latents", "per_image_csv",
           "per_image_table"]

#: The report lists this many images (most memorized first); the CSV lists every one.
TABLE_ROWS = 40


class Progress:
    """The loop's step, its training and monitoring seconds and the number of checks, saved by accelerate."""

    def __init__(self) -> None:
        self.step, self.checks = 0, 0
        self.train_seconds = self.monitor_seconds = 0.0

    def state_dict(self) -> dict:
        return {"step": self.step, "checks": self.checks, "train_seconds": self.train_seconds,
                "monitor_seconds": self.monitor_seconds}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.checks = state["step"], state["checks"]
        self.train_seconds, self.monitor_seconds = state["train_seconds"], state["monitor_seconds"]


def checkpoint_only_what_trains(accelerator: Any, models: list) -> Callable[[str], None]:
    """Makes ``accelerator.save_state`` write only the trainable tensors (a LoRA's adapters) and the buffers of
    the prepared ``models``, not the frozen network (megabytes, not an SD UNet's gigabytes, per checkpoint);
    returns ``load(path)``, which checks that a checkpoint holds exactly those tensors and then loads it."""
    def kept(model: Any) -> dict[str, tuple[int, ...]]:
        net = accelerator.unwrap_model(model)
        shapes = {n: tuple(p.shape) for n, p in net.named_parameters() if p.requires_grad}
        return {**shapes, **{n: tuple(b.shape) for n, b in net.named_buffers()}}

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        for model, state in zip(models, weights):
            names = kept(model)
            for key in [k for k in state if k not in names]:
                del state[key]

    def load(path: str) -> None:
        from safetensors import safe_open

        for i, model in enumerate(models):
            file = Path(path) / f"model{'_' + str(i) if i else ''}.safetensors"
            if not file.is_file():
                raise ConfigError(f"train.resume={path} has no {file.name}; pass a folder written by this recipe "
                                  f"(<out_dir>/checkpoints/step_N).")
            with safe_open(str(file), framework="pt") as f:
                saved = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            if saved != kept(model):
                raise ConfigError(f"train.resume={path} holds other trainable tensors than this run trains "
                                  f"({len(saved)} saved, {len(kept(model))} here): resume with the same model, "
                                  f"LoRA rank and target modules as the run that wrote it.")
        accelerator.load_state(path, strict=False)  # the frozen weights come from the pipeline, as at the start

    accelerator.register_save_state_pre_hook(save_hook)
    return load


def load_data(cfg: Any) -> tuple[CaptionedImages, CaptionedImages]:
    """Training and held-out images with captions: built-in digits, or a folder split by a seeded permutation."""
    d, generator = cfg.data, torch.Generator().manual_seed(cfg.train.seed)
    if d.folder is None:
        if not 2 <= d.n_train <= 898:
            raise ConfigError(f"data.n_train={d.n_train} must lie in [2, 898] (as many digits are held out).")
        order = torch.randperm(1797, generator=generator)[: 2 * d.n_train]
        size = d.size or (TINY_IMAGE_SIZE if cfg.model.tiny else 512)
        return (captioned_digits(rows=order[: d.n_train], size=size),
                captioned_digits(rows=order[d.n_train:], size=size))
    if not 0 < d.heldout_fraction < 1:
        raise ConfigError(f"data.heldout_fraction={d.heldout_fraction} must lie strictly between 0 and 1 (e.g. 0.25).")
    try:
        data = load_captioned_folder(d.folder, size=d.size, caption_column=d.caption_column,
                                     instance_prompt=d.instance_prompt, max_images=d.max_images)
    except (OSError, ValueError) as error:
        raise ConfigError(f"data.folder={d.folder}: {error}") from None
    n_held = max(2, round(d.heldout_fraction * len(data)))
    if len(data) - n_held < 2:
        raise ConfigError(f"data.folder={d.folder} has {len(data)} captioned image(s): {n_held} held out (at least 2, "
                          f"the verdicts' null) leave {len(data) - n_held} for training. Add images (at least 4).")
    order = torch.randperm(len(data), generator=generator)
    train = data.select(order[n_held:].sort().values)
    _refuse_copies_of_one_image(cfg, train)
    return train, data.select(order[:n_held].sort().values)


def _refuse_copies_of_one_image(cfg: Any, train: CaptionedImages) -> None:
    """A training set of copies of one image has no spacing (the distance between distinct images), from which
    the monitor takes its noise levels, and nothing the report's copy test can tell a copy from."""
    if find_duplicate_groups(train.images).n_groups >= 2:
        return
    why = (f"With monitor.sigma={cfg.monitor.sigma} the noise level is set" if cfg.monitor.sigma is not None else
           "The monitor chooses its noise level (monitor.sigma, unset) from the spacing between distinct training "
           "images, and there is none; passing monitor.sigma sets it")
    raise ConfigError(f"data.folder={cfg.data.folder}: all {len(train)} training images are copies of one image. "
                      f"{why}, but the report's copy test needs at least 2 distinct training images as well. Add "
                      f"images that differ from it.")


def pick_model(cfg: Any, image_size: int) -> T2IModel:
    """The tiny or the local pretrained pipeline; refuses a LoRA rank above what its layers can use and an image size
    its autoencoder or network cannot take."""
    try:
        model = (tiny_pipeline(cfg.model.tiny_family, seed=cfg.train.seed) if cfg.model.tiny
                 else load_pretrained(cfg.model.pretrained))
    except (OSError, ValueError) as error:
        raise ConfigError(str(error)) from None
    rank, limit = cfg.model.lora_rank, model.max_lora_rank()
    if rank > limit:
        raise ConfigError(f"model.lora_rank={rank} exceeds what the layers the LoRA adapts can use: the update of a "
                          f"layer with in → out features has rank at most min(in, out), {limit} for the widest of "
                          f"this network's {len(model.lora_layers())} attention projections. Pass model.lora_rank "
                          f"≤ {limit} (LoRAs commonly use 4 to 64).")
    factor = 2 ** (len(model.vae.config.block_out_channels) - 1)
    if image_size % factor:
        raise ConfigError(f"images of {image_size} px do not fit this autoencoder, which downsamples by {factor}: "
                          f"pass data.size as a multiple of {factor} (e.g. {max(factor, image_size // factor * factor)}).")
    if model.family == "sd3":
        config = model.network.config
        limit = config.pos_embed_max_size * config.patch_size * factor
        if image_size > limit:
            raise ConfigError(f"images of {image_size} px exceed what this SD3 transformer embeds ({limit} px: "
                              f"pos_embed_max_size × patch_size × {factor}); pass data.size={limit} or smaller.")
    return model


def embed_captions(model: T2IModel, train: tuple[str, ...], heldout: tuple[str, ...]
                   ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """Each training and held-out image's caption conditioning and the empty prompt's (``[1, ...]``), by the frozen
    text encoder(s) once, each distinct caption encoded once (a DreamBooth set has one)."""
    distinct = sorted({*train, *heldout, ""})
    row = {caption: i for i, caption in enumerate(distinct)}
    table = model.encode_prompts(distinct)

    def rows(captions):
        index = torch.tensor([row[c] for c in captions], dtype=torch.long)
        return {key: value[index] for key, value in table.items()}

    return rows(train), rows(heldout), rows([""])


def noisy_latents(model: T2IModel, z0: Tensor, noise: Tensor,
                  max_timestep: int = 1000) -> tuple[Tensor, Tensor, Tensor]:
    """The network's input, time and regression target for clean latents ``z0 [B, C, h, w]``.

    UNet family (ᾱ table): y = √ᾱ·z0 + √(1−ᾱ)·ε at an integer timestep below ``max_timestep``; the target
    follows the scheduler's ``prediction_type`` (ε, v = √ᾱ·ε − √(1−ᾱ)·z0, or z0). SD3 family (rectified flow,
    data at t = 0): y = (1−s)·z0 + s·ε with s ~ U(0, 1), network time s·T, target the velocity ε − z0
    (science.md §2).
    """
    scheduler, batch = model.scheduler, z0.shape[0]
    steps = scheduler.config.num_train_timesteps
    if model.family == "unet":
        t = torch.randint(0, min(steps, max_timestep), (batch,), device=z0.device)
        kind = scheduler.config.prediction_type
        target = {"epsilon": lambda: noise, "sample": lambda: z0,
                  "v_prediction": lambda: scheduler.get_velocity(z0, noise, t)}[kind]()
        return scheduler.add_noise(z0, noise, t), t, target
    s = torch.rand(batch, device=z0.device)
    s4 = s[:, None, None, None]
    return (1 - s4) * z0 + s4 * noise, s * steps, noise - z0


def _per_image(train: CaptionedImages, conditional: Any, plain: Any, groups: Any, at_step: int | None) -> list[dict]:
    """One dict per training image: its LIDs (latest, primary σ), the verdict of LID(z | c), its duplicate group."""
    result = conditional.result(at_step=at_step)
    plain_result = plain.result(at_step=at_step) if plain.history else None
    where = {int(i): p for p, i in enumerate(result.train_index.tolist())}
    labels = result.labels
    out = []
    for i in range(len(train)):
        p = where.get(i)
        value = (lambda t: float(t[p]) if t is not None and p is not None else math.nan)
        out.append({"index": i, "file": train.files[i], "caption": train.captions[i],
                    "lid_c": value(result.lid_train), "lid": value(plain_result.lid_train if plain_result else None),
                    "label": LABEL_NAMES[int(labels.label[p])] if labels is not None and p is not None else "",
                    "score": value(labels.score if labels is not None else None),
                    "p_value": value(labels.p_value if labels is not None else None),
                    "group": int(groups.group[i]), "duplicated": bool(groups.size[i] > 1)})
    return out


def _fmt(value: float, spec: str = "{:.2f}") -> str:
    return "" if math.isnan(value) else spec.format(value)


def per_image_csv(train: CaptionedImages, conditional: Any, plain: Any, groups: Any) -> str:
    """The audit table, one row per training image: LID(z | c) at every check, the latest LID(z), the verdict."""
    history = conditional.history_tensor()[:, 0, :]  # [C, P + Q] primary σ
    column = {int(i): p for p, i in enumerate(conditional.train_index.tolist())}
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["index", "file", "caption", *[f"lid_c@step{s}" for s in conditional.steps], "lid_uncond",
                     "label", "score", "p_value", "duplicated", "duplicate_group"])
    for row in _per_image(train, conditional, plain, groups, None):
        p = column.get(row["index"])
        steps = [_fmt(float(v), "{:.4f}") for v in history[:, p].tolist()] if p is not None else [""] * len(history)
        writer.writerow([row["index"], row["file"], row["caption"], *steps, _fmt(row["lid"], "{:.4f}"), row["label"],
                         _fmt(row["score"], "{:.4f}"), _fmt(row["p_value"], "{:.3g}"), str(row["duplicated"]).lower(),
                         row["group"]])
    return out.getvalue()


def per_image_table(train: CaptionedImages, conditional: Any, plain: Any, groups: Any, *,
                    at_step: int | None) -> ReportTable:
    """The report's table: the most memorized training images first, with LID(z | c), LID(z) and the label."""
    rows = _per_image(train, conditional, plain, groups, at_step)
    rows.sort(key=lambda r: -r["score"] if not math.isnan(r["score"]) else math.inf)
    dim = int(conditional.points()[0].numel())
    when = f"the check of step {at_step} (restored by early stopping)" if at_step is not None else "the last check"
    text = (f"Every training image's latent (D = {dim}) at {when}: LID(z | c) measured with the image's own caption, "
            f"LID(z) with the empty prompt, both at the primary noise level σ = {conditional.sigmas[0]:.3g}; the label "
            f"and score are the verdict on LID(z | c) against the held-out null (higher score = more memorized). "
            f"A caption lowers LID on a fitted model (LID(z | c) ≤ LID(z)); an untrained or briefly trained model reads "
            f"values near or above D. Sorted by score; {min(TABLE_ROWS, len(rows))} of {len(rows)} shown, all in the "
            f"audit table.")
    body = tuple((str(r["index"]), r["caption"][:60], _fmt(r["lid_c"]), _fmt(r["lid"]), _fmt(r["lid"] - r["lid_c"]),
                  r["label"] or "—", _fmt(r["score"], "{:.3f}"), str(r["group"]) + (" (dup)" if r["duplicated"] else ""))
                 for r in rows[:TABLE_ROWS])
    return ReportTable(title="Per image: LID(z | c) with its caption, LID(z) without", text=text,
                       header=("index", "caption", "LID(z | c)", "LID(z)", "LID(z) − LID(z | c)", "label", "score",
                               "duplicate group"), rows=body)
