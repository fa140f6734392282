"""Matplotlib figures for run folders (headless Agg backend, closed after saving)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)


def line_plot(path: Path, x_label: str, y_label: str, series: dict[str, tuple[list, list]], *,
              title: str = "", x_log: bool = False, errors: dict[str, list] | None = None) -> Path:
    """One line per series name → (xs, ys); optional error bars per series."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    try:
        for name, (xs, ys) in series.items():
            err = (errors or {}).get(name)
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=name)
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        if x_log:
            ax.set_xscale("log")
        if title:
            ax.set_title(title)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return Path(path)


def grouped_bars(path: Path, categories: list[str], groups: dict[str, list[float]], *, y_label: str,
                 title: str = "") -> Path:
    """Bars per category, one colour per group (e.g. per-layer sparsity per round)."""
    fig, ax = plt.subplots(figsize=(max(6.4, 0.6 * len(categories) * max(1, len(groups)) / 2), 4.2))
    try:
        width = 0.8 / max(1, len(groups))
        for i, (name, values) in enumerate(groups.items()):
            ax.bar([c + i * width for c in range(len(categories))], values, width, label=name)
        ax.set_xticks([c + 0.4 - width / 2 for c in range(len(categories))])
        ax.set_xticklabels(categories, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(y_label)
        if title:
            ax.set_title(title)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return Path(path)
