"""Tests for mmh_train.data.folder: which files are read, in what order, how they are converted, and errors."""

import random

import pytest
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader

from mmh_train.data import ImageFolderData, ImageFolderDataset, find_image_files, load_image_folder
from mmh_train.data.folder import IMAGE_EXTENSIONS


def random_image(rng: random.Random, mode: str = "RGB") -> Image.Image:
    """A random shape in a random colour on a random background, at a random (often non-square) size."""
    w, h = rng.randint(12, 70), rng.randint(12, 70)
    colour = lambda: tuple(rng.randrange(256) for _ in range(3)) if mode == "RGB" else rng.randrange(256)  # noqa: E731
    image = Image.new(mode, (w, h), colour())
    draw = ImageDraw.Draw(image)
    box = sorted(rng.sample(range(w), 2)), sorted(rng.sample(range(h), 2))
    xy = (box[0][0], box[1][0], box[0][1], box[1][1])
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(xy, fill=colour())
    return image


# Sorted relative paths of the images make_folder writes (11 at the top, 1 in a subfolder).
NAMES = ["a00.png", "a01.png", "a02.png", "a03.jpg", "a04.bmp", "a05.webp", "a06.gif", "a07.png", "a08.png",
         "a09.png", "b10.JPEG", "sub/c11.PNG"]


@pytest.fixture
def folder(tmp_path):
    rng = random.Random(0)
    (tmp_path / "sub").mkdir()
    for i, name in enumerate(NAMES):
        random_image(rng, "L" if i % 4 == 1 else "RGB").save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"AppleDouble junk, not an image")  # hidden: skipped
    (tmp_path / ".thumbs").mkdir()
    random_image(rng).save(tmp_path / ".thumbs" / "t.png")
    return tmp_path


def test_shapes_range_order_and_ignored_files(folder):
    data = load_image_folder(folder)
    assert isinstance(data, ImageFolderData) and len(data) == len(NAMES)
    assert data.images.shape == (12, 3, 32, 32) and data.images.dtype == torch.float32
    assert data.size == 32 and data.channels == 3
    assert float(data.images.min()) >= -1.0 and float(data.images.max()) <= 1.0
    assert data.files == tuple(NAMES) == tuple(sorted(NAMES))
    assert torch.equal(data.index, torch.arange(12))
    # Pixel values are k/127.5 − 1 for integers k.
    k = (data.images + 1) * 127.5
    torch.testing.assert_close(k, k.round(), atol=1e-4, rtol=0)
    # A grayscale file read as RGB has three equal channels.
    gray = data.images[1]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert find_image_files(folder) == NAMES


def test_one_channel_other_size_and_max_images(folder):
    data = load_image_folder(folder, size=16, channels=1, max_images=5)
    assert data.images.shape == (5, 1, 16, 16) and data.files == tuple(NAMES[:5])
    rgb = load_image_folder(folder, size=16, max_images=5)
    assert not torch.equal(rgb.images[0, 0], rgb.images[0, 1])  # a colour image differs between channels ...
    luma = 0.299 * rgb.images[:, 0] + 0.587 * rgb.images[:, 1] + 0.114 * rgb.images[:, 2]
    error = (data.images[:, 0] - luma).abs()                     # ... and grayscale is its luma (up to
    assert error.mean() < 0.01 and error.max() < 0.1             # rounding, and clipping of Lanczos overshoot)


@pytest.mark.parametrize("width, height", [(60, 20), (20, 60), (61, 21)])
def test_non_square_images_are_centre_cropped(tmp_path, width, height):
    image = Image.new("RGB", (width, height), (255, 0, 0))                  # red margins ...
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image.paste((0, 255, 0), (left, top, left + side, top + side))           # ... a green centre square
    image.save(tmp_path / "x.png")
    x = load_image_folder(tmp_path, size=8).images[0]
    expected = torch.tensor([-1.0, 1.0, -1.0]).view(3, 1, 1).expand(3, 8, 8)
    torch.testing.assert_close(x, expected, atol=0.02, rtol=0)              # no red left, none bled in


def test_resize_keeps_a_smooth_image_and_upscales(tmp_path):
    ramp = torch.linspace(0, 255, 64).round().to(torch.uint8).repeat(64, 1)  # left-to-right gradient
    Image.fromarray(ramp.numpy(), "L").save(tmp_path / "big.png")
    Image.fromarray(ramp[::8, ::8].contiguous().numpy(), "L").save(tmp_path / "small.png")  # 8×8: upscaled
    data = load_image_folder(tmp_path, size=16, channels=1)
    for x in data.images:
        row = x[0, 8]
        assert row[0] < -0.7 and row[-1] > 0.7 and bool((row[1:] >= row[:-1] - 0.05).all())
        assert torch.allclose(x[0], x[0, 8].expand(16, 16), atol=1e-6)      # every row the same


def test_transparency_is_laid_over_white(tmp_path):
    image = Image.new("RGBA", (10, 10), (0, 0, 0, 0))    # fully transparent black
    image.paste((0, 0, 255, 255), (0, 0, 10, 5))         # opaque blue top half
    image.save(tmp_path / "x.png")
    x = load_image_folder(tmp_path, size=8).images[0]
    torch.testing.assert_close(x[:, 6:], torch.ones(3, 2, 8))                     # white, not black
    torch.testing.assert_close(x[:, :2], torch.tensor([-1.0, -1.0, 1.0]).view(3, 1, 1).expand(3, 2, 8))


def test_dataset_items_and_collation(folder):
    data = load_image_folder(folder, size=8)
    ds = ImageFolderDataset(data)
    assert len(ds) == 12
    x, label, i = ds[3]
    assert torch.equal(x, data.images[3]) and label == 0 and i == 3
    assert ds[-1][2] == 11
    with pytest.raises(IndexError):
        ds[12]
    batch = next(iter(DataLoader(ds, batch_size=5)))
    assert batch[0].shape == (5, 3, 8, 8) and batch[1].tolist() == [0] * 5 and batch[2].tolist() == list(range(5))
    with pytest.raises(TypeError, match="ImageFolderData"):
        ImageFolderDataset(data.images)


def test_select_keeps_files_and_index(folder):
    data = load_image_folder(folder, size=8)
    part = data.select(torch.tensor([2, 7, 11]))
    assert part.files == (NAMES[2], NAMES[7], NAMES[11]) and part.index.tolist() == [2, 7, 11]
    assert torch.equal(part.images, data.images[[2, 7, 11]])


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "nowhere")


def test_a_file_is_not_a_folder(folder):
    with pytest.raises(NotADirectoryError, match="not a folder"):
        load_image_folder(folder / "notes.txt")


def test_no_images_lists_the_extensions(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="no image files") as error:
        load_image_folder(tmp_path)
    assert all(ext in str(error.value) for ext in IMAGE_EXTENSIONS)


@pytest.mark.parametrize("kwargs, message", [
    ({"size": 4}, "size must be an integer ≥ 8"),
    ({"size": 16.0}, "size must be an integer"),
    ({"channels": 2}, "channels must be 3"),
    ({"channels": 4}, "channels must be 3"),
    ({"max_images": 0}, "max_images must be a positive integer"),
])
def test_bad_arguments_fail_before_reading(tmp_path, monkeypatch, kwargs, message):
    import PIL.Image

    def no_reading(*args, **kwargs):
        raise AssertionError("an image was opened")

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    monkeypatch.setattr(PIL.Image, "open", no_reading)
    with pytest.raises(ValueError, match=message):
        load_image_folder(tmp_path, **kwargs)
    with pytest.raises(ValueError, match=message):  # checked before the folder too
        load_image_folder(tmp_path / "nowhere", **kwargs)


def test_an_unreadable_image_is_named(folder):
    (folder / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ValueError, match="sub/broken.png"):
        load_image_folder(folder)
    assert len(load_image_folder(folder, max_images=11)) == 11  # files after it in sorted order are not read
