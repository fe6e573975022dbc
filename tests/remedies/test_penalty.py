"""The LID penalty: value, gradients against finite differences, subset, reduction, side effects."""

import pytest
import torch
from torch import nn

from mmh_train import vp_denoiser
from mmh_train.lid import flipd_estimate
from mmh_train.remedies import lid_penalty

DIM = 4


def _seeded(module, seed):
    """Overwrites the parameters from a private generator (the global RNG stays untouched)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return module


class TinyDenoiser(nn.Module):
    """D(x; σ) = x + MLP([x, log σ]): a smooth per-sample map with parameters to differentiate."""

    def __init__(self, dropout=0.0, seed=0):
        super().__init__()
        self.net = _seeded(nn.Sequential(nn.Linear(DIM + 1, 8), nn.Tanh(), nn.Dropout(dropout),
                                         nn.Linear(8, DIM)), seed)

    def forward(self, x, sigma):
        return x + self.net(torch.cat([x, sigma.log()[:, None]], dim=1))


class TinyEpsilonNet(nn.Module):
    """ε̂(y, t) for vp_denoiser."""

    def __init__(self, seed=0):
        super().__init__()
        self.net = _seeded(nn.Sequential(nn.Linear(DIM + 1, 8), nn.Tanh(), nn.Linear(8, DIM)), seed)

    def forward(self, y, t):
        return self.net(torch.cat([y, t[:, None]], dim=1))


def _x(n=5, dtype=torch.float64, seed=1):
    return torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _penalty(den, x, **kw):
    kw.setdefault("generator", torch.Generator().manual_seed(3))  # same probes at every evaluation
    return lid_penalty(den, x, kw.pop("sigma", 0.5), kw.pop("target", 200.0), n_probes=2, **kw)


@pytest.mark.parametrize("wrap", ["module", "vp"])
def test_gradient_matches_central_finite_differences(wrap):
    if wrap == "module":
        model = TinyDenoiser().double()
        den = model
    else:
        model = TinyEpsilonNet().double()
        den = vp_denoiser(model)
    x = _x()
    value = _penalty(den, x)
    assert value > 0  # the hinge is active for these points
    params = [model.net[0].weight, model.net[0].bias, model.net[-1].weight]
    grads = torch.autograd.grad(value, params)
    h = 1e-6
    for p, g in zip(params, grads):
        for idx in [(0,) * p.dim(), tuple(s - 1 for s in p.shape)]:
            with torch.no_grad():
                p[idx] += h
                up = _penalty(den, x)
                p[idx] -= 2 * h
                down = _penalty(den, x)
                p[idx] += h
            torch.testing.assert_close(g[idx], (up - down) / (2 * h), atol=1e-6, rtol=1e-5)


def test_linear_denoiser_gives_the_closed_form_value_and_gradient():
    a = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    x, sigma, target = _x(), 0.5, 50.0
    pen = lid_penalty(lambda z, s: a * z, x, sigma, target, reduction="none")  # vᵀ(aI)v = a·D for ±1 probes
    sq = x.pow(2).sum(1)
    flipd = DIM * a.detach() + (a.detach() - 1) ** 2 * sq / sigma**2
    torch.testing.assert_close(pen, torch.relu(target - flipd))
    pen.mean().backward()
    torch.testing.assert_close(a.grad, -(DIM + 2 * (a.detach() - 1) * sq / sigma**2).mean())


def test_value_is_the_hinge_on_flipd_and_zero_with_zero_gradient_below_target():
    model = TinyDenoiser().double()
    x = _x(6)
    lid = flipd_estimate(model, x, 0.5, n_probes=2, generator=torch.Generator().manual_seed(3), eval_mode=False).lid
    target = lid.median()
    per_sample = _penalty(model, x, target=target, reduction="none")
    torch.testing.assert_close(per_sample, torch.relu(target - lid))
    assert (per_sample == 0).any() and (per_sample > 0).any()
    torch.testing.assert_close(_penalty(model, x, target=target, reduction="sum"), per_sample.sum())
    torch.testing.assert_close(_penalty(model, x, target=target), per_sample.mean())
    # Per-sample targets.
    targets = lid + torch.tensor([1.0, -1.0, 2.0, -2.0, 0.5, -0.5], dtype=torch.float64)
    torch.testing.assert_close(_penalty(model, x, target=targets, reduction="none"), torch.relu(targets - lid))
    below = _penalty(model, x, target=lid.min() - 1.0)
    assert below.item() == 0.0
    below.backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.parameters())


def test_no_gradient_reaches_x():
    model = TinyDenoiser().double()
    x = _x().requires_grad_(True)
    _penalty(model, x).backward()
    assert x.grad is None
    assert model.net[0].weight.grad.abs().max() > 0


def test_subset_takes_the_first_points_or_a_generator_choice():
    model = TinyDenoiser().double()
    x, target = _x(8), torch.linspace(150, 250, 8, dtype=torch.float64)
    first = _penalty(model, x, target=target, subset=3, generator=None, reduction="none")
    torch.testing.assert_close(first, _penalty(model, x[:3], target=target[:3], generator=None, reduction="none"))
    g = torch.Generator().manual_seed(5)
    rows = torch.sort(torch.randperm(8, generator=g)[:3]).values  # the choice comes first, then the probes
    expected = _penalty(model, x[rows], target=target[rows], generator=g, reduction="none")
    chosen = _penalty(model, x, target=target, subset=3, generator=torch.Generator().manual_seed(5), reduction="none")
    torch.testing.assert_close(chosen, expected)
    assert _penalty(model, x, subset=100, reduction="none").shape == (8,)


def test_modes_and_grad_flag_are_restored_and_train_mode_is_kept_by_default():
    model = TinyDenoiser(dropout=0.1).double()
    model.train()
    model.net[0].eval()  # a submodule the user froze
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    value = _penalty(model, _x())
    assert seen and all(seen)  # train mode during the call (dropout works in reverse mode)
    value.backward()
    assert model.net[0].weight.grad is not None
    seen.clear()
    _penalty(model, _x(), eval_mode=True)
    assert seen and not any(seen)
    assert model.training and not model.net[0].training and model.net[2].training
    with torch.no_grad():
        logged = _penalty(model, _x())
        assert not torch.is_grad_enabled()
    assert logged.grad_fn is None and torch.is_grad_enabled()


def test_forward_mode_and_float32():
    model = TinyDenoiser()
    x = _x(dtype=torch.float32)
    pen = _penalty(model, x, mode="forward", reduction="none")
    assert pen.dtype == torch.float32
    torch.testing.assert_close(pen, _penalty(model, x, reduction="none"), atol=1e-3, rtol=1e-4)
    pen.sum().backward()
    assert torch.isfinite(model.net[0].weight.grad).all()


def test_plain_callable_passes_gradients_to_captured_parameters():
    model = TinyEpsilonNet().double()
    den = vp_denoiser(model)
    through_wrapper = _penalty(den, _x())
    through_lambda = _penalty(lambda z, s: den(z, s), _x())
    torch.testing.assert_close(through_lambda, through_wrapper)
    (g,) = torch.autograd.grad(through_lambda, [model.net[0].weight])
    assert g.abs().max() > 0


class TinyAttentionDenoiser(nn.Module):
    """x + self-attention over 4 tokens of 2 features: needs the MATH SDPA kernel for double backward."""

    def __init__(self):
        super().__init__()
        self.qkv = _seeded(nn.Linear(2, 6), 7)

    def forward(self, x, sigma):
        q, k, v = self.qkv(x.reshape(x.shape[0], 1, 4, 2)).chunk(3, dim=-1)
        return x + nn.functional.scaled_dot_product_attention(q, k, v).reshape(x.shape)


def test_attention_double_backward_works_through_the_math_kernel():
    model = TinyAttentionDenoiser()
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    value = lid_penalty(model, x, 0.5, 100.0, generator=torch.Generator().manual_seed(1))
    value.backward()  # the CPU flash kernel has no double backward; the MATH one (selected inside) has
    assert torch.isfinite(model.qkv.weight.grad).all() and model.qkv.weight.grad.abs().max() > 0


class CountingDenoiser:
    def __init__(self):
        self.calls = 0

    def __call__(self, x, sigma):
        self.calls += 1
        return 0.9 * x


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(target=torch.ones(3)), ValueError, r"shape \[B\] = \[5\]"),
    (dict(target=float("nan")), ValueError, "target must be finite"),
    (dict(target="high"), TypeError, "target must be a float"),
    (dict(subset=0), ValueError, "subset must be an integer"),
    (dict(reduction="max"), ValueError, "'mean', 'sum', 'none'"),
    (dict(n_probes=0), ValueError, "n_probes"),
    (dict(sigma=0.0), ValueError, "sigma must be finite and > 0"),
    (dict(mode="sideways"), ValueError, "mode="),
    (dict(generator=3), TypeError, "torch.Generator"),
])
def test_bad_inputs_raise_before_any_network_call(kwargs, error, match):
    den = CountingDenoiser()
    args = dict(sigma=0.5, target=3.0)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        lid_penalty(den, _x(), args.pop("sigma"), args.pop("target"), **args)
    assert den.calls == 0


def test_nan_points_raise_before_any_network_call():
    den, x = CountingDenoiser(), _x()
    x[2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        lid_penalty(den, x, 0.5, 3.0)
    assert den.calls == 0
