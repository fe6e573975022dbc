"""benchmarks/kill_resume.py's harness on a stand-in recipe (a second, not the minutes of real recipes; the real
kill during a checkpoint write and resume from latest are tested in tests/test_faults.py): the kill lands, is
classified from the folder, the resume runs to the end and the try is counted."""

import os
import sys

FAKE_RECIPE = """
import pathlib, sys, time
out = pathlib.Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
if len(sys.argv) > 2:  # the resume: names the leftover, finishes the run
    if (out / "checkpoint-6.partial").exists():
        print("skipping incomplete checkpoint folder(s) checkpoint-6.partial", file=sys.stderr)
    (out / "checkpoint-6").mkdir()
    (out / "mmh_audit.csv").write_text("index\\n0\\n")
    (out / "report.md").write_text("report")
else:  # the first run: one checkpoint whole, the next one being written when the kill comes
    (out / "checkpoint-3").mkdir()
    (out / "checkpoint-6.partial").mkdir()
    time.sleep(60)
"""


def test_a_kill_during_a_checkpoint_write_is_classified_and_the_resumed_try_counted(load_benchmark, tmp_path,
                                                                                    monkeypatch):
    script = load_benchmark("kill_resume")
    fake = tmp_path / "fake_recipe.py"
    fake.write_text(FAKE_RECIPE)
    monkeypatch.setattr(script, "command", lambda recipe, out, *, quick, resume:
                        [sys.executable, str(fake), str(out), *(["resume"] if resume else [])])
    reference = {"audit": "index\n0\n", "weights": None, "last_checkpoint": 6, "report": True}
    row = script.one_try("port", tmp_path / "try", 1.5, reference, quick=True, env=dict(os.environ), timeout=30)
    assert row["killed"] and row["landed"] == "during a checkpoint write", row
    assert row["resume_rc"] == 0 and row["complete"] and row["skipped_incomplete_named"], row
    assert not row["same_as_uninterrupted"]  # no weights to compare: never counted as the same run

    short = {**reference, "last_checkpoint": 9}  # the resumed run stopped before the reference's last checkpoint
    assert not script.one_try("port", tmp_path / "again", 1.5, short, quick=True, env=dict(os.environ),
                              timeout=30)["complete"]
