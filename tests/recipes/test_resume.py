"""recipes/resume.py: the CSV log of a resumed run continues, and RNG states survive a weights-only load."""

import csv
import random
import sys
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "recipes"))

from resume import AppendingCSVLogger, ResumeState, latest_version, resumed_logger  # noqa: E402


def test_a_resumed_log_keeps_the_rows_logged_before_the_interruption(tmp_path):
    first = CSVLogger(tmp_path, name="logs")
    first.log_metrics({"loss": 1.0}, step=10)
    first.save()
    assert latest_version(tmp_path, None) is None and latest_version(tmp_path, "x.ckpt") == 0
    again = resumed_logger(tmp_path, "x.ckpt")
    assert isinstance(again, AppendingCSVLogger) and again.version == 0
    again.log_metrics({"loss": 0.5, "mmh/od_fraction": 0.1}, step=20)
    again.save()
    rows = list(csv.DictReader(open(tmp_path / "logs" / "version_0" / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [10, 20] and rows[1]["mmh/od_fraction"] == "0.1"
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["version_0"]
    assert resumed_logger(tmp_path, None).version == 1  # a fresh run starts its own version


def test_the_rng_states_round_trip_through_a_weights_only_load(tmp_path):
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    saved = ResumeState().state_dict()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.save(saved, tmp_path / "state.pt")
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    ResumeState().load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_the_report_says_what_the_per_point_penalty_did():
    from types import SimpleNamespace

    from mmh_train import MemorizationGuard
    from mmh_train.remedies import PenaltySchedule
    from mmh_train.report import guard_notes

    schedule = PenaltySchedule(n_points=5, max_weight=10.0)
    guard = MemorizationGuard(penalty=schedule, penalty_sigma=0.3)
    assert "never switched on" in guard_notes(guard)["penalty"]
    labels = SimpleNamespace(label=torch.tensor([1, 0, 1]), lid_ref=torch.tensor([4.0, 5.0, 6.0]),
                             null=torch.tensor([4.0, 5.0, 6.0]), sigma=torch.tensor([0.3, 0.3, 0.5]))
    schedule.update(SimpleNamespace(step=1000, train_index=torch.tensor([0, 2, 4]), labels=labels, metrics={}))
    assert guard_notes(guard)["penalty"] == ("on from step 1000 for the 2 points labelled OD, each aimed at its "
                                             "held-out null (median 4.00; weight 10)")
