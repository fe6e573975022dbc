"""A run's human-readable report: plots of LID_θ over training, LID_θ vs LID*, samples and copies.

    from mmh_train.report import RunRecord, VariantResult, write_report, summary_text

    record = RunRecord(recipe="toy", kind="vectors", config=cfg, train_x=x, heldout_x=xh,
                       variants=[baseline, remedied], duplicated=dup, machine="2-core CPU",
                       command="python recipes/toy.py", audit_csv="mmh_audit.csv")
    write_report(run_dir, record)      # plots/*.png, report.md, report.html, summary.txt
    print(summary_text(record))

    write_guard_report(run_dir, guard, sampler=sample_fn, train_data=x, heldout_data=xh)   # plain loops, one call

Matplotlib is used through :class:`matplotlib.figure.Figure` and the Agg canvas only (no pyplot, no
global backend change), so the report works headless. This package is not imported by ``mmh_train``
itself; importing it is what pulls in matplotlib.
"""

from .plots import figure_png, plot_lid_over_training, plot_lid_scatter, plot_samples
from .record import (
    COPY_THRESHOLD,
    RecordError,
    ReportTable,
    RunRecord,
    VariantResult,
    forward_fill,
    label_counts,
    final_lid,
    last_lid,
    top_memorized,
    validate_record,
)
from .write import PLOT_FILES, SUMMARY_MAX_LINES, summary_text, write_report
from .from_guard import copy_control, guard_notes, variant_from_monitor, write_guard_report

__all__ = [
    "RunRecord", "ReportTable", "VariantResult", "RecordError", "validate_record", "write_report", "summary_text",
    "plot_lid_over_training", "plot_lid_scatter", "plot_samples", "figure_png",
    "final_lid", "forward_fill", "last_lid", "label_counts", "top_memorized",
    "COPY_THRESHOLD", "PLOT_FILES", "SUMMARY_MAX_LINES",
    "copy_control", "guard_notes", "variant_from_monitor", "write_guard_report",
]
