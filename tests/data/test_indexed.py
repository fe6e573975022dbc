"""Tests for mmh_train.data.indexed: IndexedDataset item forms and check_indices errors."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mmh_train.data import IndexedDataset, check_indices


class _Items:
    def __init__(self, make):
        self.make = make

    def __len__(self):
        return 5

    def __getitem__(self, i):
        if not 0 <= i < 5:
            raise IndexError(i)
        return self.make(i)


def test_tuple_items_get_the_index_appended():
    x = torch.arange(10.0).reshape(5, 2)
    ds = IndexedDataset(TensorDataset(x, torch.arange(5) * 10))
    assert len(ds) == 5
    xi, yi, i = ds[2]
    assert torch.equal(xi, x[2]) and int(yi) == 20 and i == 2
    assert ds[-1][-1] == 4
    xb, yb, ib = next(iter(DataLoader(ds, batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(0))))
    assert torch.equal(xb, x[ib]) and torch.equal(yb, ib * 10) and ib.dtype == torch.long


def test_list_dict_and_bare_items():
    assert IndexedDataset(_Items(lambda i: [i, -i]))[3] == (3, -3, 3)
    item = IndexedDataset(_Items(lambda i: {"image": torch.full((2,), float(i))}))[1]
    assert set(item) == {"image", "index"} and item["index"] == 1
    t, i = IndexedDataset(_Items(lambda i: torch.tensor([i, i])))[4]
    assert torch.equal(t, torch.tensor([4, 4])) and i == 4
    batch = next(iter(DataLoader(IndexedDataset(_Items(lambda i: {"v": torch.tensor(i)})), batch_size=3)))
    assert batch["index"].tolist() == [0, 1, 2]


def test_dict_key_clash_raises_and_custom_key_works():
    ds = IndexedDataset(_Items(lambda i: {"index": i * 2}))
    with pytest.raises(ValueError, match="key="):
        ds[0]
    assert IndexedDataset(_Items(lambda i: {"index": i * 2}), key="sample_index")[2] == {"index": 4, "sample_index": 2}


def test_non_map_style_dataset_is_rejected():
    with pytest.raises(TypeError, match="map-style"):
        IndexedDataset(object())


def test_check_indices_accepts_and_normalises():
    out = check_indices(torch.tensor([3, 0, 7], dtype=torch.int32), dataset_size=8)
    assert out.dtype == torch.long and out.tolist() == [3, 0, 7]
    assert check_indices([1, 2]).tolist() == [1, 2]
    assert check_indices(torch.tensor([2, 2, 5]), 6, allow_repeats=True).tolist() == [2, 2, 5]


@pytest.mark.parametrize("indices, size, match", [
    (None, None, "IndexedDataset"),
    (torch.tensor([0.0, 1.0]), None, "integers"),
    (torch.tensor([True, False]), None, "integers"),
    ("01", None, "sequence of ints"),
    ([0, 1.5], None, "sequence of ints"),
    (torch.tensor([[0, 1]]), None, "shape \\[B\\]"),
    (torch.tensor([0, -1]), None, "≥ 0"),
    (torch.tensor([0, 9]), 9, "in \\[0, 9\\)"),
    (torch.tensor([1, 4, 1, 4, 2]), 10, "repeat within the batch: \\[1, 4\\].*IndexedDataset.*allow_repeats"),
    (torch.tensor([1]), 0, "dataset_size"),
])
def test_check_indices_errors(indices, size, match):
    with pytest.raises(ValueError, match=match):
        check_indices(indices, size)
