"""FLIPD and the monitor through real text-to-image stacks (tiny pipelines, CPU): a peft LoRA on a
UNet2DConditionModel with the text encoder frozen, gradient checkpointing on, bf16 weights, diffusers' own
attention processors; per-probe caption conditioning and its shape errors; restoring LoRA weights; the SD3
family; loading a local pipeline folder."""

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("transformers")

import mmh_train  # noqa: E402
from mmh_train.data import captioned_digits  # noqa: E402
from mmh_train.t2i import load_pretrained, pipeline_family, tiny_pipeline  # noqa: E402


@pytest.fixture(scope="module")
def stack():
    """The tiny UNet pipeline, frozen, with a LoRA (B initialised non-zero so the adapter changes the output)."""
    model = tiny_pipeline("unet")
    data = captioned_digits(12)
    z = model.encode_images(data.images)
    cond = model.encode_prompts(list(data.captions))
    model.freeze()
    lora = model.add_lora(4)
    with torch.no_grad():
        for p in lora:
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    model.network.enable_gradient_checkpointing()
    return model, z, cond, lora


def _flipd(model, z, cond, **options):
    den = mmh_train.diffusers_denoiser(model.conditioned_network(), model.scheduler).bind(**cond)
    return mmh_train.flipd(den, z, 1.0, n_probes=2, generator=torch.Generator().manual_seed(0), **options)


def test_flipd_through_a_lora_unet_with_checkpointing_leaves_training_state_alone(stack):
    model, z, cond, lora = stack
    unet, text_encoder = model.network, model.pipeline.text_encoder
    unet.train()
    modes = [m.training for m in unet.modules()]
    lid = _flipd(model, z[:4], {k: v[:4] for k, v in cond.items()})
    assert lid.shape == (4,) and torch.isfinite(lid).all()
    assert [m.training for m in unet.modules()] == modes and unet.is_gradient_checkpointing
    assert all(p.requires_grad for p in lora) and not any(p.requires_grad for p in text_encoder.parameters())
    assert all(p.grad is None for p in unet.parameters())  # the estimator left no gradient behind
    # a training step through the checkpointed UNet still reaches the LoRA weights, and only them
    out = model.conditioned_network()(z[:4], torch.full((4,), 10), **{k: v[:4] for k, v in cond.items()})
    out.pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
    assert all(p.grad is None for p in unet.parameters() if not p.requires_grad)
    for p in lora:
        p.grad = None


def test_diffusers_attention_processors_are_kept_and_agree_with_the_classic_one(stack):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    model, z, cond, _ = stack
    x, c = z[:3], {k: v[:3] for k, v in cond.items()}
    before = {name: type(p).__name__ for name, p in model.network.attn_processors.items()}
    assert set(before.values()) == {"AttnProcessor2_0"}  # what diffusers sets: SDPA, run on its MATH kernel
    sdpa = _flipd(model, x, c)
    assert {name: type(p).__name__ for name, p in model.network.attn_processors.items()} == before
    try:
        model.network.set_attn_processor(AttnProcessor())
        classic = _flipd(model, x, c)
    finally:
        model.network.set_attn_processor(AttnProcessor2_0())
    torch.testing.assert_close(sdpa, classic, rtol=1e-3, atol=1e-2)


def test_bf16_weights_run_under_autocast_on_purpose_and_agree_with_fp32():
    model = tiny_pipeline("unet")
    data = captioned_digits(4)
    z, cond = model.encode_images(data.images), model.encode_prompts(list(data.captions))
    fp32 = _flipd(model, z, cond)
    model.freeze(torch.bfloat16)
    lora = model.add_lora(4)
    assert {p.dtype for p in lora} == {torch.float32}
    assert {p.dtype for p in model.network.parameters() if not p.requires_grad} == {torch.bfloat16}
    with pytest.raises(RuntimeError, match="Float and BFloat16"):  # without autocast the mixed weights clash
        _flipd(model, z, cond)
    bf16 = _flipd(model, z, cond, precision="bf16")  # the LoRA's B starts at 0: the same function as fp32
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
    torch.testing.assert_close(bf16, fp32, rtol=0.05, atol=2.0)


def test_monitor_binds_each_caption_and_names_the_fix_for_wrong_shapes(stack):
    model, z, cond, _ = stack
    emb = cond["encoder_hidden_states"]  # [N, L, D]
    den = mmh_train.diffusers_denoiser(model.conditioned_network(), model.scheduler)

    def monitor(train_emb, held_emb):
        return mmh_train.MemorizationMonitor(z[:8], z[8:], every_n_steps=1, estimator_options={"n_probes": 1},
                                             conditioning={"encoder_hidden_states": train_emb},
                                             heldout_conditioning={"encoder_hidden_states": held_emb})

    result = monitor(emb[:8], emb[8:]).check(den, 1)
    assert torch.isfinite(result.lid_train).all() and torch.isfinite(result.lid_heldout).all()
    # the conditioning matters: the same probes with other captions read other values
    other = monitor(emb[:8].roll(1, 0), emb[8:]).check(den, 1)
    assert not torch.allclose(other.lid_train, result.lid_train)
    with pytest.raises(ValueError, match=r"pooled \[N, D\] vector .*\[:, None, :\]"):
        monitor(emb[:8, 0], emb[8:, 0]).check(den, 1)  # pooled, not per token
    with pytest.raises(ValueError, match="with last dimension 32"):
        monitor(torch.zeros(8, 5, 64), torch.zeros(4, 5, 64)).check(den, 1)  # another text encoder's width


def test_guard_restores_the_lora_weights_of_the_best_check(stack):
    model, z, cond, lora = stack
    net = model.conditioned_network()
    den = mmh_train.diffusers_denoiser(net, model.scheduler)
    monitor = mmh_train.MemorizationMonitor(z[:8], z[8:], every_n_steps=1, estimator_options={"n_probes": 1},
                                            conditioning={"encoder_hidden_states": cond["encoder_hidden_states"][:8]},
                                            heldout_conditioning={"encoder_hidden_states": cond["encoder_hidden_states"][8:]})
    # min_delta so large that only the first check is ever "best": the second stops and restores the first's weights
    stopper = mmh_train.MemorizationStopper("lid_train", mode="min", patience=1, min_delta=1e9, tolerance=None)
    guard = mmh_train.MemorizationGuard(monitor, stopper=stopper, restore_best_weights=True)
    frozen = {n: p.clone() for n, p in net.named_parameters() if not p.requires_grad}
    guard.maybe_check(den, 1)
    best = [p.detach().clone() for p in lora]
    with torch.no_grad():
        for p in lora:
            p.add_(1.0)  # "training" between the checks
    guard.maybe_check(den, 2)
    assert guard.should_stop and guard.restored_step == 1
    assert all(torch.equal(p, b) for p, b in zip(lora, best))
    assert all(torch.equal(p, frozen[n]) for n, p in net.named_parameters() if not p.requires_grad)
    kept = guard.best.load()["networks"]  # one copy of what trains: the adapters, not the frozen UNet
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in net.named_buffers()}
    assert kept and all(set(state) <= trainable | buffers for state in kept)
    assert sum(v.numel() for state in kept for v in state.values()) == sum(p.numel() for p in lora)


def test_sd3_transformer_with_a_flow_scheduler_under_the_monitor():
    model = tiny_pipeline("sd3")
    data = captioned_digits(8)
    z, cond = model.encode_images(data.images), model.encode_prompts(list(data.captions))
    assert set(cond) == {"encoder_hidden_states", "pooled_projections"}
    model.freeze()
    model.add_lora(4)
    den = mmh_train.diffusers_denoiser(model.conditioned_network(), model.scheduler)  # FlowMatch: rectified flow
    assert den.prediction_type == "velocity"
    monitor = mmh_train.MemorizationMonitor(z[:5], z[5:], every_n_steps=1, estimator_options={"n_probes": 1},
                                            conditioning={k: v[:5] for k, v in cond.items()},
                                            heldout_conditioning={k: v[5:] for k, v in cond.items()})
    assert torch.isfinite(monitor.check(den, 1).lid_train).all()


@pytest.mark.parametrize("family", ["unet", "sd3"])
def test_local_pipeline_folders_load_offline(tmp_path, family):
    model = tiny_pipeline(family)
    model.pipeline.save_pretrained(tmp_path / "pipe")  # an SD3 folder without T5: text_encoder_3 stays None
    assert pipeline_family(tmp_path / "pipe") == family
    loaded = load_pretrained(tmp_path / "pipe")
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    emb = model.encode_prompts(["a", "b"])
    for m in (model, loaded):
        m.network.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.conditioned_network()(z, torch.tensor([5, 5]), **emb),
                                   model.conditioned_network()(z, torch.tensor([5, 5]), **emb))
    if family == "unet":
        torch.testing.assert_close(loaded.encode_prompts(["a", "b"]), emb)


def test_anything_but_a_pipeline_folder_is_refused_with_the_layout(tmp_path):
    (tmp_path / "file.safetensors").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    index = '{"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"]}'  # an unconditional pipeline
    (tmp_path / "other" / "model_index.json").write_text(index)
    (tmp_path / "other" / "unet").mkdir()
    for path, message in ((tmp_path / "nowhere", "does not exist"), (tmp_path / "file.safetensors", "not a folder"),
                          (tmp_path / "empty", "no model_index.json"),
                          (tmp_path / "other", "subfolder.s. vae, text_encoder, tokenizer, scheduler are missing")):
        with pytest.raises((ValueError, FileNotFoundError), match=message) as error:
            pipeline_family(path)
        assert "PATH/unet/config.json" in str(error.value)  # the expected layout is shown


def test_latents_and_captions_are_deterministic_and_leave_modes_and_the_global_rng_alone():
    model = tiny_pipeline("unet")
    data = captioned_digits(3)
    vae, text_encoder = model.vae, model.pipeline.text_encoder
    vae.train()
    vae.encoder.conv_in.eval()  # a submodule the user froze in eval mode stays so
    text_encoder.train()
    modes = [m.training for m in (*vae.modules(), *text_encoder.modules())]
    state = torch.get_rng_state()
    z1, z2 = model.encode_images(data.images), model.encode_images(data.images)
    emb = model.encode_prompts(list(data.captions))
    assert torch.equal(z1, z2) and z1.shape == (3, 4, 8, 8)  # the posterior mean, no sampling
    assert emb["encoder_hidden_states"].shape == (3, 32, 32)
    assert model.decode_latents(z1).shape == (3, 3, 16, 16)
    assert [m.training for m in (*vae.modules(), *text_encoder.modules())] == modes
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("family", ["unet", "sd3"])
def test_a_lora_rank_no_adapted_layer_can_use_is_refused_before_any_adapter_is_made(family):
    """The limit is min(in, out) of the widest layer peft adapts: exactly the layers lora_layers() names."""
    model = tiny_pipeline(family)
    layers, limit = model.lora_layers(), model.max_lora_rank()
    assert limit == max(min(m.in_features, m.out_features) for m in layers.values()) == 32
    for rank in (limit + 1, 100000, 0, 2.5):
        with pytest.raises(ValueError, match=f"must be an integer from 1 to {limit}: a LoRA update"):
            model.add_lora(rank)
    assert not any(p.requires_grad is False for p in model.network.parameters())  # nothing was adapted or frozen
    model.add_lora(limit)
    adapted = {name.removesuffix(".base_layer") for name, m in model.network.named_modules()
               if hasattr(m, "lora_A") and len(m.lora_A)}
    assert adapted == set(layers)
