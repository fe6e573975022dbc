"""Fault injection: a model that diverges mid-training, a full disk while writing, a corrupt checkpoint, kill -9
while a checkpoint is written and a resume from "latest".

(A rank that raises under DDP is not simulated here: tests/integrations/test_ddp.py runs two real gloo
processes, and a raising rank is torch.distributed's business — the other rank times out in its collective.)
"""

from __future__ import annotations

import errno
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mmh_train
from mmh_train.integrations.checkpoints import PARTIAL_SUFFIX
from mmh_train.io import write_text_atomic

from closed_forms import GaussianSubspace

ROOT = Path(__file__).resolve().parents[1]


def test_a_model_that_diverges_mid_training_stops_the_guard_at_the_next_check():
    gauss = GaussianSubspace(6, 2, [1.0, 1.0], seed=0)
    train, heldout = gauss.sample(40, seed=1).float(), gauss.sample(40, seed=2).float()
    state = {"step": 0}

    def denoiser(x, sigma):  # the exact denoiser, until the weights blow up at step 300
        out = gauss.denoiser(x.double(), sigma.double()).to(x.dtype)
        return out * math.nan if state["step"] >= 300 else out

    guard = mmh_train.MemorizationGuard(mmh_train.MemorizationMonitor(train, heldout, every_n_steps=100),
                                        stopper=mmh_train.MemorizationStopper("od_fraction", patience=5))
    with pytest.warns(RuntimeWarning, match="NaN or infinite"):
        for step in range(1, 1001):
            state["step"] = step
            guard.maybe_check(denoiser, step)
            if guard.should_stop:
                break
    assert guard.stopper.stopped_step == 300 and "not finite" in guard.stopper.reason
    assert all(math.isnan(v) for v in guard.last_result.metrics.values())


def test_a_full_disk_while_writing_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "mmh_audit.csv"
    write_text_atomic(path, "index,label\n0,none\n")
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            self.handle.write(data[:10])  # part of it, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match="No space left"):
        write_text_atomic(path, "index,label\n0,od\n1,dd\n")
    assert path.read_text() == "index,label\n0,none\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mmh_audit.csv"]


def test_a_corrupt_checkpoint_is_refused_before_training(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "recipes"))
    import toy

    truncated = tmp_path / "last.ckpt"
    truncated.write_bytes(b"PK\x03\x04 half a zip file")
    argv = [f"out_dir={tmp_path / 'run'}", f"train.resume={truncated}", "remedies.compare=false"]
    assert toy.main(argv) == 2
    assert "cannot be read as a checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    foreign = tmp_path / "weights.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    assert toy.main([f"out_dir={tmp_path / 'run'}", f"train.resume={foreign}", "remedies.compare=false"]) == 2
    assert "not a Lightning checkpoint" in capsys.readouterr().err


# ---------------------------------------------------------------- kill -9 while a checkpoint is written
PORT_TINY = ["--max_train_samples", "48", "--resolution", "8", "--train_batch_size", "8", "--num_epochs", "2",
             "--gradient_accumulation_steps", "2", "--use_ema", "--random_flip", "--checkpointing_steps", "2"]
KILLED_WHILE_SAVING = """
import os, signal, sys, torch
real_save = torch.save
def save(obj, f, *args, **kwargs):  # the first torch.save into the checkpoint being written: after the weights
    if "checkpoint-4.partial" in str(f):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)
torch.save = save
sys.path.insert(0, sys.argv[1])
import train_unconditional
sys.exit(train_unconditional.main(sys.argv[2:]))
"""


@pytest.mark.filterwarnings("ignore:the verdicts compare each training probe")  # 5 held-out images, on purpose
def test_killed_while_writing_a_checkpoint_the_port_resumes_from_the_latest_complete_one(tmp_path, monkeypatch,
                                                                                          capsys):
    from accelerate.state import AcceleratorState

    out = tmp_path / "run"
    args = ["--output_dir", str(out), *PORT_TINY]
    proc = subprocess.run([sys.executable, "-c", KILLED_WHILE_SAVING, str(ROOT / "recipes"), *args], timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    partial = out / f"checkpoint-4{PARTIAL_SUFFIX}"
    assert (out / "checkpoint-2").is_dir() and not (out / "checkpoint-4").exists() and not (out / "report.md").exists()
    assert (partial / "model.safetensors").is_file() and not (partial / "optimizer.bin").exists()  # killed halfway

    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    import train_unconditional

    AcceleratorState._reset_state(True)
    try:
        with pytest.warns(RuntimeWarning, match=r"skipping incomplete checkpoint folder\(s\) checkpoint-4.partial"):
            assert train_unconditional.main([*args, "--resume_from_checkpoint", "latest"]) == 0
    finally:
        AcceleratorState._reset_state(True)
    assert (out / "checkpoint-4" / "optimizer.bin").is_file() and not partial.exists()  # written whole this time
    assert "resumed mid-epoch with --random_flip" in capsys.readouterr().out  # checkpoint-2: 2 of 3 steps an epoch
    assert (out / "report.md").stat().st_size > 0
    assert "lid@step6" in (out / "mmh_audit.csv").read_text().splitlines()[0]


def test_toy_resume_latest_skips_a_checkpoint_cut_short_and_ends_as_the_uninterrupted_run(tmp_path, capsys):
    """Lightning moves a checkpoint into place from a temporary file; on another file system that is a copy, and a
    kill during it leaves a truncated file: train.resume=latest names and skips it and resumes from the one before."""
    sys.path.insert(0, str(ROOT / "recipes"))
    import toy

    args = [f"out_dir={tmp_path}", "train.steps=40", "monitor.every_n_steps=20", "train.checkpoint_every=20",
            "data.n_train=16", "train.n_samples=32", "train.sample_steps=4", "train.progress_bar=false",
            "remedies.compare=false", "remedies.early_stopping=false", "train.logger=csv"]
    assert toy.main([*args, "train.resume=latest"]) == 0  # nothing to resume yet: a new run, said so
    assert "no complete checkpoint in" in capsys.readouterr().err
    last = next((tmp_path / "remedied" / "checkpoints").glob("*step=40.ckpt"))
    whole = torch.load(last, weights_only=False)["state_dict"]
    last.write_bytes(last.read_bytes()[:1000])  # cut short
    (tmp_path / "report.md").unlink()
    assert toy.main([*args, "train.resume=latest"]) == 0
    assert f"skipping unreadable checkpoint(s) {last.name}" in capsys.readouterr().err
    resumed = [p for p in (tmp_path / "remedied" / "checkpoints").glob("*step=40*.ckpt") if p != last]
    parts = torch.load(resumed[0], weights_only=False)["state_dict"]
    assert whole.keys() == parts.keys() and all(torch.equal(whole[k], parts[k]) for k in whole)
    assert (tmp_path / "report.md").stat().st_size > 0
