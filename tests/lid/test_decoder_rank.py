import math

import pytest
import torch
from torch import nn

from mmh_train import decoder_jacobian_lid
from mmh_train.lid import decoder_singular_values


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_linear_decoder_of_known_rank(mode):
    g = torch.Generator().manual_seed(0)
    left, _ = torch.linalg.qr(torch.randn(12, 5, generator=g, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(6, 5, generator=g, dtype=torch.float64))
    singular = torch.tensor([3.0, 1.0, 0.5, math.exp(-4), 1e-6], dtype=torch.float64)
    matrix = left @ torch.diag(singular) @ right.T  # 12 x 6, rank 5, 3 values above e^-3

    z = torch.randn(4, 6, generator=g, dtype=torch.float64)
    sv = decoder_singular_values(lambda z: z @ matrix.T, z, mode=mode)
    torch.testing.assert_close(sv[:, :5], singular.expand(4, 5), atol=1e-10, rtol=1e-8)
    assert decoder_jacobian_lid(lambda z: z @ matrix.T, z, mode=mode).tolist() == [3.0] * 4
    assert decoder_jacobian_lid(lambda z: z @ matrix.T, z, tau=-5.0, mode=mode).tolist() == [4.0] * 4


def test_nonlinear_decoder_that_ignores_latents():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 10)).double()

    def decoder(z):  # uses only the first two of four latent coordinates: rank ≤ 2
        return net(z[:, :2] * 5)

    z = torch.randn(3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert decoder_jacobian_lid(decoder, z, tau=-6.0).tolist() == [2.0] * 3


def test_module_mode_restored():
    net = nn.Sequential(nn.Linear(3, 5), nn.Dropout(0.1))
    net.train()
    decoder_jacobian_lid(net, torch.randn(2, 3, generator=torch.Generator().manual_seed(0)))
    assert net.training and net[1].training
