import pytest
import torch
from closed_forms import GaussianSubspace

from mmh_train import normal_bundle_lid
from mmh_train.lid import MemorizerDenoiser, normal_dimension_from_singular_values


@pytest.mark.parametrize("k", [1, 3, 6])
def test_recovers_k_on_a_flat_subspace(k):
    piece = GaussianSubspace(dim=8, k=k, variances=[1.0] * k, seed=k)
    x = piece.sample(6, seed=k + 1)
    lid = normal_bundle_lid(piece.denoiser, x, 0.05, generator=torch.Generator().manual_seed(0))
    assert torch.equal(lid, torch.full((6,), float(k), dtype=torch.float64))


def test_threshold_variant_and_float32():
    piece = GaussianSubspace(dim=8, k=2, variances=[1.0, 1.0], seed=2)
    x = piece.sample(4, seed=3).float()
    lid = normal_bundle_lid(piece.denoiser, x, 0.05, threshold=0.1, n_samples=64, chunk_size=2)
    assert lid.dtype == torch.float32 and torch.equal(lid, torch.full((4,), 2.0))


def test_training_points_of_a_memorizer_read_zero():
    train = torch.randn(20, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    lid = normal_bundle_lid(MemorizerDenoiser(train), train[:5], 0.05)
    assert torch.equal(lid, torch.zeros(5, dtype=torch.float64))


def test_largest_gap_rule():
    s = torch.tensor([[10.0, 9.0, 8.5, 0.2, 0.1], [5.0, 0.1, 0.1, 0.1, 0.1], [3.0, 3.0, 3.0, 3.0, 3.0]])
    assert normal_dimension_from_singular_values(s).tolist() == [3, 1, 5]


def test_global_rng_untouched():
    piece = GaussianSubspace(dim=4, k=2, variances=[1.0, 1.0], seed=2)
    state = torch.get_rng_state()
    normal_bundle_lid(piece.denoiser, piece.sample(2, seed=1), 0.05)
    assert torch.equal(torch.get_rng_state(), state)
