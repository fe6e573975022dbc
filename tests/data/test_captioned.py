"""Captioned image folders (diffusers' metadata.jsonl, or one instance prompt) and the built-in captioned digits."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmh_train.data import captioned_digits, load_captioned_folder


def _image(path, size=(16, 16), value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)


def _metadata(folder, entries, column="text"):
    lines = [json.dumps({"file_name": name, column: caption}) for name, caption in entries]
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")


def test_metadata_gives_each_image_its_caption_in_sorted_order(tmp_path):
    _image(tmp_path / "b.png", value=200)
    _image(tmp_path / "sub" / "a.png", value=0)
    _image(tmp_path / "uncaptioned.png")  # not listed: not training data
    _metadata(tmp_path, [("sub/a.png", "a black square"), ("b.png", "a light square")])
    data = load_captioned_folder(tmp_path)
    assert data.files == ("b.png", "sub/a.png") and data.captions == ("a light square", "a black square")
    assert data.images.shape == (2, 3, 16, 16) and data.images[1].max() == -1.0
    picked = data.select(torch.tensor([1]))
    assert picked.captions == ("a black square",) and picked.files == ("sub/a.png",)


def test_an_instance_prompt_captions_a_folder_without_metadata(tmp_path):
    for name in ("1.png", "2.jpg"):
        _image(tmp_path / name)
    data = load_captioned_folder(tmp_path, instance_prompt="a photo of sks square")
    assert data.captions == ("a photo of sks square",) * 2


def test_mixed_sizes_are_refused_unless_a_size_is_given(tmp_path):
    _image(tmp_path / "a.png", size=(16, 16))
    _image(tmp_path / "b.png", size=(24, 20))
    _metadata(tmp_path, [("a.png", "x"), ("b.png", "y")])
    with pytest.raises(ValueError, match=r"mixed sizes \(16×16: 1 .*24×20: 1.*data.size="):
        load_captioned_folder(tmp_path)
    assert load_captioned_folder(tmp_path, size=8).images.shape == (2, 3, 8, 8)


@pytest.mark.parametrize("case, message", [
    ("none", "no metadata.jsonl and no instance prompt"),
    ("missing", "names 1 image.* not in the folder .first: gone.png"),
    ("json", "line 2: not JSON"),
    ("column", "needs the keys 'file_name' and 'text'"),
])
def test_bad_caption_folders_fail_with_the_fix(tmp_path, case, message):
    _image(tmp_path / "a.png")
    if case == "missing":
        _metadata(tmp_path, [("a.png", "x"), ("gone.png", "y")])
    elif case == "json":
        (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "x"}) + "\n{oops\n")
    elif case == "column":
        _metadata(tmp_path, [("a.png", "x")], column="caption")
    with pytest.raises(ValueError, match=message):
        load_captioned_folder(tmp_path)


def test_captioned_digits_are_rgb_and_captioned_with_their_class():
    data = captioned_digits(rows=torch.tensor([0, 1, 2]), size=16)
    assert data.images.shape == (3, 3, 16, 16) and data.captions[0] == "a photo of the digit 0"
    assert data.images.min() >= -1 and data.images.max() <= 1 and data.files[2] == "digits/2"


def test_a_second_line_for_one_image_and_all_empty_captions_are_refused(tmp_path):
    _image(tmp_path / "a.png")
    _image(tmp_path / "b.png")
    _metadata(tmp_path, [("a.png", "first"), ("b.png", "other"), ("a.png", "second")])
    with pytest.raises(ValueError, match="line 3: 'a.png' is listed a second time"):
        load_captioned_folder(tmp_path)
    _metadata(tmp_path, [("a.png", ""), ("b.png", "  ")])
    with pytest.raises(ValueError, match="every caption .* is empty"):
        load_captioned_folder(tmp_path)
    _metadata(tmp_path, [("a.png", ""), ("b.png", "a square")])  # one empty caption is allowed
    assert load_captioned_folder(tmp_path).captions == ("", "a square")
