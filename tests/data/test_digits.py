"""Tests for mmh_train.data.digits: shape, range, padding, labels, balanced subsets."""

import pytest
import torch

from mmh_train.data import NUM_DIGITS, DigitsData, DigitsDataset, load_digits


@pytest.fixture(scope="module")
def digits() -> DigitsData:
    return load_digits()


@pytest.fixture(scope="module")
def raw():
    from sklearn.datasets import load_digits as sk_load
    d = sk_load()
    return torch.as_tensor(d.images, dtype=torch.float64), torch.as_tensor(d.target)


def test_default_shape_range_labels(digits, raw):
    assert isinstance(digits, DigitsData) and len(digits) == NUM_DIGITS == 1797
    assert digits.images.shape == (1797, 1, 16, 16) and digits.images.dtype == torch.float32
    assert float(digits.images.min()) == -1.0 and float(digits.images.max()) == 1.0
    assert digits.labels.dtype == torch.long and sorted(torch.unique(digits.labels).tolist()) == list(range(10))
    assert torch.equal(digits.index, torch.arange(1797)) and torch.equal(digits.labels, raw[1])
    assert digits.size == 16


def test_padding_is_background_and_centre_is_the_scaled_digit(digits, raw):
    img = digits.images[:, 0]
    border = torch.ones(16, 16, dtype=torch.bool)
    border[4:12, 4:12] = False
    assert (img[:, border] == -1.0).all()
    torch.testing.assert_close(img[:, 4:12, 4:12].double(), raw[0] / 8 - 1)


@pytest.mark.parametrize("size, lo", [(8, 0), (11, 1), (32, 12)])
def test_other_sizes(size, lo, raw):
    d = load_digits(size=size, subset=20, dtype=torch.float64)
    assert d.images.shape == (20, 1, size, size) and d.images.dtype == torch.float64
    torch.testing.assert_close(d.images[:, 0, lo:lo + 8, lo:lo + 8], raw[0][d.index] / 8 - 1)
    assert float(d.images.sum()) == pytest.approx(float((raw[0][d.index] / 8 - 1).sum()) - (size**2 - 64) * 20)


def test_subset_is_balanced_reproducible_and_leaves_global_rng(raw):
    state = torch.get_rng_state()
    a = load_digits(subset=105, generator=torch.Generator().manual_seed(1))
    b = load_digits(subset=105, generator=torch.Generator().manual_seed(1))
    c = load_digits(subset=105, generator=torch.Generator().manual_seed(2))
    assert torch.equal(torch.get_rng_state(), state)
    assert len(a) == 105 and torch.equal(a.images, b.images) and not torch.equal(a.index, c.index)
    counts = torch.bincount(a.labels, minlength=10)
    assert int(counts.max() - counts.min()) <= 1
    assert torch.equal(a.index, torch.unique(a.index)) and torch.equal(a.labels, raw[1][a.index])


def test_dataset_view(digits):
    ds = DigitsDataset(digits)
    img, label, i = ds[5]
    assert img.shape == (1, 16, 16) and int(label) == int(digits.labels[5]) and i == 5
    assert len(ds) == 1797 and ds[-1][2] == 1796
    with pytest.raises(IndexError):
        ds[1797]


@pytest.mark.parametrize("kwargs, match", [
    (dict(size=7), "size must be ≥ 8"),
    (dict(size=0), "size"),
    (dict(subset=0), "subset"),
    (dict(subset=1798), "subset"),
])
def test_invalid_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_digits(**kwargs)
