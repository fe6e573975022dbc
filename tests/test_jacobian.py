import pytest
import torch
from torch import nn

from mmh_train.jacobian import draw_probes, jacobian_trace


def make_net(dim=7, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)  # parameter init only; the estimator itself must not use the global RNG
    return nn.Sequential(nn.Linear(dim, 32), nn.Tanh(), nn.Linear(32, dim)).to(dtype)


def true_traces(f, x):
    return torch.stack([torch.autograd.functional.jacobian(lambda z: f(z[None])[0], xi).trace() for xi in x])


@pytest.mark.parametrize("mode", ["reverse", "forward"])
@pytest.mark.parametrize("chunk_size", [None, 1, 3])
def test_exact_trace_matches_full_jacobian(mode, chunk_size):
    net = make_net()
    x = torch.randn(4, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    est = jacobian_trace(net, x, mode=mode, chunk_size=chunk_size)
    assert est.exact and est.n_products == 7 and est.stderr is None
    torch.testing.assert_close(est.trace, true_traces(net, x), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(est.output, net(x))


def test_exact_trace_of_image_shaped_points():
    conv = nn.Conv2d(2, 2, 3, padding=1).double()
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    est = jacobian_trace(conv, x)
    expected = torch.stack([torch.autograd.functional.jacobian(lambda z: conv(z[None])[0], xi).reshape(32, 32).trace()
                            for xi in x])
    torch.testing.assert_close(est.trace, expected)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_agrees_with_exact_within_its_standard_error(probe):
    net = make_net(dim=20)
    x = torch.randn(16, 20, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    exact = jacobian_trace(net, x).trace
    est = jacobian_trace(net, x, n_probes=400, probe=probe, generator=torch.Generator().manual_seed(4))
    z = (est.trace - exact) / est.stderr
    assert z.abs().max() < 4.5, z  # 16 points, 4.5 standard errors: fails only on a real bias
    assert est.stderr.max() < 0.5 * exact.abs().mean()


def test_rademacher_has_lower_variance_than_gaussian():
    net = make_net(dim=20)
    x = torch.randn(16, 20, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    rad = jacobian_trace(net, x, n_probes=300, probe="rademacher", generator=torch.Generator().manual_seed(5))
    gau = jacobian_trace(net, x, n_probes=300, probe="gaussian", generator=torch.Generator().manual_seed(5))
    assert rad.stderr.mean() < gau.stderr.mean()


def test_forward_and_reverse_give_the_same_hutchinson_estimate():
    net = make_net(dim=30)
    x = torch.randn(5, 30, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    fwd = jacobian_trace(net, x, n_probes=3, mode="forward", generator=torch.Generator().manual_seed(7))
    rev = jacobian_trace(net, x, n_probes=3, mode="reverse", generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(fwd.trace, rev.trace, atol=1e-12, rtol=1e-12)


def test_probes_come_from_the_generator_only():
    x = torch.zeros(4, 10)
    before = torch.get_rng_state()
    a = draw_probes(3, x, "rademacher", torch.Generator().manual_seed(0))
    b = draw_probes(3, x, "rademacher", torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a, b) and set(a.unique().tolist()) == {-1.0, 1.0}


def test_works_under_no_grad_and_default_generator_is_deterministic():
    net = make_net(dim=2000, dtype=torch.float32)
    x = torch.randn(2, 2000, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        a = jacobian_trace(net, x)  # above the exact threshold: one probe from a seeded generator
        b = jacobian_trace(net, x)
    assert not a.exact and a.n_products == 1
    torch.testing.assert_close(a.trace, b.trace)
