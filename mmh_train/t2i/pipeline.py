"""A diffusers text-to-image pipeline as mmh_train uses it: latents in, caption embeddings as conditioning.

Two families (``FAMILIES``):

- ``"unet"``: SD 1.x/2.x-class, ``UNet2DConditionModel`` with a scheduler that has an ᾱ table (DDPM, …); the
  network takes ``encoder_hidden_states [B, L, D]``.
- ``"sd3"``: SD3-class, ``SD3Transformer2DModel`` with ``FlowMatchEulerDiscreteScheduler`` (rectified flow, data
  at t = 0); the network takes ``encoder_hidden_states [B, L, D]`` and ``pooled_projections [B, P]``.

Both are seen through :class:`ConditionedNetwork`, ``net(sample, timestep, **conditioning) -> Tensor``, which
is what :func:`mmh_train.diffusers_denoiser` calls, so the monitor binds each probe's own caption embedding
(``MemorizationMonitor(conditioning=model.encode_prompts(captions))``). Nothing is downloaded: a pretrained
pipeline is read from a local folder only (:func:`load_pretrained`), and a folder that is not a pipeline of
either family is refused before any weight is read, with the layout it should have.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor, nn

__all__ = ["FAMILIES", "EXPECTED_LAYOUT", "T2IModel", "ConditionedNetwork", "pipeline_family", "load_pretrained",
           "LORA_TARGETS"]

#: family → (the network's subfolder, its diffusers class).
FAMILIES = {"unet": ("unet", "UNet2DConditionModel"), "sd3": ("transformer", "SD3Transformer2DModel")}
#: The attention projections a LoRA adapts (the same names in both families).
LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
EXPECTED_LAYOUT = """a diffusers pipeline folder (as pipeline.save_pretrained(PATH) writes it):
  PATH/model_index.json
  PATH/scheduler/scheduler_config.json
  PATH/vae/config.json + weights                      (AutoencoderKL)
  PATH/text_encoder/config.json + weights, PATH/tokenizer/
  and either PATH/unet/config.json + weights          (UNet2DConditionModel: SD 1.x/2.x)
  or PATH/transformer/config.json + weights           (SD3Transformer2DModel with text_encoder_2/, tokenizer_2/
                                                       and optionally text_encoder_3/, tokenizer_3/: SD3)
Download one beforehand, e.g. huggingface-cli download <repo> --local-dir PATH; nothing is downloaded at run time."""


def _not_a_pipeline(path: Path, why: str) -> ValueError:
    return ValueError(f"model.pretrained={str(path)!r} is not a text-to-image pipeline folder: {why}. Expected "
                      f"{EXPECTED_LAYOUT}")


def pipeline_family(path: str | os.PathLike) -> str:
    """``"unet"`` or ``"sd3"`` for a local pipeline folder, read from its JSON files only (no weight is loaded).

    Raises:
        FileNotFoundError: the path does not exist. ValueError: it is not a pipeline of either family; the
        message shows the expected layout.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"model.pretrained={str(root)!r} does not exist (relative to {os.getcwd()}). "
                                f"Expected {EXPECTED_LAYOUT}")
    if not root.is_dir():
        raise _not_a_pipeline(root, "it is a file, not a folder (single-file checkpoints are not read)")
    index_file = root / "model_index.json"
    if not index_file.is_file():
        raise _not_a_pipeline(root, "it has no model_index.json")
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _not_a_pipeline(root, f"model_index.json is not JSON ({error})") from None
    found = [name for name, (folder, _) in FAMILIES.items() if folder in index]
    if len(found) != 1:
        raise _not_a_pipeline(root, f"model_index.json ({index.get('_class_name', 'no _class_name')}) lists "
                                    f"{'neither' if not found else 'both'} a 'unet' {'nor' if not found else 'and'} a "
                                    f"'transformer'")
    family = found[0]
    folder, class_name = FAMILIES[family]
    wanted = [folder, "vae", "text_encoder", "tokenizer", "scheduler"] + (["text_encoder_2", "tokenizer_2"]
                                                                         if family == "sd3" else [])
    missing = [name for name in wanted if not (root / name).is_dir()]
    if missing:
        raise _not_a_pipeline(root, f"the subfolder(s) {', '.join(missing)} are missing")
    config_file = root / folder / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    if config.get("_class_name") != class_name:
        raise _not_a_pipeline(root, f"{folder}/config.json describes {config.get('_class_name', 'nothing')!r}, not "
                                    f"{class_name!r}")
    return family


class ConditionedNetwork(nn.Module):
    """``net(sample [B, C, h, w], timestep [B], **conditioning) -> [B, C, h, w]`` for either family.

    The diffusers network is the registered child ``inner``, so ``modules()``, ``state_dict`` (keys prefixed
    ``inner.``) and train/eval reach it. Conditioning: ``encoder_hidden_states [B, L, D]`` (both families) and
    ``pooled_projections [B, P]`` (SD3).
    """

    def __init__(self, inner: nn.Module, family: str) -> None:
        super().__init__()
        if family not in FAMILIES:
            raise ValueError(f"family={family!r}; choose one of {sorted(FAMILIES)}.")
        self.inner, self.family = inner, family

    def forward(self, sample: Tensor, timestep: Tensor, **conditioning: Tensor) -> Tensor:
        if self.family == "unet":
            return self.inner(sample, timestep, **conditioning).sample
        return self.inner(hidden_states=sample, timestep=timestep, **conditioning).sample


@dataclass
class T2IModel:
    """The parts of a text-to-image pipeline that training and the monitor use.

    Attributes:
        family: ``"unet"`` or ``"sd3"``.
        pipeline: the diffusers pipeline (its ``encode_prompt`` embeds captions).
        prompt_options: extra keyword arguments for ``pipeline.encode_prompt``.
    """

    family: str
    pipeline: Any
    prompt_options: dict = field(default_factory=dict)

    @classmethod
    def from_pipeline(cls, pipeline: Any, family: str, prompt_options: dict | None = None) -> "T2IModel":
        if family not in FAMILIES:
            raise ValueError(f"family={family!r}; choose one of {sorted(FAMILIES)}.")
        return cls(family, pipeline, dict(prompt_options or {}))

    @property
    def network(self) -> nn.Module:
        """The denoising network (``UNet2DConditionModel`` or ``SD3Transformer2DModel``)."""
        return getattr(self.pipeline, FAMILIES[self.family][0])

    @property
    def vae(self) -> nn.Module:
        return self.pipeline.vae

    @property
    def scheduler(self) -> Any:
        return self.pipeline.scheduler

    def frozen_modules(self) -> list[nn.Module]:
        """The VAE and the text encoders: never trained here."""
        names = ("vae", "text_encoder", "text_encoder_2", "text_encoder_3")
        return [m for m in (getattr(self.pipeline, n, None) for n in names) if isinstance(m, nn.Module)]

    def freeze(self, dtype: torch.dtype = torch.float32) -> None:
        """No gradients for any weight of the pipeline; every module cast to ``dtype`` (e.g. bf16 weights)."""
        for module in [*self.frozen_modules(), self.network]:
            module.requires_grad_(False)
            if any(p.dtype != dtype for p in module.parameters()):  # diffusers logs a warning at every cast
                module.to(dtype)

    def lora_layers(self) -> dict[str, nn.Linear]:
        """The layers :meth:`add_lora` adapts (peft's match of :data:`LORA_TARGETS`: a name or its suffix), by name."""
        return {name: m for name, m in self.network.named_modules() if isinstance(m, nn.Linear)
                and any(name == t or name.endswith("." + t) for t in LORA_TARGETS)}

    def max_lora_rank(self) -> int:
        """The largest LoRA rank any adapted layer can use: the update B·A of a layer with ``in → out`` features has
        rank at most min(in, out), so a larger rank only adds parameters (and memory) that learn nothing more."""
        layers = self.lora_layers()
        if not layers:
            raise ValueError(f"the network has no linear layer named {LORA_TARGETS} (or ending so) to adapt.")
        return max(min(m.in_features, m.out_features) for m in layers.values())

    def add_lora(self, rank: int, alpha: float | None = None) -> list[nn.Parameter]:
        """Adds a peft LoRA adapter (rank ``rank``, 1 to :meth:`max_lora_rank`) to the attention projections of the
        network and returns its parameters, the only trainable ones, in float32 whatever the frozen weights' dtype."""
        from peft import LoraConfig

        limit = self.max_lora_rank()
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= limit:
            raise ValueError(f"rank={rank!r} must be an integer from 1 to {limit}: a LoRA update of a layer with "
                             f"in → out features has rank at most min(in, out), and the widest layer adapted here "
                             f"allows {limit}.")
        self.network.add_adapter(LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian",
                                            target_modules=LORA_TARGETS))
        params = [p for p in self.network.parameters() if p.requires_grad]
        for p in params:
            p.data = p.data.float()
        return params

    def conditioned_network(self) -> ConditionedNetwork:
        return ConditionedNetwork(self.network, self.family)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], *, batch_size: int = 64) -> dict[str, Tensor]:
        """Each prompt's conditioning, ``{"encoder_hidden_states": [N, L, D]}`` (+ ``"pooled_projections":
        [N, P]`` for SD3), float32 on the CPU, by the frozen text encoder(s) in eval mode (modes restored)."""
        device, parts = self.network.device, {}
        with _evaluating(self.frozen_modules()):
            for start in range(0, len(prompts), batch_size):
                chunk = list(prompts[start:start + batch_size])
                if self.family == "unet":
                    hidden, _ = self.pipeline.encode_prompt(chunk, device, 1, False, **self.prompt_options)
                    out = {"encoder_hidden_states": hidden}
                else:
                    hidden, _, pooled, _ = self.pipeline.encode_prompt(chunk, None, None, device=device,
                                                                       do_classifier_free_guidance=False,
                                                                       **self.prompt_options)
                    out = {"encoder_hidden_states": hidden, "pooled_projections": pooled}
                for key, value in out.items():
                    parts.setdefault(key, []).append(value.float().cpu())
        return {key: torch.cat(values) for key, values in parts.items()}

    def _latent_affine(self) -> tuple[float, float]:
        config = self.vae.config
        return float(config.scaling_factor), float(getattr(config, "shift_factor", None) or 0.0)

    @torch.no_grad()
    def encode_images(self, images: Tensor, *, batch_size: int = 32) -> Tensor:
        """Images ``[N, 3, H, W]`` in ``[−1, 1]`` → latents ``[N, C, H/f, W/f]`` float32 on the CPU:
        (posterior mean − shift) × scaling factor, deterministic (no sampling from the posterior)."""
        scale, shift = self._latent_affine()
        vae, dtype = self.vae, next(self.vae.parameters()).dtype
        with _evaluating([vae]):
            means = [vae.encode(chunk.to(vae.device, dtype)).latent_dist.mean for chunk in images.split(batch_size)]
        return torch.cat([(mean.float().cpu() - shift) * scale for mean in means])

    @torch.no_grad()
    def decode_latents(self, latents: Tensor, *, batch_size: int = 32) -> Tensor:
        """Latents ``[N, C, h, w]`` → images ``[N, 3, H, W]`` float32 in ``[−1, 1]`` on the CPU."""
        scale, shift = self._latent_affine()
        vae, dtype = self.vae, next(self.vae.parameters()).dtype
        with _evaluating([vae]):
            images = [vae.decode((chunk / scale + shift).to(vae.device, dtype)).sample
                      for chunk in latents.split(batch_size)]
        return torch.cat([image.float().clamp(-1, 1).cpu() for image in images])


@contextlib.contextmanager
def _evaluating(modules: list[nn.Module]) -> Iterator[None]:
    """Eval mode for ``modules`` inside, each submodule's own train/eval flag restored after."""
    saved = [(m, m.training) for root in modules for m in root.modules()]
    try:
        for root in modules:
            root.eval()
        yield
    finally:
        for m, training in saved:
            m.training = training


def load_pretrained(path: str | os.PathLike) -> T2IModel:
    """A local diffusers pipeline folder of either family (checked first by :func:`pipeline_family`), read with
    ``local_files_only=True``: a folder that lacks a file fails instead of downloading it."""
    from diffusers import StableDiffusion3Pipeline, StableDiffusionPipeline

    family = pipeline_family(path)
    if family == "unet":
        pipe = StableDiffusionPipeline.from_pretrained(str(path), local_files_only=True, safety_checker=None,
                                                       feature_extractor=None, requires_safety_checker=False)
    else:
        absent = {name: None for name in ("text_encoder_3", "tokenizer_3", "image_encoder", "feature_extractor")
                  if not (Path(path) / name).is_dir()}  # optional parts (an SD3 folder saved without T5)
        pipe = StableDiffusion3Pipeline.from_pretrained(str(path), local_files_only=True, **absent)
    return T2IModel.from_pipeline(pipe, family)
