"""Fault injection: a model that diverges mid-training, a full disk while writing, a corrupt checkpoint.

(A rank that raises under DDP is not simulated here: tests/integrations/test_ddp.py runs two real gloo
processes, and a raising rank is torch.distributed's business — the other rank times out in its collective.)
"""

from __future__ import annotations

import errno
import math
import os
import sys
from pathlib import Path

import pytest
import torch

import mmh_train
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
