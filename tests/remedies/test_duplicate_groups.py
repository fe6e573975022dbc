"""Duplicate groups (exact, near, in feature space) and the per-sample weights built on them."""

import pytest
import torch

from mmh_train.data.duplicates import inject_duplicates
from mmh_train.remedies import DuplicateGroups, downweight, duplicate_weights, find_duplicate_groups, weighted_loss


def _points(n, d=5, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_exact_duplicates_form_groups_numbered_by_first_occurrence():
    base = _points(4)
    data = torch.stack([base[0], base[1], base[0], base[2], base[1], base[0], base[3]])
    groups = find_duplicate_groups(data)
    assert groups.group.tolist() == [0, 1, 0, 2, 1, 0, 3]
    assert groups.size.tolist() == [3, 2, 3, 1, 2, 3, 1]
    assert groups.n_groups == 4 and len(groups) == 7
    assert groups.duplicated.tolist() == [True, True, True, False, True, True, False]
    assert groups.members(0).tolist() == [0, 2, 5]
    with pytest.raises(ValueError, match="group id in 0..3"):
        groups.members(4)


def test_exact_groups_match_injected_duplicates_on_image_shaped_and_integer_data():
    dup = inject_duplicates(_points(30, 12, seed=1).reshape(30, 3, 2, 2), fraction=0.2, copies=3,
                            generator=torch.Generator().manual_seed(2))
    groups = find_duplicate_groups(dup.x)
    assert torch.equal(groups.duplicated, dup.duplicated)
    # Same partition as the injected bookkeeping: equal group ids exactly where sources agree.
    assert torch.equal(groups.group[:, None] == groups.group[None], dup.group[:, None] == dup.group[None])
    as_uint8 = (dup.x * 20).round().clamp(-100, 100).add(100).to(torch.uint8)
    assert torch.equal(find_duplicate_groups(as_uint8).group, groups.group)


def test_no_duplicates_gives_singletons():
    groups = find_duplicate_groups(_points(20), radius=1e-3)
    assert groups.group.tolist() == list(range(20))
    assert groups.size.eq(1).all() and not groups.duplicated.any()


def test_near_duplicates_chain_into_one_component():
    e = torch.eye(3, dtype=torch.float64)
    far = 100 * e
    # a ~ b ~ c with |a − c| = 1.8 > radius = 1: one group through the chain; d alone; e ~ f.
    data = torch.stack([0 * e[0], 0.9 * e[0], 1.8 * e[0], far[1], far[2], far[2] + 0.5 * e[0]])
    groups = find_duplicate_groups(data, radius=1.0)
    assert groups.group.tolist() == [0, 0, 0, 1, 2, 2]
    assert groups.size.tolist() == [3, 3, 3, 1, 2, 2]
    assert find_duplicate_groups(data, radius=0.5).group.tolist() == [0, 1, 2, 3, 4, 4]
    # Small blocks give the same components as one block.
    assert torch.equal(find_duplicate_groups(data, radius=1.0, chunk_size=1).group, groups.group)


def test_near_duplicate_components_match_bruteforce_with_small_chunks():
    g = torch.Generator().manual_seed(3)
    data = torch.rand(60, 2, generator=g, dtype=torch.float64) * 10
    data = torch.cat([data, data[:10]])  # exact copies too
    radius = 0.8
    adjacency = torch.cdist(data, data) <= radius
    reach = adjacency.clone()
    for _ in range(7):  # transitive closure by squaring (path lengths up to 2^7)
        reach = reach | ((reach.double() @ reach.double()) > 0)
    groups = find_duplicate_groups(data, radius=radius, chunk_size=7)
    assert torch.equal(groups.group[:, None] == groups.group[None], reach)


def test_feature_space_grouping():
    data = _points(6, 8, seed=4)
    features = torch.tensor([[0.0, 0.0], [5.0, 5.0], [0.01, 0.0], [9.0, 0.0], [5.0, 5.0], [0.0, 0.02]])
    assert find_duplicate_groups(data, features=features).group.tolist() == [0, 1, 2, 3, 1, 4]
    assert find_duplicate_groups(data, features=features, radius=0.05).group.tolist() == [0, 1, 0, 2, 1, 0]
    # Exact copies in data are grouped whatever the features say.
    data[3] = data[0]
    assert find_duplicate_groups(data, features=features).group.tolist() == [0, 1, 2, 0, 1, 3]


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="radius"):
        find_duplicate_groups(_points(4), radius=-1.0)
    with pytest.raises(ValueError, match="one row per data point"):
        find_duplicate_groups(_points(4), features=_points(3))
    with pytest.raises(ValueError, match="NaN or Inf"):
        find_duplicate_groups(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))


def _groups(group_ids):
    group = torch.tensor(group_ids)
    counts = torch.bincount(group)
    return DuplicateGroups(group=group, size=counts[group], n_groups=int(counts.numel()))


def test_weights_give_each_group_the_weight_of_one_sample_by_default():
    groups = _groups([0, 1, 0, 2, 1, 0, 3, 4, 4, 4, 4])
    w = duplicate_weights(groups, normalize=False)
    totals = torch.zeros(groups.n_groups).index_add_(0, groups.group, w)
    torch.testing.assert_close(totals, torch.ones(5))
    assert w[~groups.duplicated].eq(1).all()
    w2 = duplicate_weights(groups, group_weight=2.0, normalize=False)
    totals2 = torch.zeros(groups.n_groups).index_add_(0, groups.group, w2)
    torch.testing.assert_close(totals2, torch.tensor([2.0, 2.0, 1.0, 1.0, 2.0]))


def test_capped_weights_and_normalization():
    groups = _groups([0, 0, 0, 0, 1, 1, 2])  # sizes 4, 2, 1
    w = duplicate_weights(groups, cap=3, normalize=False)
    totals = torch.zeros(groups.n_groups).index_add_(0, groups.group, w)
    torch.testing.assert_close(totals, torch.tensor([3.0, 2.0, 1.0]))
    normalized = duplicate_weights(groups, cap=3)
    torch.testing.assert_close(normalized.mean(), torch.tensor(1.0))
    torch.testing.assert_close(normalized / normalized[-1], w / w[-1])  # same ratios
    with pytest.raises(ValueError, match="cap must be"):
        duplicate_weights(groups, cap=0.5)
    with pytest.raises(ValueError, match="not both"):
        duplicate_weights(groups, cap=2, group_weight=2.0)


def test_downweight_multiplies_the_masked_points_then_renormalizes():
    w = torch.ones(4)
    mask = torch.tensor([True, False, False, True])
    torch.testing.assert_close(downweight(w, mask, 0.5, normalize=False), torch.tensor([0.5, 1.0, 1.0, 0.5]))
    out = downweight(w, mask, 0.5)
    torch.testing.assert_close(out.mean(), torch.tensor(1.0))
    torch.testing.assert_close(out[0] / out[1], torch.tensor(0.5))
    assert w.eq(1).all()  # input untouched
    with pytest.raises(ValueError, match="factor"):
        downweight(w, mask, 1.5)
    with pytest.raises(ValueError, match="every weight is 0"):
        downweight(w, torch.ones(4, dtype=torch.bool), 0.0)


def test_weighted_loss_is_sum_over_batch_size():
    loss = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    w = torch.tensor([0.5, 1.0, 2.0])
    out = weighted_loss(loss, w)
    torch.testing.assert_close(out, torch.tensor((0.5 + 2.0 + 6.0) / 3))
    out.backward()
    torch.testing.assert_close(loss.grad, w / 3)
    with pytest.raises(ValueError, match="flatten"):
        weighted_loss(torch.ones(3, 2), w)
    with pytest.raises(ValueError, match="matching"):
        weighted_loss(torch.ones(3), torch.ones(4))
