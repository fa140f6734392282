"""A self-contained HTML report: headings, paragraphs, tables and figures, in order.

    report = Report("prunekit demo")
    report.heading("Results"); report.table(rows, columns); report.image("plots/acc.png", "caption")
    report.save(run.path / "report.html")

Images are referenced relative to the report, so a run folder can be moved or zipped whole.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from .table import format_cell

_STYLE = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:90%}
code{background:#f5f5f5;padding:1px 4px}"""


class Report:
    def __init__(self, title: str):
        self.title = title
        self._parts: list[str] = []

    def heading(self, text: str, level: int = 2) -> Report:
        self._parts.append(f"<h{level}>{html.escape(text)}</h{level}>")
        return self

    def text(self, text: str) -> Report:
        self._parts.append(f"<p>{html.escape(text)}</p>")
        return self

    def table(self, rows: list[dict], columns: list[str] | None = None, table_id: str | None = None) -> Report:
        if not rows:
            return self
        columns = columns or list(rows[0])
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(format_cell(r.get(c, '')))}</td>" for c in columns) + "</tr>"
                       for r in rows)
        ident = f' id="{html.escape(table_id)}"' if table_id else ""
        self._parts.append(f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        return self

    def image(self, path: str | os.PathLike, caption: str = "") -> Report:
        self._parts.append(f'<figure><img src="{html.escape(str(path))}" alt="{html.escape(caption)}">'
                           f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        return self

    def html(self) -> str:
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{_STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>"
                + "\n".join(self._parts) + "</body></html>")

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.html())
        os.replace(tmp, path)
        return path
