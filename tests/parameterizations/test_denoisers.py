"""Every parameterization reproduces an analytic denoiser in float64 (science.md §2).

Each fake network below is written in its own training convention (how t maps to the noise, what it
predicts), independently of mmh_train; wrapping it must give back the analytic D(x; σ).
"""

import math

import pytest
import torch
from closed_forms import GaussianSubspace, vp_linear_alpha_bar
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

from mmh_train.parameterizations import (
    DiscreteVPSchedule,
    diffusers_denoiser,
    edm_denoiser,
    flow_matching_denoiser,
    rectified_flow_denoiser,
    ve_denoiser,
    vp_denoiser,
)

TRUTH = GaussianSubspace(dim=6, k=2, variances=[1.0, 0.5], seed=3)
X = TRUTH.sample(5, seed=4) + 0.05 * torch.randn(5, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)


def vp_network_output(y, a, b, prediction_type):
    """What a VP network trained on y = a x0 + b ε outputs when it knows the true denoiser."""
    a, b = a.reshape(-1, 1), b.reshape(-1, 1)
    sigma = (b / a).reshape(-1)
    x0 = TRUTH.denoiser(y / a, sigma)
    eps = (y - a * x0) / b
    return {"epsilon": eps, "v_prediction": a * eps - b * x0, "sample": x0}[prediction_type]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_diffusers_ddpm_matches_truth_at_tabulated_levels(prediction_type):
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    table = scheduler.alphas_cumprod.double()
    seen_t = []

    def unet(y, t):
        seen_t.append(t.clone())
        alpha_bar = table[t.round().long()]
        return vp_network_output(y, alpha_bar.sqrt(), (1 - alpha_bar).sqrt(), prediction_type)

    timesteps = torch.tensor([3, 40, 120, 400, 900])
    sigma = ((1 - table[timesteps]) / table[timesteps]).sqrt()
    got = diffusers_denoiser(unet, scheduler)(X, sigma)
    torch.testing.assert_close(seen_t[-1], timesteps.double(), atol=1e-8, rtol=0)
    torch.testing.assert_close(got, TRUTH.denoiser(X, sigma), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_diffusers_ddpm_snapped_timesteps_evaluate_the_snapped_sigma(prediction_type):
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    table = scheduler.alphas_cumprod.double()

    def unet(y, t):
        assert torch.equal(t, t.round()), "snapped mode must pass integer timesteps"
        alpha_bar = table[t.long()]
        return vp_network_output(y, alpha_bar.sqrt(), (1 - alpha_bar).sqrt(), prediction_type)

    den = diffusers_denoiser(unet, scheduler, continuous_timesteps=False)
    requested = torch.full((5,), 0.2, dtype=torch.float64)
    snapped = den.snap_sigma(requested)
    sigmas = ((1 - table) / table).sqrt()
    t_nearest = (sigmas.log() - math.log(0.2)).abs().argmin()
    torch.testing.assert_close(snapped, sigmas[t_nearest].expand(5))
    torch.testing.assert_close(den(X, snapped), TRUTH.denoiser(X, snapped), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_continuous_vp_matches_truth(prediction_type):
    def net(y, t):
        alpha_bar = vp_linear_alpha_bar(t)
        return vp_network_output(y, alpha_bar.sqrt(), (1 - alpha_bar).sqrt(), prediction_type)

    sigma = torch.tensor([0.01, 0.17, 0.5, 2.0, 30.0], dtype=torch.float64)
    got = vp_denoiser(net, prediction_type=prediction_type)(X, sigma)
    torch.testing.assert_close(got, TRUTH.denoiser(X, sigma), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("time_scale", [1.0, 1000.0])
def test_rectified_flow_data_at_zero_matches_truth(time_scale):
    def net(y, t):
        t = (t / time_scale).reshape(-1, 1)  # x_t = (1 − t) x0 + t ε, v = ε − x0
        x0 = TRUTH.denoiser(y / (1 - t), (t / (1 - t)).reshape(-1))
        eps = (y - (1 - t) * x0) / t
        return eps - x0

    sigma = torch.tensor([0.01, 0.17, 0.5, 2.0, 30.0], dtype=torch.float64)
    got = rectified_flow_denoiser(net, time_scale=time_scale)(X, sigma)
    torch.testing.assert_close(got, TRUTH.denoiser(X, sigma), atol=1e-10, rtol=1e-10)


def test_flow_matching_data_at_one_matches_truth():
    def net(y, t):
        t = t.reshape(-1, 1)  # x_t = t x1 + (1 − t) ε, v = x1 − ε
        x1 = TRUTH.denoiser(y / t, ((1 - t) / t).reshape(-1))
        eps = (y - t * x1) / (1 - t)
        return x1 - eps

    sigma = torch.tensor([0.01, 0.17, 0.5, 2.0, 30.0], dtype=torch.float64)
    got = flow_matching_denoiser(net)(X, sigma)
    torch.testing.assert_close(got, TRUTH.denoiser(X, sigma), atol=1e-10, rtol=1e-10)


def test_diffusers_flow_match_scheduler_is_rectified_flow_in_thousandths():
    def transformer(y, timestep):
        t = (timestep / 1000).reshape(-1, 1)
        x0 = TRUTH.denoiser(y / (1 - t), (t / (1 - t)).reshape(-1))
        return ((y - (1 - t) * x0) / t) - x0

    sigma = torch.tensor([0.05, 0.3, 1.0, 3.0, 9.0], dtype=torch.float64)
    got = diffusers_denoiser(transformer, FlowMatchEulerDiscreteScheduler())(X, sigma)
    torch.testing.assert_close(got, TRUTH.denoiser(X, sigma), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("prediction_type", ["sample", "epsilon"])
def test_ve_matches_truth(prediction_type):
    def net(y, sigma):
        x0 = TRUTH.denoiser(y, sigma)
        return x0 if prediction_type == "sample" else (y - x0) / sigma.reshape(-1, 1)

    sigma = torch.tensor([0.01, 0.17, 0.5, 2.0, 30.0], dtype=torch.float64)
    torch.testing.assert_close(ve_denoiser(net, prediction_type=prediction_type)(X, sigma),
                               TRUTH.denoiser(X, sigma), atol=1e-10, rtol=1e-10)


def test_edm_preconditioning_matches_truth():
    sigma_data = 0.5

    def raw_network(x_in, c_noise):  # F such that c_skip x + c_out F(c_in x) = D(x)
        sigma = torch.exp(4 * c_noise).reshape(-1, 1)
        x = x_in * torch.sqrt(sigma**2 + sigma_data**2)
        c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
        c_out = sigma * sigma_data / torch.sqrt(sigma**2 + sigma_data**2)
        return (TRUTH.denoiser(x, sigma.reshape(-1)) - c_skip * x) / c_out

    sigma = torch.tensor([0.01, 0.17, 0.5, 2.0, 30.0], dtype=torch.float64)
    torch.testing.assert_close(edm_denoiser(raw_network, sigma_data=sigma_data)(X, sigma),
                               TRUTH.denoiser(X, sigma), atol=1e-10, rtol=1e-10)


def test_schedule_coefficients_stay_float64_where_bf16_would_round_them_away():
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    level = DiscreteVPSchedule(scheduler.alphas_cumprod).level(torch.tensor([0.01], dtype=torch.float64))
    assert level.a.dtype == level.b.dtype == torch.float64
    assert torch.tensor(1 / (1 + 0.01**2)).bfloat16().item() == 1.0  # ᾱ rounds to 1 in bf16 ...
    assert level.b.item() == pytest.approx(0.01 / math.sqrt(1 + 0.01**2), rel=1e-12)  # ... but not here


def test_bind_passes_conditioning_to_the_network():
    seen = {}

    def net(y, t, class_labels=None):
        seen["labels"] = class_labels
        return torch.zeros_like(y)

    den = vp_denoiser(net).bind(class_labels=torch.arange(5))
    den(X, torch.full((5,), 0.1, dtype=torch.float64))
    assert torch.equal(seen["labels"], torch.arange(5))


def test_diffusers_unet_output_object_is_unwrapped():
    from diffusers import UNet2DModel

    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=(8, 8), norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    den = diffusers_denoiser(unet, DDPMScheduler(num_train_timesteps=1000))
    with torch.no_grad():
        out = den(x, torch.full((2,), 0.2, dtype=torch.float64))
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()


def test_a_network_inside_a_plain_function_is_found_and_put_in_eval_mode_for_the_estimate():
    """The plain-loop pattern `lambda y, t: net(...)`: BatchNorm must use its running statistics during FLIPD
    (eval mode) and be back in train mode afterwards, with its running statistics untouched."""
    import functools

    import mmh_train
    from diffusers import DDPMScheduler
    from mmh_train.parameterizations.denoisers import modules_inside

    net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 4))
    wrapped = lambda y, t: net(torch.cat([y, t[:, None].float() / 1000], 1))  # noqa: E731
    assert modules_inside(wrapped) == [net]
    assert modules_inside(functools.partial(lambda n, y, t: n(y), net)) == [net]
    assert modules_inside(lambda x, s: 0.0 * x) == []
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    den = mmh_train.diffusers_denoiser(wrapped, DDPMScheduler())
    lid = mmh_train.flipd(den, x, 0.5)
    net.eval()
    expected = mmh_train.flipd(den, x, 0.5)  # what eval mode reads
    net.train()
    torch.testing.assert_close(lid, expected)
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
