"""The activation-sparsity section of a run's report: what an EIE-style engine would skip.

    rows = activation_rows(model, dataset.test)          # at the end of a run, on its final model
    run.write_json("activations.json", rows)
    add_activation_section(report, run.read_json("activations.json"))   # in write_report

For every Linear / Conv layer of the final (pruned) model, over the data given: the fraction of
its inputs that are exactly zero, and the FLOPs per example of dense, weight-sparse,
activation-sparse and weight-and-activation-sparse (EIE) execution, with the share the last one
skips (prunekit.applications.activation_sparsity computes them). The rows are plain JSON values,
so a report rebuilt from the run folder needs no model.
"""

from __future__ import annotations

from ..applications.activation_sparsity import activation_sparsity
from ..report import Report

COLUMNS = ["layer", "type", "input zeros", "dense FLOPs", "weight-sparse FLOPs", "activation-sparse FLOPs",
           "both (EIE) FLOPs", "skipped"]
TITLE = "Activation sparsity"
CAPTION = ("Per layer over the test data: the fraction of exactly zero inputs, and the FLOPs per example that "
           "dense, weight-sparse, activation-sparse and EIE-style execution (a multiply only where the weight "
           "and the activation are both non-zero) perform; 'skipped' is the share of the dense FLOPs EIE skips.")


def activation_rows(model, data, *, batch_size: int = 500) -> list[dict]:
    """The section's rows for `model` over `data` (a tensor, a TensorDataset or batches): fractions
    rounded to 4 digits, FLOPs to whole numbers; the last row is the total."""
    rows = []
    for row in activation_sparsity(model, data, batch_size=batch_size):
        rows.append({key: (round(value, 4) if key in ("input zeros", "skipped") else
                           round(value) if isinstance(value, float) else value) for key, value in row.items()})
    return rows


def add_activation_section(report: Report, rows: list[dict]) -> Report:
    """Append the heading and table (nothing when `rows` is empty, e.g. a run from before)."""
    if not rows:
        return report
    return report.heading(TITLE).table(rows, COLUMNS, table_id="activation-sparsity", caption=CAPTION)
