"""Smoke test of benchmarks/memorize.py: every scenario and variant runs the recipe's loop, and each row carries
the per-check truth and the detection figures the BENCHMARKS table is made of."""

import math


def test_quick_run_writes_every_row_with_its_checks(run_quick, tmp_path):
    script, result, printed, status = run_quick("memorize", "--seeds", "0", "--variants", "baseline", "all")
    assert status == 0 and result["quick"] is True
    assert {(r["scenario"], r["variant"]) for r in result["rows"]} == {
        (s, v) for s in script.SCENARIOS for v in ("baseline", "all")}
    for row in result["rows"]:
        assert [c["step"] for c in row["checks"]] == [20, 40]
        assert 0 <= row["copied"] <= row["n"] and math.isfinite(row["copier_quality"])
        assert all(0.0 <= c["copy_rate"] <= 1.0 and c["labelled"] <= row["n"] for c in row["checks"])
    assert "natural    baseline seed 0" in printed
    script.plot_curves([str(tmp_path / "memorize.json")], tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0
    table = script.markdown_tables([str(tmp_path / "memorize.json")])
    assert table.count("| natural | 12 | baseline | 0 |") == 1 and "| step | LID train |" in table
