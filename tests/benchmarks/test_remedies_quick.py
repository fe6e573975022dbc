"""Smoke test of benchmarks/remedies.py: the quick run writes every dataset × variant row with sane values.

The goal (excess copy rate −90 % at quality within 10 %) is reported by the full run, never asserted here;
neither are timings.
"""

import math



def test_quick_run_writes_every_dataset_and_variant(run_quick):
    script, result, printed, status = run_quick("remedies")
    assert status == 0
    for key in ("benchmark", "command", "seeds", "machine", "code", "config", "goals", "runs", "summary",
                "goal_met_by", "quality_metrics", "feature_net_accuracy", "elapsed_s"):
        assert key in result, key
    assert result["quick"] is True and result["seeds"] == [0] and "--quick" in result["command"]
    assert result["machine"]["torch_threads"] == 1
    assert 0.0 <= result["feature_net_accuracy"] <= 1.0

    expected = {(d, v) for d in script.DATASETS for v in script.VARIANTS}
    runs = {(r["dataset"], r["variant"]): r for r in result["runs"]}
    assert set(runs) == expected and len(result["runs"]) == len(expected)
    for (dataset, variant), run in runs.items():
        assert run["seed"] == 0
        assert 0.0 <= run["copy_rate"] <= 1.0 and 0.0 <= run["control_copy_rate"] <= 1.0, (dataset, variant)
        assert run["excess_copy_rate"] == run["copy_rate"] - run["control_copy_rate"]
        low, high = run["excess_interval"]
        assert low <= run["excess_copy_rate"] <= high
        assert 0.0 <= run["memorized_fraction"] <= 1.0
        assert math.isfinite(run["quality"]) and run["quality"] >= 0.0, (dataset, variant, run["quality"])
        assert math.isfinite(run["train_seconds"]) and run["train_seconds"] > 0
        assert 1 <= run["steps_done"] <= result["config"][dataset]["steps"]
        guarded = variant not in ("none", "iet_agc")
        assert (run["checks"] > 0) == guarded, (dataset, variant)
        if variant == "iet_agc":
            assert 0.0 <= run["skipped_fraction"] <= 1.0
        else:
            assert run["skipped_fraction"] is None
        if variant not in ("penalty", "all"):
            assert run["penalty_on_step"] is None
        if variant not in ("early_stopping", "all"):
            assert run["stopped_step"] is None and run["restored_step"] is None

    summary = {(s["dataset"], s["variant"]): s for s in result["summary"]}
    assert set(summary) == expected
    for (dataset, variant), s in summary.items():
        assert s["seeds"] == [0]
        assert 0.0 <= s["copy_rate_mean"] <= 1.0 and math.isfinite(s["quality_mean"])
        assert math.isclose(s["excess_copy_rate_mean"], s["copy_rate_mean"] - s["control_copy_rate_mean"],
                            abs_tol=1e-12)
        assert isinstance(s["goal_met"], bool)
        if variant == "none":
            assert s["goal_met"] is False and s["quality_change"] == 0.0
    assert result["goal_met_by"] == [f"{d}/{v}" for (d, v), s in summary.items() if s["goal_met"]]

    for text in ("command:", "seeds: [0]", "copy % (mean ± sd)", "quality (mean ± sd)", "control %", "excess % (mean ± sd)", "Δexcess", "Δquality",
                 "goal met by:", "toy seed 0", "digits seed 0", "iet_agc", "early_stopping"):
        assert text in printed, text
