"""Checkpoint folders appear whole or not at all; "latest" is the latest complete one (issue "Reliability")."""

import sys
from pathlib import Path

import pytest

from mmh_train.integrations.checkpoints import PARTIAL_SUFFIX, checkpoint_step, latest_checkpoint, save_state_atomic

ROOT = Path(__file__).resolve().parents[2]


class FakeAccelerator:
    """save_state writes two files, or dies after the first (a kill during the write)."""

    is_main_process = True

    def __init__(self, die=False):
        self.die = die

    def wait_for_everyone(self):
        pass

    def save_state(self, path):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "model.safetensors").write_text("weights")
        if self.die:
            raise KeyboardInterrupt("killed while writing")
        (Path(path) / "optimizer.bin").write_text("state")


def test_a_checkpoint_appears_whole_or_not_at_all(tmp_path):
    save_state_atomic(FakeAccelerator(), tmp_path / "checkpoint-5")
    assert sorted(p.name for p in (tmp_path / "checkpoint-5").iterdir()) == ["model.safetensors", "optimizer.bin"]
    with pytest.raises(KeyboardInterrupt):
        save_state_atomic(FakeAccelerator(die=True), tmp_path / "checkpoint-10")
    assert not (tmp_path / "checkpoint-10").exists() and (tmp_path / f"checkpoint-10{PARTIAL_SUFFIX}").is_dir()
    with pytest.warns(RuntimeWarning, match=r"skipping incomplete checkpoint folder\(s\) checkpoint-10.partial"):
        assert latest_checkpoint(tmp_path, "checkpoint-") == str(tmp_path / "checkpoint-5")
    save_state_atomic(FakeAccelerator(), tmp_path / "checkpoint-10")  # the leftover is replaced by a whole one
    assert latest_checkpoint(tmp_path, "checkpoint-") == str(tmp_path / "checkpoint-10")
    assert not (tmp_path / f"checkpoint-10{PARTIAL_SUFFIX}").exists()


def test_latest_orders_by_step_and_ignores_other_names(tmp_path):
    for name in ("checkpoint-9", "checkpoint-10", "checkpoint-x", "notes"):
        (tmp_path / name).mkdir()
    (tmp_path / "checkpoint-99").write_text("a file, not a folder")
    assert latest_checkpoint(tmp_path, "checkpoint-") == str(tmp_path / "checkpoint-10")
    assert latest_checkpoint(tmp_path / "missing", "checkpoint-") is None
    assert checkpoint_step("runs/step_250", "step_") == 250 and checkpoint_step("step_250.partial", "step_") is None


def test_the_port_refuses_a_resume_folder_that_does_not_exist(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    import train_unconditional

    code = train_unconditional.main(["--output_dir", str(tmp_path / "out"), "--resume_from_checkpoint",
                                     str(tmp_path / "checkpoint-5")])
    assert code == 2 and "is not a checkpoint folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
