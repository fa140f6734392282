"""Matplotlib figures for run folders, drawn on Agg canvases of their own.

No pyplot and no global backend: importing prunekit never changes the user's matplotlib
settings, and a figure lives only inside the call that saves it.

Legends never cover data: with more than one series the legend goes outside the axes, to
their right, and the figure widens to make room for it.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 110
FONT = 10


def _finish(fig, ax, path: Path, *, legend: bool, title: str) -> Path:
    """Title, an outside legend (when asked), and the saved figure."""
    if title:
        ax.set_title(title, fontsize=FONT + 1)
    if legend:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=FONT, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return Path(path)


def _figure(width: float, height: float):
    """A figure on its own Agg canvas (no pyplot state), and its axes."""
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def line_plot(path: Path, x_label: str, y_label: str, series: dict[str, tuple[list, list]], *,
              title: str = "", x_log: bool = False, errors: dict[str, list] | None = None) -> Path:
    """One line per series name → (xs, ys); optional error bars per series."""
    fig, ax = _figure(6.4 + (2.2 if len(series) > 1 else 0), 4.2)
    for name, (xs, ys) in series.items():
        err = (errors or {}).get(name)
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=name)
    ax.set_xlabel(x_label, fontsize=FONT)
    ax.set_ylabel(y_label, fontsize=FONT)
    if x_log:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    return _finish(fig, ax, path, legend=len(series) > 1, title=title)


def grouped_bars(path: Path, categories: list[str], groups: dict[str, list[float]], *, y_label: str,
                 title: str = "") -> Path:
    """Bars per category, one colour per group (e.g. per-layer sparsity per round)."""
    width_in = max(6.4, 0.35 * len(categories) * max(1, len(groups)))
    fig, ax = _figure(width_in + (2.2 if len(groups) > 1 else 0), 4.2)
    width = 0.8 / max(1, len(groups))
    for i, (name, values) in enumerate(groups.items()):
        ax.bar([c + i * width for c in range(len(categories))], values, width, label=name)
    ax.set_xticks([c + 0.4 - width / 2 for c in range(len(categories))])
    ax.set_xticklabels(categories, rotation=30, ha="right", fontsize=FONT - 1)
    ax.set_ylabel(y_label, fontsize=FONT)
    ax.grid(axis="y", alpha=0.3)
    return _finish(fig, ax, path, legend=len(groups) > 1, title=title)
