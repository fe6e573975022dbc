"""The memorization recipe end to end on a tiny config (a quick variant of the README command), its per-check
truth and pictures, the duplicated variant, and bad configs refused before any work."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "recipes"))

import memorize  # noqa: E402
from memorize_evidence import detection, first_step  # noqa: E402

TINY = ["train.steps=40", "monitor.every_n_steps=20", "data.n_train=12", "data.n_heldout=32", "train.batch_size=6",
        "evidence.n_samples=24", "evidence.sample_steps=3", "model.channels=[8,16]", "train.threads=1"]


def test_the_recipe_writes_its_per_check_truth_and_pictures(tmp_path, capsys):
    """The duplicated variant with a remedied run beside the baseline: both runs' tables and pictures."""
    assert memorize.main([f"out_dir={tmp_path}", *TINY, "data.duplicates=2", "remedies.reweight=true"]) == 0
    for name in ("report.md", "report.html", "baseline_timeline.png", "baseline_caught.png", "remedied_caught.png",
                 "plots/samples.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    md = (tmp_path / "report.md").read_text()
    assert "## Caught in the act: baseline" in md and "![Caught in the act: baseline](baseline_timeline.png)" in md
    assert "## Labelled and copied digits: baseline" in md and "## Caught in the act: remedied" in md
    assert "18 points of shape (1, 16, 16)" in md  # 12 digits and 3 more rows for each of 2 duplicated ones
    assert md.count("| 20 |") >= 1 and md.count("| 40 |") >= 1  # one row per check
    out = capsys.readouterr().out
    assert "baseline: step    20" in out and "labelled at or before their first copy" in out


def test_duplicates_are_appended_with_shifted_near_copies():
    cfg = memorize.MemorizeConfig()
    cfg.data.n_train, cfg.data.duplicates = 10, 2
    train, heldout, duplicated = memorize.split(cfg)
    assert len(train) == 16 and int(duplicated.sum()) == 8
    sources = torch.nonzero(duplicated[:10]).flatten()
    for s in sources:  # an exact copy and two copies shifted by one pixel
        matches = [(train.images[j] == train.images[s]).all() for j in range(10, 16)]
        assert sum(bool(m) for m in matches) == 1
        assert any(bool((train.images[j] == train.images[s].roll(1, -1)).all()) for j in range(10, 16))
    assert not bool((heldout[:, None] == train.images[None]).flatten(2).all(2).any())


def test_detection_counts_labels_ahead_of_copies():
    class Run:  # three checks, four digits: 0 labelled before its copy, 1 after, 2 copied never labelled, 3 false
        pass

    class E:
        def __init__(self, step, label, memorized):
            self.step, self.label, self.memorized = step, torch.tensor(label), torch.tensor(memorized)

    run = Run()
    run.evidence = [E(1, [1, 0, 0, 0], [False, False, False, False]), E(2, [1, 0, 0, 1], [True, True, False, False]),
                    E(3, [1, 1, 0, 1], [True, True, True, False])]
    d = detection(run)
    assert d["copied"] == 3 and d["lead"] == pytest.approx(1 / 3) and d["false"] == 1.0
    assert first_step([e.memorized for e in run.evidence], [1, 2, 3]).tolist() == [2, 2, 3, -1]


@pytest.mark.parametrize("override, match", [
    (["data.n_train=2"], "data.n_train must be"), (["data.duplicates=30"], "exceeds data.n_train"),
    (["data.n_heldout=1790"], "exceeds the 1797"), (["data.size=10", "model.channels=[8,16,32]"], "divisible by 4"),
    (["monitor.every_n_steps=300", "train.steps=400"], "fewer than 2 checks"), (["train.lr=-1"], "train.lr"),
    (["train.steps=2.5"], "train.steps: Value '2.5' of type 'float' could not be converted to Integer"),
])
def test_bad_configs_are_refused_before_any_work(tmp_path, capsys, override, match):
    assert memorize.main([f"out_dir={tmp_path / 'run'}", *override]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
