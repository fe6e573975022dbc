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


class RandomlyFlipped(Dataset):
    """Images with a random horizontal flip in __getitem__ (diffusers' --random_flip) and a numpy jitter draw."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        image = self.images[i]
        if torch.rand(()) < 0.5:
            image = image.flip(-1)
        shift = float(np.random.uniform(-1, 1)) * 0.0 + random.random() * 0.0  # draws, and changes nothing
        return {"input": image + shift}


def test_random_augmentation_does_not_change_probes_duplicates_or_the_training_stream():
    """Duplicate groups and probes come from one fixed draw of the augmentation: the same at every read, with
    copies kept as copies (9 of 9 draws, where reading through the training transform found them 5–8 times)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(40, 1, 6, 6, generator=g)
    images[[5, 17, 29]] = images[3].clone()  # a group of four copies, each flipped at random in training
    data = RandomlyFlipped(images)
    torch.manual_seed(123)
    expected = torch.rand(3)
    groups, probes = [], []
    for _ in range(9):
        torch.manual_seed(123)
        monitor = MemorizationMonitor(data, n_train_probes=8, every_n_steps=1)
        assert torch.equal(torch.rand(3), expected)  # the training run's stream is untouched
        groups.append(monitor.survey.groups.group)
        probes.append(monitor.points())
    assert all(torch.equal(g, groups[0]) for g in groups) and all(torch.equal(p, probes[0]) for p in probes)
    assert len(set(groups[0][[3, 5, 17, 29]].tolist())) == 1 and int(groups[0].bincount().max()) == 4
