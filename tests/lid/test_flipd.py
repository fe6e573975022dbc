"""FLIPD against the closed forms of science.md §5."""

import warnings

import pytest
import torch
from closed_forms import ABS_TOL, GaussianMixture, GaussianSubspace, memorizer_flipd_bruteforce
from torch import nn

from mmh_train import flipd
from mmh_train.lid import MemorizerDenoiser, flipd_estimate
from mmh_train.lid.curve import default_sigma_grid, flipd_at_knee, flipd_curve, knee_index


@pytest.mark.parametrize("k", [1, 3, 5])
def test_gaussian_on_a_k_dim_subspace_reads_k_at_small_sigma(k):
    piece = GaussianSubspace(dim=10, k=k, variances=[1.0 + 0.5 * i for i in range(k)], seed=k)
    x = piece.sample(32, seed=10 + k)
    lid = flipd(piece.denoiser, x, 0.01)
    assert (lid - k).abs().max() <= ABS_TOL
    torch.testing.assert_close(lid, piece.flipd(x, 0.01), atol=1e-9, rtol=1e-9)


def test_off_manifold_points_follow_the_closed_form_at_every_sigma():
    piece = GaussianSubspace(dim=8, k=3, variances=[1.0, 0.7, 2.0], seed=1)
    x = piece.sample(10, seed=2) + 0.3 * torch.randn(10, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for sigma in [0.05, 0.3, 1.0, 3.0]:
        torch.testing.assert_close(flipd(piece.denoiser, x, sigma), piece.flipd(x, sigma), atol=1e-9, rtol=1e-9)


def test_mixture_of_pieces_reads_each_pieces_dimension():
    dims = (2, 4, 8)
    pieces = [GaussianSubspace(dim=10, k=k, variances=[1.0] * k, seed=20 + k,
                               shift=torch.eye(10, dtype=torch.float64)[i] * 40.0) for i, k in enumerate(dims)]
    mixture = GaussianMixture(pieces)
    for piece, k in zip(pieces, dims):
        x = piece.sample(16, seed=k)
        lid = flipd(mixture.denoiser, x, 0.01)
        assert (lid - k).abs().max() <= ABS_TOL, (k, lid)


def test_perfect_memorizer_reads_zero_at_training_points_and_r2_over_sigma2_away():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(50, 6, generator=g, dtype=torch.float64) * 3
    sigma = 0.05
    lid = flipd(MemorizerDenoiser(train), train[:20], sigma)
    assert lid.abs().max() < 1e-6
    direction = torch.nn.functional.normalize(torch.randn(20, 6, generator=g, dtype=torch.float64), dim=1)
    away = train[:20] + 0.01 * direction
    torch.testing.assert_close(flipd(MemorizerDenoiser(train), away, sigma),
                               memorizer_flipd_bruteforce(train, away, sigma), atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(flipd(MemorizerDenoiser(train), away, sigma),
                               torch.full((20,), 0.01**2 / sigma**2, dtype=torch.float64), atol=1e-3, rtol=0)


def test_hutchinson_flipd_agrees_with_exact_within_standard_error():
    piece = GaussianSubspace(dim=10, k=4, variances=[1.0] * 4, seed=2)
    x = piece.sample(8, seed=3) + 0.1 * torch.randn(8, 10, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    exact = flipd(piece.denoiser, x, 0.3)
    est = flipd_estimate(piece.denoiser, x, 0.3, n_probes=200, generator=torch.Generator().manual_seed(5))
    assert ((est.lid - exact).abs() / est.stderr).max() < 4.5
    torch.testing.assert_close(est.lid, est.trace + est.residual)


def test_float32_input_gives_float32_and_matches_float64():
    piece = GaussianSubspace(dim=10, k=3, variances=[1.0] * 3, seed=6)
    x = piece.sample(8, seed=7)
    lid32 = flipd(piece.denoiser, x.float(), 0.1)
    assert lid32.dtype == torch.float32
    torch.testing.assert_close(lid32.double(), flipd(piece.denoiser, x, 0.1), atol=1e-4, rtol=0)


def test_per_sample_sigma():
    piece = GaussianSubspace(dim=6, k=2, variances=[1.0, 1.0], seed=8)
    x = piece.sample(3, seed=9) + 0.2
    sigma = torch.tensor([0.1, 0.5, 2.0])
    expected = torch.stack([piece.flipd(x[i:i + 1], float(s))[0] for i, s in enumerate(sigma)])
    torch.testing.assert_close(flipd(piece.denoiser, x, sigma), expected, atol=1e-6, rtol=1e-6)


class Noisy(nn.Module):
    """A denoiser with dropout and batch norm: its train/eval mode matters."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), nn.Dropout(0.5), nn.Linear(16, 5))
        self.frozen = nn.Linear(5, 5)

    def forward(self, x, sigma):
        return self.inner(x) + self.frozen(x)


def test_model_state_grad_mode_and_global_rng_are_untouched():
    torch.manual_seed(0)
    model = Noisy()
    model.train()
    model.frozen.eval()  # a submodule the user froze on purpose stays frozen
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
    rng = torch.get_rng_state()
    bn_stats = model.inner[1].running_mean.clone()
    for kwargs in ({}, {"n_probes": 2}, {"mode": "forward"}):
        flipd(model, x, 0.1, **kwargs)
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training and model.inner.training and model.inner[2].training and not model.frozen.training
    assert torch.equal(model.inner[1].running_mean, bn_stats)  # eval mode: no running-stat update
    assert torch.is_grad_enabled()
    with torch.no_grad():
        flipd(model, x, 0.1)
    assert torch.is_grad_enabled()
    model.eval()
    flipd(model, x, 0.1)
    assert not model.training


def test_flipd_does_not_change_an_outer_autocast_or_grad_state():
    piece = GaussianSubspace(dim=4, k=2, variances=[1.0, 1.0], seed=1)
    x = piece.sample(2, seed=2).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lid = flipd(piece.denoiser, x, 0.05)
        assert torch.is_autocast_enabled("cpu")
    torch.testing.assert_close(lid, flipd(piece.denoiser, x, 0.05))  # fp32 policy ignores ambient autocast


def test_bf16_jvp_failure_falls_back_to_fp32_once_with_a_warning():
    class FailsInHalf(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x, sigma):
            if torch.is_autocast_enabled("cpu"):
                raise RuntimeError("expected scalar type BFloat16 but found Float")
            return self.lin(x)

    model = FailsInHalf()
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    with pytest.warns(RuntimeWarning, match="falls back to fp32"):
        got = flipd(model, x, 0.1, precision="bf16", n_probes=2, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # second call: no new warning, straight to fp32
        again = flipd(model, x, 0.1, precision="bf16", n_probes=2, generator=torch.Generator().manual_seed(1))
    ref = flipd(model, x, 0.1, n_probes=2, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(again, ref)


def test_bf16_precision_runs_the_network_in_bf16_and_accumulates_in_fp32():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 64), nn.Tanh(), nn.Linear(64, 6))
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    seen = {}
    net[0].register_forward_hook(lambda m, i, o: seen.update(dtype=o.dtype))
    lid_bf16 = flipd(lambda z, s: net(z), x, 0.2, precision="bf16")
    assert seen["dtype"] == torch.bfloat16 and lid_bf16.dtype == torch.float32
    lid_fp32 = flipd(lambda z, s: net(z), x, 0.2)
    assert ((lid_bf16 - lid_fp32).abs() / lid_fp32.abs()).max() < 0.01  # bf16 keeps ~3 significant digits


def test_curve_reuses_the_same_probes_at_every_sigma():
    piece = GaussianSubspace(dim=10, k=3, variances=[1.0] * 3, seed=3)
    x = piece.sample(4, seed=4)
    grid = default_sigma_grid(5, 0.05, 2.0)
    curve = flipd_curve(piece.denoiser, x, grid, n_probes=4, generator=torch.Generator().manual_seed(0))
    assert curve.lid.shape == (5, 4)
    for s, row in zip(grid.tolist(), curve.lid):
        torch.testing.assert_close(row, flipd(piece.denoiser, x, s, n_probes=4, generator=torch.Generator().manual_seed(0)))


def test_exact_curve_has_a_plateau_at_k_and_the_knee_sits_where_it_ends():
    piece = GaussianSubspace(dim=10, k=3, variances=[1.0] * 3, seed=3)
    x = piece.sample(4, seed=4)
    grid = default_sigma_grid(24, 0.01, 30.0)
    curve = flipd_curve(piece.denoiser, x, grid)
    assert (curve.lid[0] - 3).abs().max() < ABS_TOL and curve.lid[-1].abs().max() < 0.05
    lid, sigma = flipd_at_knee(piece.denoiser, x, grid)
    assert ((sigma > 0.05) & (sigma < 1.0)).all(), sigma  # the end of the plateau, before the fall
    expected = torch.stack([piece.flipd(x[i:i + 1], float(s))[0] for i, s in enumerate(sigma)])
    torch.testing.assert_close(lid, expected, atol=1e-9, rtol=1e-9)
    assert ((lid > 2.0) & (lid < 4.0)).all(), lid  # near k, where the plateau ends


def test_knee_index_on_a_hand_made_curve():
    sigmas = torch.logspace(-2, 1, 7, dtype=torch.float64)
    values = torch.tensor([[5.0], [5.0], [5.0], [4.9], [2.0], [0.5], [0.0]])
    assert knee_index(sigmas, values).item() == 3
    convex = torch.tensor([[5.0], [1.0], [0.4], [0.2], [0.1], [0.05], [0.0]])
    assert knee_index(sigmas, convex, shape="convex").item() == 1


def test_a_plain_callable_hiding_dropout_in_train_mode_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 16), nn.Dropout(0.3), nn.Linear(16, 5)).train()
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
    state = torch.get_rng_state()
    flipd(lambda z, s: net(z), x, 0.1, n_probes=2, generator=torch.Generator().manual_seed(2))
    assert torch.equal(torch.get_rng_state(), state) and net.training
