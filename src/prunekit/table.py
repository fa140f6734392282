"""Plain-text tables for terminals and closing notes (Markdown-compatible)."""

from __future__ import annotations


def format_cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"
    return str(value)


def format_table(rows: list[dict], columns: list[str] | None = None, headers: dict | None = None) -> str:
    """A Markdown table of `rows` (dicts), in `columns` order (default: the first row's keys)."""
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])
    headers = headers or {}
    cells = [[headers.get(c, c) for c in columns]] + [[format_cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["| " + " | ".join(v.ljust(w) for v, w in zip(line, widths)) + " |" for line in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


class RowPrinter:
    """A table printed one row at a time (a long run's console): the header once, then each
    row as it arrives, in columns wide enough for the header or `width` characters."""

    def __init__(self, columns: list[str], width: int = 9):
        self.columns = columns
        self.widths = [max(len(c), width) for c in columns]

    def header(self) -> str:
        names = "| " + " | ".join(c.ljust(w) for c, w in zip(self.columns, self.widths)) + " |"
        return names + "\n|" + "|".join("-" * (w + 2) for w in self.widths) + "|"

    def row(self, row: dict) -> str:
        cells = ("" if row.get(c) is None else format_cell(row[c]) for c in self.columns)
        return "| " + " | ".join(cell.ljust(w) for cell, w in zip(cells, self.widths)) + " |"
