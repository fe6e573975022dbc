"""Smoke test of benchmarks/detection.py: the quick run writes every data set × scenario × score row with
sane metrics, the DD/OD table and the goal status, and leaves the global RNG alone.

No goal number is asserted: a few hundred training steps do not memorize, and the goals are the full run's.
"""

import math



def _unit_or_nan(value) -> bool:
    return isinstance(value, float) and (math.isnan(value) or 0.0 <= value <= 1.0)


def test_quick_run_writes_every_row(run_quick):
    script, result, printed, status = run_quick("detection")
    assert status == 0
    for key in ("benchmark", "command", "seeds", "machine", "code", "config", "quick", "goals", "headline", "rows",
                "runs", "dd_od", "goal_status", "points", "elapsed_s"):
        assert key in result, key
    assert result["quick"] is True and result["seeds"] == [0] and "--quick" in result["command"]
    assert result["headline"] in script.MMH_SCORES

    datasets = ("toy", "digits", "digits32")
    every = {(r["dataset"], r["scenario"], r["score"]): r for r in result["rows"]}
    rows = {key: r for key, r in every.items() if "|" not in key[1]}
    pieces = {key: r for key, r in every.items() if "|" in key[1]}  # toy only: within each piece of the mixture
    assert pieces and {key[0] for key in pieces} == {"toy"}
    assert {key[1].split("|")[0] for key in pieces} == {"few", "mid", "duplicated"}
    scenario_only = {"pooled": {"from_few_run"}, "duplicated": {"is_duplicated"}}  # context scores of one scenario
    assert set(rows) == {(d, s, k) for d in datasets for s in script.SCENARIOS
                         for k in (*script.SCORES, *scenario_only.get(s, ()))}
    for row in rows.values():
        assert row["kind"] == ("mmh" if row["score"] in script.MMH_SCORES else
                               "baseline" if row["score"] in script.BASELINE_SCORES else "context")
        assert row["headline"] == (row["score"] == result["headline"])
        assert 0 <= row["n_copied"] <= row["n"] and row["n"] > 0
        assert _unit_or_nan(row["auroc"]) and _unit_or_nan(row["tpr_at_1pct_fpr"]), row
        if 0 < row["n_copied"] < row["n"]:  # two classes: AUROC is a number
            assert not math.isnan(row["auroc"]), row
        else:
            assert math.isnan(row["auroc"]), row
    for d in datasets:
        few, many = rows[(d, "few", "neg_loss")], rows[(d, "many", "neg_loss")]
        pooled = rows[(d, "pooled", "neg_loss")]
        assert pooled["n"] == few["n"] + many["n"] and pooled["n_copied"] == few["n_copied"] + many["n_copied"]
        for name in ("few", "many", "mid", "duplicated", "conditional"):
            run = result["runs"][d][name]
            assert run["n"] > 0 and 0.0 <= run["sample_copy_rate"] <= 1.0 and math.isfinite(run["lid_train_mean"])
            assert 0.0 <= run["control_copy_rate"] <= 1.0 and run["n_control"] > 0 and run["n_samples"] > 0
            assert run["excess_copy_rate"] == run["sample_copy_rate"] - run["control_copy_rate"]
        assert 0 <= result["runs"][d]["conditional"]["unique_copied"]

    for d in datasets:
        assert set(result["points"][d]) == {"few", "many", "mid", "duplicated", "conditional"}
        for name, record in result["points"][d].items():
            n = result["runs"][d][name]["n"] if name != "duplicated" else rows[(d, "duplicated", "neg_loss")]["n"]
            assert all(len(record[k]) == n for k in ("copied", "label", "lid", *script.SCORES)), (d, name)

    dd_od = {q["dataset"]: q for q in result["dd_od"]}
    assert set(dd_od) == set(datasets)
    for q in dd_od.values():
        assert q["n_duplicated"] > 0 and q["truth_dd"] <= q["n_duplicated"]
        for key in ("dd_precision", "dd_recall", "od_precision", "od_recall"):
            assert _unit_or_nan(q[key]), (key, q[key])
    assert len(result["goal_status"]) == len(datasets) * (len(script.SCENARIOS) + 1)
    assert all(g["met"] in (True, False, None) for g in result["goal_status"])

    for text in ("command:", "seeds:", "AUROC", "TPR@1%FPR", "DD prec", "OD rec", "goals", "toy/pooled",
                 "digits/conditional", "digits32/few"):
        assert text in printed, text
