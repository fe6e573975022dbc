"""diffusers' train_unconditional.py loop, ported (recipes/train_unconditional.py), with the guard in ≤ 10 lines:
bf16 autocast on CPU, EMA, gradient accumulation, random flips, checkpoints and resume."""

import csv
import shutil
import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "recipes"))

import train_unconditional  # noqa: E402

TINY = ["--max_train_samples", "48", "--resolution", "8", "--train_batch_size", "8", "--num_epochs", "2",
        "--gradient_accumulation_steps", "2", "--use_ema", "--mixed_precision", "bf16",
        "--checkpointing_steps", "2"]  # 43 images: 6 batches, 3 steps an epoch; checkpoints at 2, 4 (mid-epoch), 6


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def audit(path):
    return list(csv.DictReader(open(path)))


def test_the_diff_a_user_applies_is_at_most_ten_lines():
    lines = (ROOT / "recipes" / "train_unconditional.py").read_text().splitlines()
    marked = [line for line in lines if line.rstrip().endswith("# mmh_train")]
    assert 8 <= len(marked) <= 10, marked
    readme = (ROOT / "README.md").read_text()
    for line in marked:  # README shows exactly these lines as the diff
        assert line.split("# mmh_train")[0].strip() in readme, line


@pytest.mark.filterwarnings("ignore:the verdicts compare each training probe")  # 5 held-out images, on purpose
def test_the_guarded_loop_trains_in_bf16_with_ema_checkpoints_resumes_and_reports(tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    assert train_unconditional.main(["--output_dir", str(out), *TINY]) == 0
    rows = audit(out / "mmh_audit.csv")
    assert len(rows) == 43 + 5  # 90 % of 48 images trained and watched, 10 % held out
    assert {"lid@step2", "lid@step4", "lid@step6", "label", "duplicate_group"} <= set(rows[0])
    assert all(r[f"lid@step{s}"] not in ("", "nan") for r in rows for s in (2, 4, 6))
    for name in ("report.md", "plots/samples.png", "unet/config.json", "checkpoint-2", "checkpoint-4", "checkpoint-6"):
        assert (out / name).exists(), name
    md = (out / "report.md").read_text()
    assert "LID" in md and "[mmh_audit.csv](mmh_audit.csv)" in md  # the guard's audit, linked from its report

    resumed = tmp_path / "resumed"  # died after checkpoint-4, one step into the second epoch, and started again
    resumed.mkdir()
    shutil.copytree(out / "checkpoint-4", resumed / "checkpoint-4")
    AcceleratorState._reset_state(True)
    assert train_unconditional.main(["--output_dir", str(resumed), "--resume_from_checkpoint", "latest", *TINY]) == 0
    assert (resumed / "mmh_audit.csv").read_text() == (out / "mmh_audit.csv").read_text()  # history and new checks
    whole, parts = (load_file(run / "unet" / "diffusion_pytorch_model.safetensors") for run in (out, resumed))
    assert whole.keys() == parts.keys() and all(torch.equal(whole[k], parts[k]) for k in whole)  # the same epoch order
    assert torch.cuda.is_available() or AcceleratorState().mixed_precision == "bf16"

    ended = tmp_path / "ended"  # died after its last checkpoint: resumed, nothing left to train, the report still
    ended.mkdir()
    shutil.copytree(out / "checkpoint-6", ended / "checkpoint-6")
    AcceleratorState._reset_state(True)
    assert train_unconditional.main(["--output_dir", str(ended), "--resume_from_checkpoint", "latest", *TINY]) == 0
    assert (ended / "report.md").stat().st_size > 0 and (ended / "plots" / "samples.png").is_file()
    assert [r["lid@step6"] for r in audit(ended / "mmh_audit.csv")] == [r["lid@step6"] for r in rows]
