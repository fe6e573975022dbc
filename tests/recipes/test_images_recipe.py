"""The images recipe end to end on a generated folder, and bad folders/configs failing before any work."""

import random
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "recipes"))  # recipes import their sibling common.py

import images  # noqa: E402

TINY_IMAGES = ["train.steps=6", "monitor.every_n_steps=3", "train.batch_size=8", "monitor.n_train_probes=4",
               "monitor.n_heldout_probes=2", "monitor.n_probes=1", "train.n_samples=8", "train.sample_steps=3",
               "train.progress_bar=false", "model.channels=[8,16]", "monitor.reference_k=5"]
REPORT_FILES = ["report.md", "report.html", "summary.txt", "config.yaml", "files.csv", "plots/lid_over_training.png",
                "plots/lid_scatter.png", "plots/samples.png"]


def make_folder(folder: Path, n: int = 12, size: int = 32, seed: int = 0) -> Path:
    """n RGB PNGs: a random ellipse or rectangle in a random colour on a random background."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    colour = lambda: tuple(rng.randrange(256) for _ in range(3))  # noqa: E731
    for i in range(n):
        image = Image.new("RGB", (size, size), colour())
        x0, y0 = rng.randrange(size // 2), rng.randrange(size // 2)
        box = (x0, y0, x0 + rng.randint(6, size // 2), y0 + rng.randint(6, size // 2))
        (ImageDraw.Draw(image).ellipse if i % 2 else ImageDraw.Draw(image).rectangle)(box, fill=colour())
        image.save(folder / f"img{i:03d}.png")
    return folder


def test_images_end_to_end(tmp_path, capsys):
    """A baseline and a remedied model (early stopping) on 10 training and 2 held-out images."""
    folder = make_folder(tmp_path / "pics")
    run_dir = tmp_path / "run"
    assert images.main([f"out_dir={run_dir}", f"data.folder={folder}", *TINY_IMAGES,
                        "remedies.early_stopping=true"]) == 0
    for name in REPORT_FILES:
        assert (run_dir / name).stat().st_size > 0, name
    for variant in ("baseline", "remedied"):
        assert (run_dir / variant / "mmh_audit.csv").stat().st_size > 0
    text = (run_dir / "report.md").read_text()
    assert "baseline" in text and "remedied" in text and "sliced_wasserstein" in text
    rows = (run_dir / "files.csv").read_text().splitlines()
    assert rows[0] == "split,index,file" and len(rows) == 13                  # 10 training + 2 held-out
    assert sum(r.startswith("train,") for r in rows) == 10
    assert sorted(r.rsplit(",", 1)[1] for r in rows[1:]) == [f"img{i:03d}.png" for i in range(12)]
    assert "10 training and 2 held-out images, 3×32×32" in capsys.readouterr().out


def no_run(tmp_path, capsys, argv) -> str:
    """Runs the recipe expecting exit code 2 and no output folder; returns stderr."""
    assert images.main([f"out_dir={tmp_path / 'run'}", *TINY_IMAGES, *argv]) == 2
    assert not (tmp_path / "run").exists()  # nothing written
    return capsys.readouterr().err


def test_missing_folder_fails_before_training(tmp_path, capsys):
    err = no_run(tmp_path, capsys, [f"data.folder={tmp_path / 'nowhere'}"])
    assert "data.folder=" in err and "does not exist" in err


def test_empty_folder_fails_before_training(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    err = no_run(tmp_path, capsys, [f"data.folder={tmp_path / 'empty'}"])
    assert "no image files" in err and ".png" in err and ".jpg" in err


def test_no_folder_given(tmp_path, capsys):
    assert "data.folder is required: pass data.folder=path/to/images" in no_run(tmp_path, capsys, [])


def test_unreadable_image_fails_before_training(tmp_path, capsys):
    folder = make_folder(tmp_path / "pics", n=8)
    (folder / "img002.png").write_bytes(b"not a png")
    err = no_run(tmp_path, capsys, [f"data.folder={folder}"])
    assert "img002.png" in err


@pytest.mark.parametrize("argv, message", [
    (["data.size=30", "model.channels=[8,16,16]"], "divisible by 4"),
    (["data.channels=2"], "choose 3 (RGB) or 1"),
    (["data.heldout_fraction=1.0"], "strictly between 0 and 1"),
    (["monitor.reference=data", "monitor.reference_k=20"], "pass monitor.reference_k=5"),  # 6 training images
    (["monitor.reference=truth"], "known LID"),
    (["monitor.n_train_probes=9"], "must lie in [1, 6]"),
    (["model.channels=[8,12]"], "multiple of 8"),
    (["data.max_images=2"], "≥ 3"),
    (["data.sise=32"], "Valid keys"),
])
def test_bad_configs_fail_before_training(tmp_path, capsys, argv, message):
    folder = make_folder(tmp_path / "pics", n=8)
    assert message in no_run(tmp_path, capsys, [f"data.folder={folder}", *argv])


def test_monitor_only_by_default_with_the_data_reference(tmp_path):
    folder = make_folder(tmp_path / "pics")
    assert images.main([f"out_dir={tmp_path / 'run'}", f"data.folder={folder}", *TINY_IMAGES,
                        "monitor.reference=data", "train.steps=3"]) == 0
    assert (tmp_path / "run" / "model" / "mmh_audit.csv").stat().st_size > 0
    assert not (tmp_path / "run" / "baseline").exists()


def test_too_few_images(tmp_path, capsys):
    folder = make_folder(tmp_path / "pics", n=2)
    err = no_run(tmp_path, capsys, [f"data.folder={folder}", "monitor.reference_k=1"])
    assert "has 2 image(s)" in err and "at least 3" in err
