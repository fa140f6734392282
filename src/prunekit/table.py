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
