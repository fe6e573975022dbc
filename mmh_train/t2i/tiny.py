"""Tiny random text-to-image pipelines built from configs: for tests and the CPU demo, nothing downloaded.

Two families, as :mod:`mmh_train.t2i.pipeline` loads them from disk:

- ``"unet"`` (SD 1.x/2.x-class): ``UNet2DConditionModel`` (cross-attention 32 wide) + ``DDPMScheduler``
  (ε-prediction), ``AutoencoderKL`` with 4 latent channels and one downsampling (16 px → 4×8×8 latents), a
  ``CLIPTextModel`` from a ``CLIPTextConfig``;
- ``"sd3"`` (SD3-class): ``SD3Transformer2DModel`` + ``FlowMatchEulerDiscreteScheduler`` (rectified flow), the
  same autoencoder, two ``CLIPTextModelWithProjection`` (no T5: diffusers then feeds zeros in its place).

The tokenizer is a character-level ``CLIPTokenizer`` whose vocabulary (the 256 byte symbols, alone and
word-final) and empty merge list are written to a temporary folder and read back: it works offline and
tokenizes any text. The weights are random (seeded), so LID values of an untrained tiny model are not
meaningful; the point is that every code path of a real pipeline runs in seconds on a CPU.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from .pipeline import T2IModel

__all__ = ["tiny_pipeline", "tiny_clip_tokenizer", "TINY_MAX_LENGTH", "TINY_IMAGE_SIZE"]

#: Tokens per caption (characters + start/end): "a photo of the digit 3" needs 24.
TINY_MAX_LENGTH = 32
#: The tiny autoencoder halves the side once: 16 px images give 8×8 latents.
TINY_IMAGE_SIZE = 16
#: Puts the random tiny autoencoder's latents of the built-in digits near unit standard deviation.
TINY_SCALING_FACTOR = 4.0


def _byte_symbols() -> list[str]:
    """The 256 printable symbols byte-level BPE (GPT-2, CLIP) uses for the bytes 0–255."""
    printable = set(range(33, 127)) | set(range(161, 173)) | set(range(174, 256))
    symbols, extra = [], 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def tiny_clip_tokenizer(max_length: int = TINY_MAX_LENGTH):
    """A character-level ``CLIPTokenizer`` (514 tokens; ids 0/1 are start/end of text), built offline."""
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in symbols + [s + "</w>" for s in symbols]:
        vocab.setdefault(symbol, len(vocab))
    with tempfile.TemporaryDirectory(prefix="mmh_tiny_tokenizer_") as folder:
        (Path(folder) / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (Path(folder) / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
        return CLIPTokenizer(str(Path(folder) / "vocab.json"), str(Path(folder) / "merges.txt"),
                             model_max_length=max_length)


def _clip_config(vocab_size: int, max_length: int):
    from transformers import CLIPTextConfig

    # bos/eos/pad set to the tiny vocabulary's ids (CLIP's defaults, 49406/49407, lie outside it)
    return CLIPTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=max_length, projection_dim=32,
                          bos_token_id=0, eos_token_id=1, pad_token_id=1)


def _tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, norm_num_groups=8, sample_size=TINY_IMAGE_SIZE,
                         scaling_factor=TINY_SCALING_FACTOR)


def tiny_pipeline(family: str = "unet", *, seed: int = 0) -> T2IModel:
    """A random tiny pipeline of ``family`` (``"unet"`` or ``"sd3"``), identical for a given ``seed``.

    The global RNG is left as it was (the weights are drawn under a forked RNG).
    """
    from diffusers import (DDPMScheduler, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           StableDiffusion3Pipeline, StableDiffusionPipeline, UNet2DConditionModel)
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if family not in ("unet", "sd3"):
        raise ValueError(f"family={family!r}; choose 'unet' (UNet2DConditionModel) or 'sd3' (SD3Transformer2DModel).")
    tokenizer = tiny_clip_tokenizer()
    config = _clip_config(len(tokenizer), TINY_MAX_LENGTH)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = _tiny_vae()
        if family == "unet":
            unet = UNet2DConditionModel(
                sample_size=TINY_IMAGE_SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=4,
                norm_num_groups=8)
            scheduler = DDPMScheduler(num_train_timesteps=1000, clip_sample=False, steps_offset=1)
            pipe = StableDiffusionPipeline(vae=vae, text_encoder=CLIPTextModel(config), tokenizer=tokenizer, unet=unet,
                                           scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                           requires_safety_checker=False)
        else:
            transformer = SD3Transformer2DModel(
                sample_size=TINY_IMAGE_SIZE // 2, patch_size=1, in_channels=4, out_channels=4, num_layers=1,
                attention_head_dim=8, num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=32,
                pooled_projection_dim=64, pos_embed_max_size=16)
            pipe = StableDiffusion3Pipeline(
                transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
                text_encoder=CLIPTextModelWithProjection(config), tokenizer=tokenizer,
                text_encoder_2=CLIPTextModelWithProjection(config), tokenizer_2=tiny_clip_tokenizer(),
                text_encoder_3=None, tokenizer_3=None)
    return T2IModel.from_pipeline(pipe, family, prompt_options={"max_sequence_length": 4} if family == "sd3" else {})
