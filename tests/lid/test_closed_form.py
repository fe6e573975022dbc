import torch
from closed_forms import memorizer_flipd_bruteforce

from mmh_train import flipd, memorizer_flipd
from mmh_train.lid import MemorizerDenoiser


def test_closed_form_matches_bruteforce_and_the_jacobian_route():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(40, 5, generator=g, dtype=torch.float64)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    for sigma in [0.1, 0.5, 2.0]:
        cf = memorizer_flipd(train, x, sigma)
        torch.testing.assert_close(cf, memorizer_flipd_bruteforce(train, x, sigma))
        torch.testing.assert_close(cf, flipd(MemorizerDenoiser(train), x, sigma), atol=1e-9, rtol=1e-9)


def test_zero_at_training_points_and_exact_duplicates():
    train = torch.randn(30, 4, generator=torch.Generator().manual_seed(1)) * 4
    train = torch.cat([train, train[:3]])  # exact copies
    lid = memorizer_flipd(train, train, 0.05)
    assert lid.abs().max() < 1e-5


def test_image_shaped_points():
    train = torch.randn(10, 1, 3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = train[:2] + 0.01
    flat = memorizer_flipd(train.flatten(1), x.flatten(1), 0.1)
    torch.testing.assert_close(memorizer_flipd(train, x, 0.1), flat)
    denoised = MemorizerDenoiser(train)(x, torch.tensor([0.1, 0.1], dtype=torch.float64))
    assert denoised.shape == x.shape
