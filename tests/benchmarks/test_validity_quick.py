"""Smoke test of the validity suite: four small cells are trained, measured and judged, with the
leave-one-family-out calibration choosing each family's constants on the others."""

import math


def test_quick_suite_judges_every_cell_and_calibrates_without_the_family(run_quick, tmp_path):
    script, result, printed, status = run_quick("validity")
    assert status == 0
    cells = result["defaults"]
    assert set(cells) == {"mix10/mlp/oversample", "mix10/mlp_fm/duplicates", "mix10/oracle/generalizing",
                          "digits8/mlp/conditional"}
    for name, m in cells.items():
        assert m["seeds"] == 1 and m["points"] > 0
        assert 0.0 <= m["labelled"] <= 1.0 and 0.0 <= m["false_runs"] <= 1.0
    assert cells["mix10/mlp/oversample"]["positives"] == 8 and math.isfinite(cells["mix10/mlp/oversample"]["auroc"])
    assert cells["mix10/mlp_fm/duplicates"]["positives"] == 8 * 17
    assert cells["mix10/oracle/generalizing"]["positives"] == 0
    per_family = result["lofo"]["per_family"]
    assert set(per_family) == {"oversampling", "duplicates", "generalizing", "conditional"}
    for family, chosen in per_family.items():
        assert set(chosen["constants"]) == set(script.CONSTANTS)
        assert all(script.FAMILY_OF[m["family"]] == family for m in chosen["cells"].values())
    assert "Leave one family out" in printed and "| cell |" in printed
    # the runs were written where the JSON is, one per cell and seed, and a second call reuses them
    assert len(list((tmp_path / "validity-quick").glob("*.pt"))) == 4


def test_objective_rewards_f1_and_punishes_false_labels_on_generalizing_runs(load_benchmark):
    script = load_benchmark("validity")
    good = {"positives": 8, "precision": 1.0, "recall": 1.0, "family": "oversample", "false_runs": 1.0}
    half = {"positives": 8, "precision": 1.0, "recall": 1 / 3, "family": "oversample", "false_runs": 1.0}
    clean = {"positives": 0, "family": "generalizing", "false_runs": 0.0}
    noisy = {"positives": 0, "family": "generalizing", "false_runs": 0.55}
    assert script.objective([good, clean]) == 1.0
    assert script.objective([half, clean]) == 0.5
    assert script.objective([good, noisy]) == 1.0 - 2 * 0.5


def test_the_cached_judge_agrees_with_calibrated_labels(load_benchmark):
    import torch
    from mmh_train.verdicts import calibrated_labels

    script = load_benchmark("validity")
    g = torch.Generator().manual_seed(0)
    run = {"lid_train": 4 + torch.randn(3, 60, generator=g), "lid_heldout": 4 + torch.randn(3, 40, generator=g),
           "train_view": torch.randn(60, 5, generator=g), "heldout_view": torch.randn(40, 5, generator=g),
           "duplicated": torch.arange(60) < 4}
    run["lid_train"][:, 10:20] = 0.5
    for constants in ({}, script.OLD_RULE, {"standardise": "global", "combine": "max", "min_drop": 0.3}):
        judged = script.judge_run(run, constants)
        direct = calibrated_labels(run["lid_train"], run["lid_heldout"], run["train_view"], run["heldout_view"],
                                   duplicated=run["duplicated"], **constants)
        assert torch.equal(judged["label"], direct.label)
        assert int((judged["label"][10:20] != 0).sum()) >= 8
