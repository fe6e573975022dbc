"""FLIPD through real diffusers UNet2DModels on CPU: stock attention, both AD modes, bf16 fall-back."""

import warnings

import torch
from diffusers import DDPMScheduler, UNet2DModel

from mmh_train import diffusers_denoiser, flipd
from mmh_train.lid import flipd_estimate


def tiny_unet(attention: bool) -> UNet2DModel:
    torch.manual_seed(0)
    down = ("DownBlock2D", "AttnDownBlock2D") if attention else ("DownBlock2D", "DownBlock2D")
    up = ("AttnUpBlock2D", "UpBlock2D") if attention else ("UpBlock2D", "UpBlock2D")
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=8,
                       down_block_types=down, up_block_types=up)


X = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
SCHEDULER = DDPMScheduler(num_train_timesteps=1000)


def test_stock_unet_with_attention_in_reverse_mode_exact_and_hutchinson():
    unet = tiny_unet(attention=True).train()
    den = diffusers_denoiser(unet, SCHEDULER)
    exact = flipd_estimate(den, X, 0.2)
    hutch = flipd_estimate(den, X, 0.2, n_probes=64, generator=torch.Generator().manual_seed(2))
    assert unet.training  # restored
    assert torch.isfinite(exact.lid).all()
    assert ((hutch.lid - exact.lid).abs() / hutch.stderr).max() < 4.5


def test_forward_mode_through_group_norm_agrees_with_reverse_or_says_to_use_reverse():
    den = diffusers_denoiser(tiny_unet(attention=False), SCHEDULER)
    rev = flipd(den, X, 0.2, n_probes=3, mode="reverse", generator=torch.Generator().manual_seed(3))
    try:
        fwd = flipd(den, X, 0.2, n_probes=3, mode="forward", generator=torch.Generator().manual_seed(3))
    except RuntimeError as error:  # torch 2.13 on CPU: GroupNorm's forward AD rejects the tangent layout
        assert "pass mode='reverse'" in str(error)
    else:
        torch.testing.assert_close(fwd, rev, atol=1e-3, rtol=1e-4)


def test_forward_and_reverse_agree_on_a_conv_net():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(4, 1, 3, padding=1))
    fwd = flipd(lambda x, s: net(x), X, 0.2, n_probes=3, mode="forward", generator=torch.Generator().manual_seed(3))
    rev = flipd(lambda x, s: net(x), X, 0.2, n_probes=3, mode="reverse", generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(fwd, rev, atol=1e-4, rtol=1e-5)


def test_bf16_reverse_either_runs_close_to_fp32_or_falls_back_to_it_with_a_warning():
    den = diffusers_denoiser(tiny_unet(attention=False), SCHEDULER)
    ref = flipd(den, X, 0.2, n_probes=4, generator=torch.Generator().manual_seed(4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = flipd(den, X, 0.2, n_probes=4, precision="bf16", generator=torch.Generator().manual_seed(4))
    fell_back = any("falls back to fp32" in str(w.message) for w in caught)
    if fell_back:
        torch.testing.assert_close(got, ref)
    else:
        assert ((got - ref).abs() / ref.abs().clamp_min(1.0)).max() < 0.05
