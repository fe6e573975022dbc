"""Tests for mmh_train.data.duplicates: counts, exactness, groups, near-duplicate noise, LID 0."""

import pytest
import torch

from mmh_train.data import DuplicatedData, affine_mixture, inject_duplicates, inject_duplicates_in_sample


def _seeded(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _points(n: int = 50, d: int = 6) -> torch.Tensor:
    return torch.randn(n, d, generator=_seeded(11))


def test_counts_layout_and_exact_copies():
    x = _points()
    dup = inject_duplicates(x, fraction=0.2, copies=3, generator=_seeded())
    assert isinstance(dup, DuplicatedData)
    assert len(dup) == 50 + 10 * 3 and dup.num_original == 50 and dup.copies == 3
    assert torch.equal(dup.x[:50], x)  # originals keep their indices
    assert int(dup.is_copy.sum()) == 30 and not dup.is_copy[:50].any() and dup.is_copy[50:].all()
    assert int(dup.duplicated.sum()) == 10 * 4
    assert dup.sources.shape == (10,) and torch.equal(dup.sources, torch.sort(dup.sources).values)
    assert torch.equal(dup.source[:50], torch.arange(50))
    assert torch.equal(dup.source[50:], dup.sources.repeat_interleave(3))
    assert torch.equal(dup.x[50:], x[dup.source[50:]])  # exact copies
    assert dup.source.dtype == dup.group.dtype == torch.long
    assert dup.is_copy.dtype == dup.duplicated.dtype == torch.bool


def test_groups_tie_copies_to_their_original_and_are_unique_otherwise():
    dup = inject_duplicates(_points(), fraction=0.3, copies=2, generator=_seeded())
    assert torch.equal(dup.group[dup.is_copy], dup.group[dup.source[dup.is_copy]])
    single = dup.group[~dup.duplicated]
    assert len(torch.unique(single)) == len(single)
    assert not set(single.tolist()) & set(dup.group[dup.duplicated].tolist())
    sizes = dup.group_size
    assert (sizes[dup.duplicated] == 3).all() and (sizes[~dup.duplicated] == 1).all()
    # every member of a group holds the same point
    for s in dup.sources.tolist():
        members = dup.x[dup.group == s]
        assert members.shape[0] == 3 and (members == members[0]).all()


@pytest.mark.parametrize("fraction, n, expected", [(0.0, 10, 0), (0.25, 10, 3), (0.24, 10, 2), (1.0, 7, 7)])
def test_number_of_sources_is_fraction_rounded_half_up(fraction, n, expected):
    dup = inject_duplicates(_points(n), fraction=fraction, copies=1, generator=_seeded())
    assert len(dup.sources) == expected and len(dup) == n + expected


def test_near_duplicates_carry_the_requested_noise():
    x = _points(200, 10)
    dup = inject_duplicates(x.double(), fraction=0.5, copies=2, near_noise=0.05, generator=_seeded())
    diff = dup.x[dup.is_copy] - dup.x[dup.source[dup.is_copy]]
    assert diff.numel() == 100 * 2 * 10
    assert float(diff.std()) == pytest.approx(0.05, rel=0.1)
    assert float(diff.mean().abs()) < 0.01
    assert torch.equal(dup.x[:200], x.double())


def test_reproducible_global_rng_untouched_and_images_supported():
    imgs = torch.rand(20, 1, 4, 4, generator=_seeded(3))
    state = torch.get_rng_state()
    a = inject_duplicates(imgs, fraction=0.25, copies=2, near_noise=0.1, generator=_seeded(5))
    b = inject_duplicates(imgs, fraction=0.25, copies=2, near_noise=0.1, generator=_seeded(5))
    c = inject_duplicates(imgs, fraction=0.25, copies=2, near_noise=0.1)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.x, b.x) and torch.equal(a.source, b.source)
    assert a.x.shape == (30, 1, 4, 4) and a.x.dtype == imgs.dtype and c.x.shape == a.x.shape


@pytest.mark.parametrize("near_noise", [0.0, 0.01])
def test_sample_helper_sets_duplicated_lid_to_zero(near_noise):
    s = affine_mixture(60, dims=(2, 4), ambient_dim=6, generator=_seeded())
    new, dup = inject_duplicates_in_sample(s, fraction=0.1, copies=4, near_noise=near_noise, generator=_seeded())
    assert len(new) == 60 + 6 * 4 and new.x.shape == (84, 6)
    assert (new.lid[dup.duplicated] == 0).all()
    assert torch.equal(new.lid[~dup.duplicated], s.lid[dup.source[~dup.duplicated]])
    assert torch.equal(new.component, s.component[dup.source])
    assert new.spec is s.spec and new.name == "affine_mixture+duplicates"
    assert torch.equal(s.lid, torch.tensor(s.component_dims)[s.component])  # input untouched
    if near_noise == 0.0:
        assert torch.equal(new.x[dup.is_copy], s.x[dup.source[dup.is_copy]])


@pytest.mark.parametrize("kwargs, match", [
    (dict(fraction=1.5, copies=1), "fraction"),
    (dict(fraction=-0.1, copies=1), "fraction"),
    (dict(fraction=0.1, copies=0), "copies"),
    (dict(fraction=0.1, copies=1.5), "copies"),
    (dict(fraction=0.1, copies=1, near_noise=-1.0), "near_noise"),
    (dict(fraction=0.1, copies=1, near_noise=float("nan")), "near_noise"),
])
def test_invalid_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        inject_duplicates(_points(), **kwargs)


def test_invalid_inputs_raise():
    with pytest.raises(TypeError, match="floating"):
        inject_duplicates(torch.arange(10), fraction=0.1, copies=1)
    bad = _points()
    bad[3, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        inject_duplicates(bad, fraction=0.1, copies=1)
    with pytest.raises(TypeError, match="ManifoldSample"):
        inject_duplicates_in_sample(_points(), fraction=0.1, copies=1)
    with pytest.raises(TypeError, match="generator"):
        inject_duplicates(_points(), fraction=0.1, copies=1, generator=42)
