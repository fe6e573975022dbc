"""Smoke test of benchmarks/estimators.py: the quick run writes every row, ratio and key, with finite times.

No timing goal is asserted here: timings on shared CPUs are noise, and they never belong in tests.
"""




def test_quick_run_writes_every_row_and_ratio(run_quick, is_finite_positive):
    script, result, printed, _ = run_quick("estimators", "--device", "cpu")
    for key in ("command", "seed", "machine", "config", "goals", "models", "rows", "ratios", "diagnostics",
                "fixed_cost", "notes", "gpu", "elapsed_s"):
        assert key in result, key
    assert result["quick"] is True and result["seed"] == 0
    assert "--quick" in result["command"]
    for key in ("date", "platform", "cpu_model", "torch", "torch_threads"):
        assert key in result["machine"], key
    assert result["machine"]["torch_threads"] == 1
    assert result["gpu"]["ran"] is False and result["gpu"]["reason"]

    models = {m["name"]: m for m in result["models"]}
    assert set(models) == {"mlp-d8", "unet-8x8"}
    assert models["mlp-d8"]["dim"] == 8 and models["unet-8x8"]["dim"] == 64

    rows = {(r["model"], r["estimator"]): r for r in result["rows"]}
    common = {"forward", "vjp_by_hand", "flipd_1probe_reverse", "hutchinson_8", "flipd_exact", "normal_bundle"}
    assert {e for m, e in rows if m == "mlp-d8"} == common | {"flipd_1probe_forward"}
    assert {e for m, e in rows if m == "unet-8x8"} == common
    for row in rows.values():
        assert row["device"] == "cpu"
        assert row["batch"] >= 1 and row["repeats"] >= 1 and len(row["times_s"]) == row["repeats"]
        for key in ("median_s_per_point", "min_s_per_point", "median_s_per_call", "min_s_per_call"):
            assert is_finite_positive(row[key]), (row["model"], row["estimator"], key, row[key])
        assert row["min_s_per_point"] <= row["median_s_per_point"]

    ratios = {(q["model"], q["ratio"]): q for q in result["ratios"]}
    for model in models:
        for name in ("flipd1_over_forward", "flipd1_over_vjp_by_hand", "exact_over_hutchinson1",
                     "normal_bundle_over_flipd1"):
            assert (model, name) in ratios, (model, name)
    assert ("mlp-d8", "forward_mode_over_reverse_mode") in ratios
    for q in ratios.values():
        assert is_finite_positive(q["median"]) and is_finite_positive(q["min"]), q
    for name in ("flipd1_over_forward", "normal_bundle_over_flipd1"):  # goals are reported, not asserted
        assert isinstance(ratios[("mlp-d8", name)]["meets_goal_median"], bool)

    (diag,) = result["diagnostics"]
    assert diag["model"] == "mlp-d8" and is_finite_positive(diag["flipd1_over_forward_median"])
    (fixed,) = result["fixed_cost"]
    for key in ("forward", "vjp_by_hand", "flipd_1probe_reverse", "flipd_1probe_forward"):
        assert is_finite_positive(fixed[f"{key}_median_s_per_call"]) and is_finite_positive(fixed[f"{key}_min_s_per_call"])

    for text in ("command:", "seed", "median ms/pt", "FLIPD(1) / forward", "normal bundle / FLIPD(1)",
                 "GPU part skipped"):
        assert text in printed, text
