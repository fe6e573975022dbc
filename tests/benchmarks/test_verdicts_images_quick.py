"""Smoke test of benchmarks/verdicts_images.py: a closed-form partial memorizer of upsampled digit images is
labelled as built (its memorized images OD, or DD where the data duplicate them), and its π = 0 control gets
no label at all."""


def test_quick_run_labels_the_memorized_images_and_nothing_in_the_control(run_quick):
    script, result, printed, status = run_quick("verdicts_images")
    assert status == 0 and result["quick"] is True
    model = [r for r in result["rows"] if r["variant"] == "model"]
    control = [r for r in result["rows"] if r["variant"] == "control"]
    assert len(model) == len(control) == 1
    assert result["control_false_labels"] == 0
    row = model[0]
    assert row["found_duplicates"] == row["true_duplicates"]  # exact copies found in the 16×16 view
    assert row["dd_recall"] == 1.0 and row["od_recall"] == 1.0 and row["auroc"] > 0.95
    assert "pooled over seeds" in printed and "goal" in printed
