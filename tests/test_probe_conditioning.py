"""Each probe measured with its own condition: LID_θ(x | c) of a class-conditional closed-form model."""

import pytest
import torch

import mmh_train
from mmh_train import MemorizationMonitor

from closed_forms import GaussianSubspace

PIECES = [GaussianSubspace(6, 1, [1.0], seed=0), GaussianSubspace(6, 3, [1.0] * 3, seed=1)]


def conditional(y, sigma, class_labels):
    """The exact denoiser of the piece named by each row's label (a VE model predicting x0)."""
    out = torch.stack([p.denoiser(y.double(), sigma.double()) for p in PIECES])  # [2, B, D]
    return out[class_labels, torch.arange(len(y))].to(y.dtype)


def data(n, seed):
    labels = torch.arange(n) % 2
    x = torch.stack([PIECES[int(c)].sample(1, seed=seed + i)[0] for i, c in enumerate(labels)])
    return x, labels


def test_each_probe_is_measured_given_its_own_label():
    train, labels = data(20, 0)
    held, held_labels = data(12, 100)
    monitor = MemorizationMonitor(train, held, sigma=0.05, every_n_steps=1, conditioning={"class_labels": labels},
                                  heldout_conditioning={"class_labels": held_labels})
    result = monitor.check(mmh_train.ve_denoiser(conditional), step=1)
    expected = mmh_train.flipd(mmh_train.ve_denoiser(conditional).bind(class_labels=labels[result.train_index]),
                               train[result.train_index], 0.05)
    torch.testing.assert_close(result.lid_train, expected.float(), rtol=1e-5, atol=1e-5)
    dims = torch.tensor([1.0, 3.0])[labels[result.train_index]]
    assert (result.lid_train - dims).abs().max() < 0.1  # LID(x | c): the dimension of its own piece


def test_conditioning_is_checked_before_any_work():
    train, labels = data(20, 0)
    held, held_labels = data(12, 100)
    with pytest.raises(ValueError, match="one row per dataset index \\(\\[20, ...\\]\\)"):
        MemorizationMonitor(train, held, conditioning={"class_labels": labels[:5]},
                            heldout_conditioning={"class_labels": held_labels})
    with pytest.raises(ValueError, match="pass heldout_conditioning"):
        MemorizationMonitor(train, held, conditioning={"class_labels": labels})
    with pytest.raises(ValueError, match="same keys"):
        MemorizationMonitor(train, held, conditioning={"class_labels": labels},
                            heldout_conditioning={"labels": held_labels})
    monitor = MemorizationMonitor(train, held, sigma=0.05, conditioning={"class_labels": labels},
                                  heldout_conditioning={"class_labels": held_labels})
    with pytest.raises(TypeError, match="must take keyword arguments through .bind"):
        monitor.check(lambda x, s: x, step=1)


def test_a_network_that_cannot_take_the_bound_conditioning_fails_with_the_shapes_and_the_fix():
    class Net(torch.nn.Module):  # wants a 5-wide condition per sample
        def __init__(self):
            super().__init__()
            self.project = torch.nn.Linear(5, 1)

        def forward(self, y, t, cond):
            return y * self.project(cond)

    train, _ = data(10, 0)
    monitor = MemorizationMonitor(train.float(), None, sigma=0.1, every_n_steps=1, reference=None,
                                  conditioning={"cond": torch.zeros(10, 4)})
    with pytest.raises(ValueError, match=r"conditioning bound \(cond \(10, 4\)\).*mat1 and mat2.*one row per probe"):
        monitor.check(mmh_train.ve_denoiser(Net()), step=1)
