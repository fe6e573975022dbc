"""Bad input gets a clear error that names the fix, raised before the network is ever called."""

import pytest
import torch
from diffusers import DDPMScheduler

from mmh_train import diffusers_denoiser, flipd, normal_bundle_lid, reference_lid, vp_denoiser
from mmh_train.lid import flipd_curve


class CountingDenoiser:
    def __init__(self, fn=None):
        self.calls = 0
        self.fn = fn or (lambda x, s: 0.9 * x)

    def __call__(self, x, sigma):
        self.calls += 1
        return self.fn(x, sigma)


X = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
ESTIMATORS = [
    lambda den, x, s, **kw: flipd(den, x, s, **kw),
    lambda den, x, s, **kw: normal_bundle_lid(den, x, s, **kw),
]


@pytest.mark.parametrize("estimate", ESTIMATORS)
def test_nan_or_inf_rows_are_named(estimate):
    x = X.clone()
    x[1, 2] = float("nan")
    x[4, 0] = float("inf")
    den = CountingDenoiser()
    with pytest.raises(ValueError, match=r"NaN or Inf in 2 row\(s\): \[1, 4\]"):
        estimate(den, x, 0.1)
    assert den.calls == 0


@pytest.mark.parametrize("sigma", [0.0, -0.1, float("nan"), float("inf"), torch.tensor([0.1, 0.1, 0.0, 0.1, 0.1, 0.1])])
def test_sigma_must_be_positive_and_finite(sigma):
    den = CountingDenoiser()
    with pytest.raises(ValueError, match="sigma must be finite and > 0"):
        flipd(den, X, sigma)
    assert den.calls == 0


def test_sigma_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"shape \[B\] = \[6\]"):
        flipd(CountingDenoiser(), X, torch.full((3,), 0.1))


def test_denoiser_output_of_another_shape():
    den = CountingDenoiser(lambda x, s: x[:, :2])
    with pytest.raises(ValueError, match="wrap it with a parameterization"):
        flipd(den, X, 0.1)
    assert den.calls == 1  # the one forward pass that revealed it; no JVP ran


def test_denoiser_output_of_another_dtype():
    with pytest.raises(TypeError, match=r"returned dtype torch.float64 .* `.to\(x.dtype\)`"):
        flipd(CountingDenoiser(lambda x, s: x.double()), X, 0.1)


def test_denoiser_returning_something_else():
    with pytest.raises(TypeError, match="must return a Tensor"):
        flipd(CountingDenoiser(lambda x, s: x.tolist()), X, 0.1)


@pytest.mark.parametrize("n_probes", [0, -3, 1.5])
def test_n_probes_must_be_at_least_one(n_probes):
    den = CountingDenoiser()
    with pytest.raises(ValueError, match="n_probes must be an integer ≥ 1"):
        flipd(den, X, 0.1, n_probes=n_probes)
    assert den.calls == 0


def test_k_at_least_the_number_of_points():
    with pytest.raises(ValueError, match="k"):
        reference_lid(X, k=6)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_dtypes(dtype):
    den = CountingDenoiser()
    with pytest.raises(TypeError, match=r"floating dtype.*\.float\(\)"):
        flipd(den, X.to(dtype), 0.1)
    with pytest.raises(TypeError, match="floating dtype"):
        reference_lid(X.to(dtype))
    assert den.calls == 0


def test_empty_batch():
    den = CountingDenoiser()
    with pytest.raises(ValueError, match="empty batch"):
        flipd(den, X[:0], 0.1)
    with pytest.raises(ValueError, match="empty"):
        reference_lid(X[:0])
    assert den.calls == 0


def test_single_point_without_batch_axis():
    with pytest.raises(ValueError, match=r"unsqueeze\(0\)"):
        flipd(CountingDenoiser(), X[0], 0.1)


def test_unknown_prediction_type_in_a_diffusers_scheduler():
    scheduler = DDPMScheduler(num_train_timesteps=100)
    scheduler.register_to_config(prediction_type="noise")
    with pytest.raises(ValueError, match=r"prediction_type='noise' is not supported.*'epsilon', 'v_prediction', 'sample'"):
        diffusers_denoiser(lambda y, t: y, scheduler)


def test_sigma_outside_the_schedule_range():
    calls = []
    den = diffusers_denoiser(lambda y, t: calls.append(1) or y, DDPMScheduler(num_train_timesteps=1000))
    with pytest.raises(ValueError, match=r"outside the range .* \[0.01, 157"):
        flipd(den, X, 500.0)
    with pytest.raises(ValueError, match="outside the range"):
        flipd(den, X, 1e-4)
    assert not calls


def test_velocity_with_a_diffusion_schedule_is_refused():
    with pytest.raises(ValueError, match="flow schedules predict 'velocity'"):
        vp_denoiser(lambda y, t: y, prediction_type="velocity")


@pytest.mark.parametrize("kwargs, match", [
    ({"probe": "normal"}, "probe='normal' is not supported; choose one of 'rademacher', 'gaussian'"),
    ({"mode": "backward"}, "mode='backward' is not supported; choose one of 'reverse', 'forward'"),
    ({"precision": "fp8"}, "precision='fp8' is not supported; choose one of 'fp32', 'bf16', 'fp16'"),
    ({"chunk_size": 0}, "chunk_size must be an integer ≥ 1"),
])
def test_options_list_their_valid_choices(kwargs, match):
    with pytest.raises(ValueError, match=match):
        flipd(CountingDenoiser(), X, 0.1, **kwargs)


def test_generator_must_be_a_torch_generator():
    with pytest.raises(TypeError, match=r"torch.Generator\(\).manual_seed\(0\)"):
        flipd(CountingDenoiser(), X, 0.1, n_probes=2, generator=0)


def test_not_a_tensor_and_not_callable():
    with pytest.raises(TypeError, match=r"torch.as_tensor"):
        flipd(CountingDenoiser(), X.tolist(), 0.1)
    with pytest.raises(TypeError, match="callable"):
        flipd("unet", X, 0.1)


def test_curve_grid_must_increase():
    with pytest.raises(ValueError, match="strictly increasing"):
        flipd_curve(CountingDenoiser(), X, [0.5, 0.1])


def test_normal_bundle_threshold_range():
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\)"):
        normal_bundle_lid(CountingDenoiser(), X, 0.1, threshold=2.0)


class LinearDenoiser(torch.nn.Module):
    """A float32 network D(x) = W x, counting its forward calls."""

    def __init__(self, dim: int = 4):
        super().__init__()
        self.net = torch.nn.Linear(dim, dim, bias=False)
        self.calls = 0

    def forward(self, x, sigma):
        self.calls += 1
        return self.net(x)


@pytest.mark.parametrize("estimate", ESTIMATORS)
def test_input_dtype_other_than_the_network_fails_before_any_call(estimate):
    from mmh_train.context import fell_back

    den = LinearDenoiser()
    with pytest.raises(TypeError, match=r"x has dtype torch.float64 but the network's parameters are torch.float32; "
                                        r"pass x.to\(torch.float32\)"):
        estimate(den, X.double(), 0.1)
    assert den.calls == 0 and not fell_back([den], ("loop", "fp32", "reverse", "cpu"))
    assert torch.isfinite(estimate(den, X, 0.1)).all()  # float32 x: the right answer


_GLOBAL_NET = LinearDenoiser()
_HIDDEN_NETS = {"net": LinearDenoiser()}


def _global_denoiser(x, s):  # reads the network through a global name, as a script's top-level function does
    return _GLOBAL_NET(x, s)


def test_float64_data_for_a_float32_network_read_through_a_global_fails_before_any_call():
    from mmh_train import vp_denoiser

    calls = _GLOBAL_NET.calls
    for den in (_global_denoiser, vp_denoiser(_global_denoiser)):
        with pytest.raises(TypeError, match=r"x has dtype torch.float64 .* pass x.to\(torch.float32\)"):
            flipd(den, X.double(), 0.1)
    assert _GLOBAL_NET.calls == calls
    with pytest.raises(TypeError, match=r"dtype torch.float64 .*: cast the data to the network's dtype, e.g. x.float"):
        flipd(lambda x, s: _HIDDEN_NETS["net"](x, s), X.double(), 0.1)  # not found: named once torch refuses


def test_a_detached_output_is_named():
    den = LinearDenoiser()
    with pytest.raises(TypeError, match="does not depend on x through autograd: it was detached"):
        flipd(lambda x, s: den(x, s).detach(), X, 0.1)


def test_a_network_that_fails_on_x_says_so_and_keeps_its_fast_path():
    from mmh_train.context import fell_back

    den = LinearDenoiser(dim=5)  # x has 4 features
    with pytest.raises(RuntimeError, match=r"the denoiser failed on x of shape \(6, 4\) and dtype torch.float32 .*"
                                           r"check that x has the shape"):
        flipd(den, X, 0.1)
    # the failure was the input's, not vectorization's: the network keeps its vectorized path
    assert not fell_back([den], ("loop", "fp32", "reverse", "cpu"))
