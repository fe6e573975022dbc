"""Smoke test of benchmarks/lid_vs_n.py: the quick run writes one complete row per N, a history and a PNG.

The goal picture (OD-Mem growing as N falls) needs the full run's training length; it is not asserted here.
"""

import math

import pytest


def test_quick_run_writes_every_size_history_and_plot(tmp_path, run_quick):
    png = tmp_path / "lid_vs_n.png"
    script, doc, printed, status = run_quick("lid_vs_n", "--plot", str(png))
    assert status == 0
    for key in ("benchmark", "command", "seeds", "machine", "code", "config", "runs", "elapsed_s", "plot"):
        assert key in doc, key
    assert doc["quick"] is True and "--quick" in doc["command"]
    runs = doc["runs"]
    assert [r["n"] for r in runs] == doc["config"]["sizes"] == [16, 64]
    for r in runs:
        assert r["train_probes"] == min(r["n"], doc["config"]["probes"])
        assert r["heldout_probes"] == doc["config"]["probes"]
        assert len(r["history"]) == doc["config"]["steps"] // doc["config"]["check_every"]
        assert [h["step"] for h in r["history"]] == sorted(h["step"] for h in r["history"])
        for key in ("lid_train", "lid_heldout", "gap", "lid_train_median", "lid_heldout_median", "true_lid_train_probes"):
            assert math.isfinite(r[key]), key
        assert r["gap"] == pytest.approx(r["lid_heldout"] - r["lid_train"])
        assert 2 <= r["true_lid_train_probes"] <= 8  # the mixture's pieces are 2-, 4- and 8-dimensional
        assert 0.0 <= r["copy_rate"] <= 1.0 and 0.0 <= r["od_fraction"] <= 1.0
        assert 0.0 <= r["control_copy_rate"] <= 1.0
        assert r["excess_copy_rate"] == r["copy_rate"] - r["control_copy_rate"]
        assert 0 <= r["memorized_points"] <= r["n"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for text in ("command:", "seeds", "LID train", "LID held-out", "copies", "control", "excess", "N=   16"):
        assert text in printed, text


def test_bad_sizes_are_refused_before_any_work(load_benchmark, capsys):
    script = load_benchmark("lid_vs_n")
    with pytest.raises(SystemExit) as excinfo:
        script.main(["--sizes", "0", "16"])
    assert excinfo.value.code == 2
    assert "--sizes must be ≥ 1" in capsys.readouterr().err
