"""The demo's report in a real browser: headless Chromium renders it at 1280 px to a PNG.

Checked: the page loads without console errors or failed resources, no table is cut off
horizontally, every image loads, and the headline numbers are the ones in metrics.json.
Chromium is driven through the DevTools protocol over a pipe (--remote-debugging-pipe:
JSON messages separated by NUL bytes on file descriptors 3 and 4), so no extra package is
needed. Skipped with a reason where no Chromium is installed (`make test` installs it).
"""

import base64
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import time

import pytest

from prunekit.report import Report
from prunekit.workflows.demo import DemoSettings, run_demo

pytestmark = pytest.mark.usefixtures("one_thread")

BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(name)), None)
needs_browser = pytest.mark.skipif(BROWSER is None, reason="no Chromium installed (make test installs the Debian "
                                                           "package 'chromium')")
WIDTH = 1280


class Browser:
    """A headless Chromium driven over the DevTools protocol on a pipe."""

    def __init__(self, profile_dir, timeout: float = 60.0):
        self.timeout = timeout
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()

        def descriptors_3_and_4():  # the protocol's fixed places in the child
            # copies above 9 first, so that neither end already sits on 3 or 4 when the other moves
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (commands_read, replies_write)]
            for fd, place in zip(high, (3, 4)):
                os.dup2(fd, place)  # inheritable: survives the exec

        self.process = subprocess.Popen(
            [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--no-default-browser-check", "--remote-debugging-pipe", f"--user-data-dir={profile_dir}",
             f"--window-size={WIDTH},900", "about:blank"],
            # close_fds=False: the duplicates on 3 and 4 must survive into the browser; every other
            # descriptor of ours is non-inheritable (PEP 446) and closes anyway
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=False, preexec_fn=descriptors_3_and_4)
        os.close(commands_read)
        os.close(replies_write)
        self._buffer, self._next_id, self.events = b"", 0, []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._replies], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._replies, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, event: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            for i, message in enumerate(self.events):
                if message.get("method") == event:
                    return self.events.pop(i)
            self.events.append(self._read_message(deadline))

    def close(self):
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._commands)
        os.close(self._replies)


PAGE_FACTS = """JSON.stringify({
  pageWidth: document.documentElement.scrollWidth, viewport: window.innerWidth,
  cutTables: [...document.querySelectorAll('.table-wrap')].filter(w => w.scrollWidth > w.clientWidth + 1)
                 .map(w => (w.querySelector('table') || {}).id || '?'),
  brokenImages: [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src),
  headline: (document.getElementById('headline') || {}).textContent,
  cards: [...document.querySelectorAll('.card')].map(c => ({key: c.dataset.key, value: c.dataset.value,
                                                             text: c.querySelector('.value').textContent})),
  code: [...document.querySelectorAll('pre code')].map(c => c.className),
  footer: (document.querySelector('footer') || {}).textContent})"""


def render(html_path, png_path, profile_dir) -> tuple[dict, list[str]]:
    """(facts about the page, console errors), with a full-page screenshot written to png_path."""
    browser = Browser(profile_dir)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Emulation.setDeviceMetricsOverride",
                     {"width": WIDTH, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=session)
        browser.send("Page.navigate", {"url": f"file://{os.path.abspath(html_path)}"}, session=session)
        browser.wait_for("Page.loadEventFired")
        facts = json.loads(browser.send("Runtime.evaluate", {"expression": PAGE_FACTS, "returnByValue": True},
                                        session=session)["result"]["value"])
        height = browser.send("Page.getLayoutMetrics", session=session)["cssContentSize"]["height"]
        shot = browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                       "clip": {"x": 0, "y": 0, "width": WIDTH, "height": height,
                                                                "scale": 1}}, session=session)
        with open(png_path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        browser.send("Runtime.evaluate", {"expression": "1"}, session=session)  # drain late events
    finally:
        browser.close()
    errors = []
    for event in browser.events:
        params = event.get("params", {})
        if event.get("method") == "Runtime.exceptionThrown":
            errors.append(params["exceptionDetails"].get("text", "exception"))
        elif event.get("method") == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(" ".join(str(a.get("value", "")) for a in params.get("args", [])))
        elif event.get("method") == "Log.entryAdded" and params["entry"].get("level") == "error":
            errors.append(f"{params['entry'].get('text')} {params['entry'].get('url', '')}")
    return facts, errors


def _shown(text: str) -> float:
    """The number a card shows: '12.3×' → 12.3, '−0.2 pt' → -0.2."""
    return float(re.sub(r"[^0-9.+-]", "", text.replace("−", "-")))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return run_demo(DemoSettings().quick(), output_dir=root, progress=False, log=lambda *_: None)


@needs_browser
def test_demo_report_renders_without_errors_and_shows_the_metrics(demo, tmp_path):
    path, metrics = demo
    assert json.loads((path / "metrics.json").read_text()) == metrics
    png = tmp_path / "report.png"
    facts, errors = render(path / "report.html", png, tmp_path / "profile")
    assert errors == []
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert facts["pageWidth"] <= facts["viewport"] == WIDTH and facts["cutTables"] == []
    assert facts["brokenImages"] == []
    headline = metrics["headline"]
    assert facts["headline"] == headline["text"]
    shown = {card["key"]: card for card in facts["cards"]}
    assert set(shown) >= {"nonzero_ratio", "accuracy_change_pt", "flops_ratio", "speedup", "disk_ratio"}
    for key, card in shown.items():
        assert float(card["value"]) == headline[key], key                 # the exact value travels along
        assert _shown(card["text"]) == pytest.approx(round(headline[key], 1), abs=1e-9), key  # and is what shows
    assert "language-yaml" in facts["code"]
    assert "torch" in facts["footer"] and "CPU" in facts["footer"]


@needs_browser
def test_a_wide_table_fits_1280_pixels_and_a_missing_image_is_reported(tmp_path):
    columns = ["round", "target_sparsity", "sparsity", "accuracy_pruned", "accuracy", "test_loss", "nonzero_params",
               "total_params", "dense_flops", "sparse_flops", "dense_bytes", "compressed_bytes"]
    rows = [{c: 123456.789 * (i + 1) for c in columns} for i in range(5)]
    report = Report("wide").table(rows, columns, table_id="wide").image("plots/missing.png", "not there")
    facts, errors = render(report.save(tmp_path / "r.html"), tmp_path / "r.png", tmp_path / "profile")
    assert facts["cutTables"] == [] and facts["pageWidth"] <= WIDTH
    assert facts["brokenImages"] and any("missing.png" in e for e in errors)  # the check does see failures


@needs_browser
def test_run_report_has_the_headline_of_its_metrics(tmp_path):
    from prunekit.recipe import recipe_from_dict
    from prunekit.workflows.prune_finetune import run_recipe

    recipe = recipe_from_dict({"name": "browser", "data": {"name": "digits"},
                               "model": {"name": "mnist1d_mlp", "options": {"in_features": 64}},
                               "train": {"steps": 60}, "prune": {"sparsities": [0.5, 0.8]}, "finetune": {"steps": 10}})
    run = run_recipe(recipe, output_dir=tmp_path / "runs", progress=False, log=lambda *_: None)
    rows, latency = run.rows(), run.read_json("latency.json")
    dense, final = rows[0], rows[-1]
    numbers = {"nonzero_ratio": dense["nonzero_params"] / final["nonzero_params"],
               "accuracy_change_pt": 100 * (final["accuracy"] - dense["accuracy"]),
               "flops_ratio": dense["sparse_flops"] / final["sparse_flops"],
               "bytes_ratio": dense["compressed_bytes"] / final["compressed_bytes"],
               "speedup": latency["dense_ms"] / latency["pruned_ms"]}
    facts, errors = render(run.path / "report.html", tmp_path / "run.png", tmp_path / "profile")
    assert errors == [] and facts["cutTables"] == [] and facts["brokenImages"] == []
    shown = {card["key"]: card for card in facts["cards"]}
    assert set(shown) == set(numbers)
    for key, card in shown.items():  # the metrics recomputed from metrics.json and latency.json
        assert float(card["value"]) == pytest.approx(numbers[key], abs=1e-3), key
        assert _shown(card["text"]) == pytest.approx(numbers[key], abs=0.051), key  # shown to 1–2 decimals
    assert "language-yaml" in facts["code"] and "torch" in facts["footer"]
