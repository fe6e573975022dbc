"""FLIPD refuses a denoiser that mixes the samples of a batch, and checks each network only once."""

import pytest
import torch

from mmh_train import flipd

X = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))


def test_an_operation_across_the_batch_is_refused():
    with pytest.raises(ValueError, match="mixes the samples of a batch.*y.mean\\(0\\)"):
        flipd(lambda x, s: 0.5 * x + x.mean(0), X, 0.3)


_HIDDEN = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 4))


def _through_a_global(x, s):  # the network is reached through a global name: the estimator cannot see it
    return _HIDDEN(x)


def test_batchnorm_in_train_mode_behind_a_function_is_refused_and_the_fix_is_named():
    _HIDDEN.train()
    stats = {k: v.clone() for k, v in _HIDDEN.state_dict().items()}
    with pytest.raises(ValueError, match="pass the module itself"):
        flipd(_through_a_global, X, 0.3)
    for key, value in _HIDDEN.state_dict().items():  # the refused check's forward passes left no trace
        assert torch.equal(value, stats[key]), key
    net = _HIDDEN
    assert flipd(lambda x, s: net(x), X, 0.3).shape == (6,)  # held by the closure: seen, eval mode, per sample
    assert _HIDDEN.training


def test_a_per_sample_network_is_checked_once():
    calls = []
    net = torch.nn.Linear(4, 4)

    def den(x, s):
        calls.append(x.shape[0])
        return net(x)

    flipd(den, X, 0.3, n_probes=1)
    first = len(calls)
    flipd(den, X, 0.3, n_probes=1)
    assert len(calls) - first == first - 2  # the second call skips the two forward passes of the check
