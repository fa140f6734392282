"""Every ```python block of README.md and docs/*.md runs, so a snippet can never rot.

Each file's blocks run in order in one namespace (a later block may use an earlier block's
names), in a fresh temporary directory. Two markers, HTML comments on the line right above a
block (invisible on GitHub), change how it runs:

    <!-- snippet: skip — why this block cannot run here -->
    <!-- snippet-small: steps=3000 => steps=200 -->

`skip` needs its reason. `snippet-small` replaces text of the block when the environment
variable PRUNEKIT_SNIPPET_SMALL is not "0" — the default suite runs the small settings; the
`slow` suite runs every block exactly as written. A replacement that no longer matches fails.
"""

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*snippet(?P<kind>[-\w]*)\s*:\s*(?P<body>.*?)\s*-->\s*$")


class SnippetError(Exception):
    pass


@dataclass
class Block:
    path: Path
    line: int                      # line number of the block's first code line
    code: str
    skip: str | None = None
    small: list[tuple[str, str]] = field(default_factory=list)

    def source(self, small: bool) -> str:
        code = self.code
        if small:
            for old, new in self.small:
                if old not in code:
                    raise SnippetError(f"{self.where()}: snippet-small replaces {old!r}, which is not in the block")
                code = code.replace(old, new)
        return "\n" * (self.line - 1) + code  # tracebacks then point at the Markdown file's lines

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path}:{self.line}"


def python_blocks(path: Path) -> list[Block]:
    """The ```python blocks of a Markdown file, with the markers right above each."""
    lines = path.read_text().splitlines()
    blocks, markers, i = [], [], 0
    while i < len(lines):
        marker, fence = MARKER.match(lines[i]), FENCE.match(lines[i])
        if marker:
            markers.append((i + 1, marker["kind"], marker["body"]))
        elif fence:
            end = next((j for j in range(i + 1, len(lines)) if re.match(r"^\s*```\s*$", lines[j])), None)
            if end is None:
                raise SnippetError(f"{path}:{i + 1}: code block never closed")
            if fence[2] == "python":
                blocks.append(_block(path, i + 2, "\n".join(lines[i + 1:end]), markers))
            elif markers:
                raise SnippetError(f"{path}:{markers[0][0]}: snippet marker above a non-python block")
            markers, i = [], end
        elif lines[i].strip() and markers:
            raise SnippetError(f"{path}:{markers[0][0]}: a snippet marker must be right above its ```python block")
        i += 1
    return blocks


def _block(path: Path, line: int, code: str, markers) -> Block:
    block = Block(path, line, code)
    for number, kind, body in markers:
        if kind == "" and body.startswith("skip"):
            reason = body[len("skip"):].strip(" —–-:")
            if not reason:
                raise SnippetError(f"{path}:{number}: 'snippet: skip' needs a reason, e.g. "
                                   "<!-- snippet: skip — needs a GPU -->")
            block.skip = reason
        elif kind == "-small" and "=>" in body:
            old, new = (part.strip() for part in body.split("=>", 1))
            block.small.append((old, new))
        else:
            raise SnippetError(f"{path}:{number}: unknown snippet marker; use 'snippet: skip — reason' or "
                               "'snippet-small: old => new'")
    return block


def run_file(path: Path, small: bool) -> list[Block]:
    """Execute the file's blocks in order in one namespace (cwd: wherever the caller is)."""
    namespace = {"__name__": f"snippets_of_{path.stem}"}
    ran = []
    for block in python_blocks(path):
        if block.skip:
            continue
        exec(compile(block.source(small), str(path), "exec"), namespace)  # noqa: S102 (the repository's own docs)
        ran.append(block)
    return ran


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _small() -> bool:
    return os.environ.get("PRUNEKIT_SNIPPET_SMALL", "1") != "0"


# Documents whose snippets are known to fail, with the reason: reported here rather than hidden.
# The quick suite does not re-run them; the slow suite runs them as written, strictly, so the day
# one is fixed its entry must go.
KNOWN_FAILURES: dict[str, str] = {}


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _documents(**failing) -> list:
    """Every document as a parameter, those with known failures marked xfail(**failing)."""
    return [pytest.param(path, id=_name(path), marks=[pytest.mark.xfail(reason=KNOWN_FAILURES[_name(path)],
                                                                         **failing)]
                         if _name(path) in KNOWN_FAILURES else []) for path in documents()]


@pytest.mark.parametrize("path", _documents(run=False))
def test_every_python_block_runs(path, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    run_file(path, _small())


@pytest.mark.slow
@pytest.mark.parametrize("path", _documents(strict=True))
def test_every_python_block_runs_as_written(path, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    run_file(path, small=False)


def test_markers_are_checked(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("text\n<!-- snippet-small: n = 1000 => n = 10 -->\n```python\nn = 1000\nassert n == 10\n```\n"
                   "<!-- snippet: skip — needs a GPU -->\n```python\nraise SystemExit\n```\n")
    blocks = python_blocks(doc)
    assert [b.line for b in blocks] == [4, 9] and blocks[1].skip == "needs a GPU"
    assert [b.where() for b in run_file(doc, small=True)] == [blocks[0].where()]
    with pytest.raises(AssertionError):
        run_file(doc, small=False)
    for bad, message in [("<!-- snippet: skip -->\n```python\npass\n```\n", "needs a reason"),
                         ("<!-- snippet-small: x => y -->\n```python\npass\n```\n", "not in the block"),
                         ("<!-- snippet: run -->\n```python\npass\n```\n", "unknown snippet marker"),
                         ("<!-- snippet: skip — x -->\ntext\n```python\npass\n```\n", "right above"),
                         ("```python\npass\n", "never closed")]:
        doc.write_text(bad)
        with pytest.raises(SnippetError, match=message):
            run_file(doc, small=True)


def test_a_failing_block_points_at_its_markdown_line(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("# title\n\n```python\nx = 1\ny = undefined_name\n```\n")
    with pytest.raises(NameError) as info:
        run_file(doc, small=True)
    assert info.traceback[-1].lineno + 1 == 5 and str(doc) in str(info.traceback[-1].path)
