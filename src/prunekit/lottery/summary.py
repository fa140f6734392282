"""A single lottery run's table (table.md) and plot (plots/accuracy_vs_density.png)."""

from __future__ import annotations

from ..plots import line_plot
from ..runs import RunDir
from ..table import format_table

COLUMNS = ["round", "variant", "density", "accuracy", "test_loss", "es_step", "es_accuracy", "train_loss"]


def write_summary(run: RunDir) -> str:
    rows = run.rows()
    text = format_table(rows, COLUMNS) if rows else "(no rounds yet)"
    (run.path / "table.md").write_text(text + "\n")
    pruned = [r for r in rows if r["round"] > 0]
    if pruned:
        dense = [r["accuracy"] for r in rows if r["variant"] == "dense"]
        series = {}
        for variant in dict.fromkeys(r["variant"] for r in pruned):
            chosen = [r for r in pruned if r["variant"] == variant]
            series[variant] = ([100 * r["density"] for r in chosen], [r["accuracy"] for r in chosen])
        xs = series["ticket"][0] if "ticket" in series else next(iter(series.values()))[0]
        if dense:
            series["dense"] = (xs, dense * len(xs))
        line_plot(run.plot_path("accuracy_vs_density.png"), "weights left (%)", "test accuracy", series,
                  x_log=True, title="Iterative magnitude pruning with rewinding")
    return text
