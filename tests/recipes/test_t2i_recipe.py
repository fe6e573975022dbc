"""recipes/t2i_lora.py on the tiny pipeline: end to end with the report, resume, two processes, and bad input
failing before anything is written."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "recipes"))  # recipes import their sibling modules

import t2i_lora  # noqa: E402

TINY = ["model.tiny=true", "train.steps=8", "monitor.every_n_steps=4", "train.checkpoint_every=4",
        "train.n_samples=8", "train.sample_steps=4"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("t2i") / "a"
    assert t2i_lora.main([f"out_dir={run}", *TINY, "train.checkpoint_every=2"]) == 0  # 4 steps a pass: 2 is mid-pass
    return run


def test_tiny_pipeline_end_to_end_writes_the_report_and_one_audit_row_per_image(first_run):
    for name in ("report.md", "report.html", "summary.txt", "plots/samples.png", "plots/lid_over_training.png"):
        assert (first_run / name).stat().st_size > 0, name
    md = (first_run / "report.md").read_text()
    assert "| index | caption | LID(z \\| c) | LID(z) |" in md and "a photo of the digit" in md
    assert "lid_unconditional" in md and "seconds_per_check" in md and "monitor_share" in md
    rows = list(csv.DictReader((first_run / "model" / "mmh_audit.csv").open()))
    assert len(rows) == 32 and [int(r["index"]) for r in rows] == list(range(32))  # every training image
    assert all(r["lid_c@step4"] and r["lid_c@step8"] and r["lid_uncond"] and r["label"] for r in rows)
    assert rows[0]["caption"].startswith("a photo of the digit ")


def test_resume_at_an_epoch_boundary_reproduces_the_uninterrupted_run(first_run, tmp_path):
    """Resumed from step 4 (32 images in batches of 8: an epoch boundary), the LoRA weights at step 8 equal the
    uninterrupted run's bit for bit, and both monitors' histories came back with the state."""
    from safetensors.torch import load_file

    checkpoint = first_run / "checkpoints" / "step_4"
    assert t2i_lora.main([f"out_dir={tmp_path}", *TINY, f"train.resume={checkpoint}"]) == 0
    whole, parts = (load_file(run / "checkpoints" / "step_8" / "model.safetensors") for run in (first_run, tmp_path))
    assert whole.keys() == parts.keys() and all(torch.equal(whole[k], parts[k]) for k in whole)
    assert any("lora_B" in k for k in whole) and all("lora_" in k for k in whole)  # the adapters, not the UNet
    assert t2i_lora.main([f"out_dir={tmp_path / 'other'}", *TINY, "model.lora_rank=2",
                          f"train.resume={checkpoint}"]) == 2  # another LoRA: refused, not silently half-loaded
    audit = (tmp_path / "model" / "mmh_audit.csv").read_text()
    assert audit.splitlines()[0].startswith("index,file,caption,lid_c@step4,lid_c@step8,lid_uncond,")
    assert audit == (first_run / "model" / "mmh_audit.csv").read_text()


def test_resumed_from_the_last_checkpoint_the_run_still_ends_with_its_report_and_audit(first_run, tmp_path):
    assert t2i_lora.main([f"out_dir={tmp_path}", *TINY, f"train.resume={first_run / 'checkpoints' / 'step_8'}"]) == 0
    assert (tmp_path / "report.md").stat().st_size > 0 and (tmp_path / "plots" / "samples.png").is_file()
    assert (tmp_path / "model" / "mmh_audit.csv").read_text() == (first_run / "model" / "mmh_audit.csv").read_text()


def test_resume_mid_pass_reproduces_the_uninterrupted_run(first_run, tmp_path):
    """Resumed from step 6, half-way through the second pass (4 steps a pass): the rest of that pass is drawn in the
    interrupted run's order, so the LoRA at step 8 and both monitors' histories equal the uninterrupted run's."""
    from safetensors.torch import load_file

    assert t2i_lora.main([f"out_dir={tmp_path}", *TINY, f"train.resume={first_run / 'checkpoints' / 'step_6'}"]) == 0
    whole, parts = (load_file(run / "checkpoints" / "step_8" / "model.safetensors") for run in (first_run, tmp_path))
    assert whole.keys() == parts.keys() and all(torch.equal(whole[k], parts[k]) for k in whole)
    assert (tmp_path / "model" / "mmh_audit.csv").read_text() == (first_run / "model" / "mmh_audit.csv").read_text()


def test_two_processes_under_accelerate_launch(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(ROOT / "recipes" / "t2i_lora.py"), f"out_dir={tmp_path}", *TINY]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "report.md").is_file() and len((tmp_path / "model" / "mmh_audit.csv").read_text().splitlines()) == 33


def _folder(root, sizes=((16, 16), (16, 16), (16, 16), (16, 16), (16, 16)), metadata=True, extra=(), same=False):
    from PIL import Image

    root.mkdir()
    names = []
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(np.full((h, w, 3), 90 if same else 40 * i, dtype=np.uint8)).save(root / f"{i}.png")
        names.append(f"{i}.png")
    if metadata:
        lines = [json.dumps({"file_name": n, "text": f"image {n}"}) for n in [*names, *extra]]
        (root / "metadata.jsonl").write_text("\n".join(lines))
    return root


@pytest.mark.parametrize("case, message", [
    ("no_captions", "has no metadata.jsonl and no instance prompt"),
    ("mixed_sizes", "mixed sizes"),
    ("missing_image", "names 1 image(s) that are not in the folder (first: lost.png)"),
    ("not_a_pipeline", "is not a text-to-image pipeline folder: it has no model_index.json"),
    ("two_models", "choose one model"),
    ("lora_rank", "model.lora_rank=100000 exceeds what the layers the LoRA adapts can use: the update of a layer with "
                  "in → out features has rank at most min(in, out), 32 for the widest"),
    ("identical", "all 3 training images are copies of one image. The monitor chooses its noise level (monitor.sigma, "
                  "unset) from the spacing between distinct training images, and there is none"),
    ("identical_sigma", "With monitor.sigma=0.5 the noise level is set, but the report's copy test needs at least 2 "
                        "distinct training images"),
])
def test_bad_input_fails_before_anything_is_written(tmp_path, capsys, case, message):
    args = {"no_captions": lambda: [f"data.folder={_folder(tmp_path / 'f', metadata=False)}", "model.tiny=true"],
            "mixed_sizes": lambda: [f"data.folder={_folder(tmp_path / 'f', sizes=((16, 16),) * 4 + ((32, 32),))}",
                                    "model.tiny=true"],
            "missing_image": lambda: [f"data.folder={_folder(tmp_path / 'f', extra=('lost.png',))}", "model.tiny=true"],
            "not_a_pipeline": lambda: [f"model.pretrained={tmp_path}"],
            "two_models": lambda: ["model.tiny=true", f"model.pretrained={tmp_path}"],
            "lora_rank": lambda: ["model.tiny=true", "model.lora_rank=100000"],
            "identical": lambda: [f"data.folder={_folder(tmp_path / 'f', same=True)}", "model.tiny=true"],
            "identical_sigma": lambda: [f"data.folder={_folder(tmp_path / 'f', same=True)}", "model.tiny=true",
                                        "monitor.sigma=0.5"]}[case]()
    assert t2i_lora.main([f"out_dir={tmp_path / 'run'}", "train.steps=2", "monitor.every_n_steps=2", *args]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (tmp_path / "run").exists()
