"""A self-contained HTML report: a headline, headings, tables, figures, code and an
environment footer, in order.

    report = Report("prunekit demo")
    report.headline("12.3× fewer non-zeros, −0.2 pt", [Card("12.3×", "fewer non-zeros", key="nonzero_ratio")])
    report.heading("Results"); report.table(rows, columns); report.image("plots/acc.png", "caption")
    report.code(yaml_text, "yaml"); report.footer(environment())
    report.save(run.path / "report.html")

Images are referenced relative to the report, so a run folder can be moved or zipped whole.
Tables fit a 1280-pixel window: headers wrap at underscores and spaces, and a table too wide
for a narrow window scrolls inside its own box instead of widening the page. Headline cards
carry their metric's key and exact value (data-key, data-value) beside the rounded text, so a
reader — or a test — can trace every number to metrics.json.
"""

from __future__ import annotations

import html
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .files import replacing
from .table import format_cell

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1180px;margin:1.5em auto;
  padding:0 16px;color:#222;line-height:1.45}
h1{font-size:26px;margin-bottom:.2em}h2{font-size:20px;margin-top:1.6em;border-bottom:1px solid #e4e4e4}
.lead{font-size:19px;font-weight:600;margin:.4em 0 .8em}
.headline{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:12px;margin:.6em 0 1em}
.card{border:1px solid #dcdcdc;border-radius:8px;padding:10px 14px;background:#fafafa}
.card .value{font-size:28px;font-weight:650;white-space:nowrap}.card .label{font-size:15px}
.card .detail{font-size:13px;color:#555;margin-top:2px}
.table-wrap{max-width:100%;overflow-x:auto}
table{border-collapse:collapse;margin:.5em 0 1.2em;font-size:13px}
th,td{border:1px solid #d4d4d4;padding:3px 7px}
th{background:#f3f3f3;vertical-align:bottom;text-align:center;font-weight:600;min-width:3.5em}
td{white-space:nowrap}td.num{text-align:right;font-variant-numeric:tabular-nums}td.text{text-align:left}
caption{caption-side:bottom;text-align:left;color:#555;font-size:12px;padding-top:3px}
figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:90%}
pre{background:#f6f8fa;border:1px solid #e4e4e4;border-radius:6px;padding:10px 12px;overflow-x:auto;font-size:13px}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
p code{background:#f5f5f5;padding:1px 4px}
footer{margin-top:2.5em;padding-top:.6em;border-top:1px solid #ddd;color:#555;font-size:12px}
footer dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:0}footer dt{font-weight:600}
"""


@dataclass(frozen=True)
class Card:
    """One headline number: its text ("12.3×"), what it means, a detail line, and the metric
    key and exact value it was rounded from."""
    value: str
    label: str
    detail: str = ""
    key: str | None = None
    raw: float | None = None


def _header(name: str) -> str:
    """Column names wrap after underscores, so wide tables fit without cutting them off."""
    return html.escape(str(name)).replace("_", "_<wbr>")


def _cell_html(value) -> str:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f'<td class="{"num" if numeric else "text"}">{html.escape(format_cell(value))}</td>'


class Report:
    def __init__(self, title: str):
        self.title = title
        self._parts: list[str] = []
        self._footer = ""

    def heading(self, text: str, level: int = 2) -> Report:
        self._parts.append(f"<h{level}>{html.escape(text)}</h{level}>")
        return self

    def text(self, text: str) -> Report:
        self._parts.append(f"<p>{html.escape(text)}</p>")
        return self

    def headline(self, sentence: str, cards: list[Card] = ()) -> Report:
        """The one-line result, then a row of cards with the numbers behind it."""
        blocks = []
        for card in cards:
            data = (f' data-key="{html.escape(card.key)}"' if card.key else "") + \
                   (f' data-value="{card.raw!r}"' if card.raw is not None else "")
            detail = f'<div class="detail">{html.escape(card.detail)}</div>' if card.detail else ""
            blocks.append(f'<div class="card"{data}><div class="value">{html.escape(card.value)}</div>'
                          f'<div class="label">{html.escape(card.label)}</div>{detail}</div>')
        self._parts.append(f'<p class="lead" id="headline">{html.escape(sentence)}</p>'
                           f'<div class="headline">{"".join(blocks)}</div>')
        return self

    def table(self, rows: list[dict], columns: list[str] | None = None, table_id: str | None = None,
              caption: str = "") -> Report:
        if not rows:
            return self
        columns = columns or list(rows[0])
        head = "".join(f"<th>{_header(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(_cell_html(r.get(c, "")) for c in columns) + "</tr>" for r in rows)
        ident = f' id="{html.escape(table_id)}"' if table_id else ""
        note = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        self._parts.append(f'<div class="table-wrap"><table{ident}>{note}<thead><tr>{head}</tr></thead>'
                           f"<tbody>{body}</tbody></table></div>")
        return self

    def image(self, path: str | os.PathLike, caption: str = "") -> Report:
        self._parts.append(f'<figure><img src="{html.escape(str(path))}" alt="{html.escape(caption)}">'
                           f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        return self

    def code(self, text: str, language: str = "") -> Report:
        """A preformatted block, e.g. the recipe as YAML."""
        lang = f' class="language-{html.escape(language)}"' if language else ""
        self._parts.append(f"<pre><code{lang}>{html.escape(text.rstrip())}</code></pre>")
        return self

    def footer(self, info: Mapping[str, object]) -> Report:
        """Key/value lines at the bottom of the page (see `environment()`)."""
        items = "".join(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>" for k, v in info.items())
        self._footer = f"<footer><dl>{items}</dl></footer>"
        return self

    def html(self) -> str:
        return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
                f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
                f"<link rel='icon' href='data:,'><title>{html.escape(self.title)}</title>"
                f"<style>{_STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>\n"
                + "\n".join(self._parts) + self._footer + "</body></html>")

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        with replacing(path) as tmp:
            tmp.write_text(self.html())
        return path


def cpu_name() -> str:
    """The processor's model name (Linux /proc/cpuinfo), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def environment(threads: int | None = None) -> dict[str, str]:
    """What the numbers were measured on: library versions, threads, processor, system."""
    import torch

    import prunekit

    return {"prunekit": prunekit.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "torch threads": str(threads if threads is not None else torch.get_num_threads()),
            "CPU": f"{cpu_name()} ({os.cpu_count()} logical cores)", "system": platform.platform()}
