import random

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, IterableDataset

from mmh_train.monitor import MemorizationMonitor
from mmh_train.probes import choose_probe_indices, default_input, gather_points, interleave


class Augmenting(Dataset):
    """Draws from every global RNG in __getitem__, as random augmentations do."""

    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        torch.rand(1), np.random.rand(), random.random()
        return {"pixel_values": self.x[i], "label": 0}


def test_gathering_from_an_augmenting_dataset_leaves_every_global_rng_alone():
    x = torch.randn(20, 3)
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    got = gather_points(Augmenting(x), torch.tensor([3, 1, 7]))
    assert torch.equal(got, x[[3, 1, 7]])
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == py_state
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), np_state))


def test_monitor_accepts_a_map_style_dataset_with_dict_items():
    x = torch.randn(30, 4)
    monitor = MemorizationMonitor(Augmenting(x), n_train_probes=5, sigma=0.1, reference=None)
    torch.testing.assert_close(monitor.points(), x[monitor.train_index])


def test_iterable_datasets_and_items_without_an_input_are_refused():
    class Stream(IterableDataset):
        def __iter__(self):
            yield torch.zeros(3)

    with pytest.raises(TypeError, match="IterableDataset has no stable indices"):
        MemorizationMonitor(Stream(), sigma=0.1)
    with pytest.raises(TypeError, match="pass input_fn=lambda item"):
        default_input({"caption": "a cat"})


def test_probe_choice_is_seeded_and_interleaving_mixes_both_sets():
    a = choose_probe_indices(100, 10, torch.Generator().manual_seed(0), name="n")
    b = choose_probe_indices(100, 10, torch.Generator().manual_seed(0), name="n")
    assert torch.equal(a, b) and len(a.unique()) == 10
    order = interleave(4, 2)
    assert sorted(order.tolist()) == list(range(6))
    assert set(order[:3].tolist()) & {4, 5}  # a held-out probe among the first half
