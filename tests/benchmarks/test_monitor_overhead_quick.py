"""Smoke test of benchmarks/monitor_overhead.py: the quick run writes every configuration, with finite times.

No timing goal is asserted here: timings on shared CPUs are noise, and they never belong in tests.
"""



CONFIGS = {"plain", "monitor", "monitor_steps", "reweighting", "penalty", "early_stopping", "all"}


def test_quick_run_writes_every_configuration(run_quick, is_finite_positive):
    script, result, printed, _ = run_quick("monitor_overhead")
    for key in ("benchmark", "command", "code", "seed", "quick", "config", "machine", "goals", "data", "model",
                "rows", "runs", "goal_monitor", "plain_seconds_per_step_median", "elapsed_s"):
        assert key in result, key
    assert result["benchmark"] == "monitor_overhead" and result["quick"] is True and result["seed"] == 0
    assert "--quick" in result["command"]
    for key in ("date", "platform", "cpu_model", "torch", "torch_threads", "lightning"):
        assert key in result["machine"], key
    assert result["machine"]["torch_threads"] == 1
    cfg = result["config"]
    assert cfg["repeats"] == 1
    assert result["data"]["n_train"] > cfg["n_train"] and result["data"]["n_duplicated"] > 0  # duplicates injected
    assert is_finite_positive(result["plain_seconds_per_step_median"])

    rows = {r["config"]: r for r in result["rows"]}
    assert set(rows) == CONFIGS and set(result["runs"]) == CONFIGS
    max_steps = cfg["steps_per_epoch"] * cfg["epochs"]
    for name, row in rows.items():
        assert row["repeats"] == 1 and len(row["times_s"]) == 1 and len(result["runs"][name]) == 1
        for key in ("median_s", "min_s", "median_over_plain", "min_over_plain", "paired_ratio_median"):
            assert is_finite_positive(row[key]), (name, key, row[key])
        assert row["min_s"] <= row["median_s"]
        assert row["steps"] == max_steps and row["stopped_early"] is False  # early stopping never triggers
        assert isinstance(row["same_weights_as_plain"], bool)
        if name == "plain":
            assert row["checks_per_run"] == 0 and row["median_over_plain"] == 1.0
            continue
        assert is_finite_positive(row["callbacks_median_s"]) and "LIDMonitor" in row["hook_s_median"]
        assert is_finite_positive(row["first_check_s_median"])
        assert is_finite_positive(row["later_check_s_median"]) and is_finite_positive(row["later_estimator_s_median"])
        assert is_finite_positive(row["later_log_and_audit_s_median"])
        for run in result["runs"][name]:
            assert run["checks"] and all(is_finite_positive(c["check_s"]) and c["n_measured"] > 0 for c in run["checks"])
    assert rows["monitor"]["checks_per_run"] == cfg["epochs"]  # default cadence: one check per epoch
    assert rows["monitor_steps"]["checks_per_run"] == max_steps // cfg["step_cadence"]
    for name, callback in (("reweighting", "DuplicateReweighting"), ("penalty", "LIDPenaltyController"),
                           ("early_stopping", "MemorizationEarlyStopping")):
        assert callback in rows[name]["hook_s_median"] and callback in rows["all"]["hook_s_median"]
    assert rows["monitor"]["same_weights_as_plain"] is True  # a check is side-effect free

    goal = result["goal_monitor"]
    for key in ("median", "min", "paired", "hooks_over_plain", "later_check_with_audit_s",
                "steps_between_checks_for_3_percent"):
        assert is_finite_positive(goal[key]), key
    for key in ("met_median", "met_min", "met_hooks"):  # goals are reported, not asserted
        assert isinstance(goal[key], bool)

    for text in ("command:", "seed", "machine:", "med/plain", "Seconds per check", "goal: monitor"):
        assert text in printed, text
