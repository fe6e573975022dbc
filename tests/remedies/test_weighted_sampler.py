"""DistributedWeightedSampler: one shared seeded draw, sharded by position across ranks."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mmh_train.remedies import DistributedWeightedSampler, duplicate_weights, find_duplicate_groups


def _weights(n=10, seed=0):
    return torch.rand(n, generator=torch.Generator().manual_seed(seed)) + 0.1


@pytest.mark.parametrize("num_samples,drop_last", [(40, False), (41, False), (41, True)])
def test_rank_shards_are_disjoint_positions_of_the_single_process_draw(num_samples, drop_last):
    w = _weights()
    single = list(DistributedWeightedSampler(w, num_samples, seed=3, num_replicas=1, rank=0))
    assert len(single) == num_samples
    shards = [DistributedWeightedSampler(w, num_samples, seed=3, num_replicas=2, rank=r, drop_last=drop_last)
              for r in (0, 1)]  # constructed separately, as two processes would
    draws = [list(s) for s in shards]
    assert len(draws[0]) == len(draws[1]) == len(shards[0])
    interleaved = [i for pair in zip(*draws) for i in pair]
    if drop_last:
        assert interleaved == single[:40]
    else:
        # positions rank::2 of one draw; the odd tail is padded with the draw's first index
        assert interleaved == single + single[: len(interleaved) - num_samples]
    assert draws[0] == interleaved[0::2] and draws[1] == interleaved[1::2]


def test_same_seed_and_epoch_repeat_and_set_epoch_changes_the_draw():
    w = _weights()
    a = DistributedWeightedSampler(w, 50, seed=7)
    b = DistributedWeightedSampler(w, 50, seed=7)
    assert list(a) == list(b) == list(a)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(DistributedWeightedSampler(w, 50, seed=8)) != list(DistributedWeightedSampler(w, 50, seed=7))


def test_frequencies_follow_the_weights_and_a_duplicate_group_draws_like_one_sample():
    base = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    data = torch.cat([base, base[:1].expand(8, 3)])  # point 0 plus 8 copies: a group of 9
    groups = find_duplicate_groups(data)
    w = duplicate_weights(groups)
    draws = torch.tensor(list(DistributedWeightedSampler(w, 20000, seed=0)))
    group_freq = torch.bincount(groups.group[draws], minlength=groups.n_groups).double() / 20000
    # 8 groups, each drawn ∝ its total weight of one sample: 1/8 each (binomial sd ≈ 0.0023)
    assert (group_freq - 1 / 8).abs().max() < 0.012
    expected = w.double() / w.sum()
    freq = torch.bincount(draws, minlength=len(w)).double() / 20000
    assert (freq - expected).abs().max() < 0.012


def test_zero_weights_are_never_drawn_and_without_replacement_draws_distinct_indices():
    w = torch.tensor([0.0, 1.0, 0.0, 2.0, 3.0, 0.0])
    assert set(DistributedWeightedSampler(w, 500, seed=1)) <= {1, 3, 4}
    draw = list(DistributedWeightedSampler(w, 3, seed=1, replacement=False))
    assert sorted(draw) == [1, 3, 4]
    with pytest.raises(ValueError, match="only 3 weight"):
        DistributedWeightedSampler(w, 4, replacement=False)


def test_global_rng_untouched_and_works_in_a_dataloader():
    w = _weights(12)
    state = torch.get_rng_state()
    sampler = DistributedWeightedSampler(w, 24, seed=0, num_replicas=3, rank=2)
    list(sampler)
    assert torch.equal(state, torch.get_rng_state())
    loader = DataLoader(TensorDataset(torch.arange(12)), batch_size=4, sampler=sampler)
    assert torch.cat([b[0] for b in loader]).tolist() == list(sampler)


def test_state_dict_round_trip():
    w = _weights()
    sampler = DistributedWeightedSampler(w, 30, seed=5)
    sampler.set_epoch(4)
    sampler.set_weights(w * torch.linspace(1, 2, 10))
    expected = list(sampler)
    restored = DistributedWeightedSampler(w, 30, seed=0)
    restored.load_state_dict(sampler.state_dict())
    assert restored.epoch == 4 and list(restored) == expected


def test_bad_arguments_raise():
    w = _weights()
    with pytest.raises(ValueError, match="rank must be"):
        DistributedWeightedSampler(w, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="finite and ≥ 0"):
        DistributedWeightedSampler(torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="positive sum"):
        DistributedWeightedSampler(torch.zeros(3))
    with pytest.raises(ValueError, match="1-D"):
        DistributedWeightedSampler(torch.ones(2, 2))
    with pytest.raises(ValueError, match="num_samples"):
        DistributedWeightedSampler(w, 0)
    with pytest.raises(ValueError, match="dataset's length"):
        DistributedWeightedSampler(w).set_weights(torch.ones(3))
