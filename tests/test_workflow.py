"""The demo pipeline end to end (with short training so the suite stays fast)."""

import dataclasses
import json
import re
from html.parser import HTMLParser

import pytest

import prunekit as pk
from prunekit.cli import main
from prunekit.recipe import bundled_recipe, load_recipe
from prunekit.workflows.prune_finetune import ROUND_COLUMNS, run_recipe


def short_demo():
    recipe = load_recipe(bundled_recipe("mnist1d_cnn"))
    return dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, steps=300),
                               finetune=dataclasses.replace(recipe.finetune, steps=60))


class TableReader(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self._in_table, self._cell = [], False, None

    def handle_starttag(self, tag, attrs):
        if tag == "table" and ("id", "rounds") in attrs:
            self._in_table = True
        elif self._in_table and tag == "tr":
            self.rows.append([])
        elif self._in_table and tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_table = False
        elif tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return run_recipe(short_demo(), output_dir=root, progress=False, log=lambda *_: None), root


def test_report_agrees_with_metrics_json(demo_run):
    run, _ = demo_run
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert [m["round"] for m in metrics] == [0, 1, 2, 3, 4]
    for name in ("report.html", "metrics.csv", "plots/accuracy_vs_sparsity.png", "plots/layer_sparsity.png",
                 "checkpoints/round4.pt", "recipe.yaml"):
        assert (run.path / name).is_file(), name
    reader = TableReader()
    reader.feed((run.path / "report.html").read_text())
    header, *rows = reader.rows
    assert header == ROUND_COLUMNS
    assert len(rows) == len(metrics)
    for row, m in zip(rows, metrics):
        for column, cell in zip(header, row):
            value = m[column]
            if isinstance(value, float):
                assert float(cell) == pytest.approx(value, rel=1e-3, abs=1e-9), column
            else:
                assert cell == str(value), column
    # achieved sparsity matches the targets (global pruning removes exactly the count asked for)
    for m in metrics[1:]:
        assert m["sparsity"] == pytest.approx(m["target_sparsity"], abs=1e-3)
    assert metrics[-1]["nonzero_params"] < metrics[0]["nonzero_params"]
    assert metrics[-1]["compressed_bytes"] < metrics[-1]["dense_bytes"]


def test_final_checkpoint_holds_masks(demo_run):
    run, _ = demo_run
    model = pk.models.mnist1d_cnn()
    pk.load_masked_state_dict(model, run.load_checkpoint("round4"))
    assert pk.get_masks(model).sparsity() == pytest.approx(0.95, abs=1e-3)


def test_rerun_resumes_and_same_seed_same_metrics(demo_run, tmp_path):
    run, root = demo_run
    first = run.rows()
    again = run_recipe(short_demo(), output_dir=root, progress=False, log=lambda *_: None)
    assert again.path == run.path and again.rows() == first  # found and resumed, nothing recomputed
    fresh = run_recipe(short_demo(), output_dir=tmp_path, progress=False, log=lambda *_: None)
    assert fresh.rows() == first  # recomputed from scratch: bit-identical metrics


def test_killed_run_resumes_to_identical_results(demo_run, tmp_path):
    run, _ = demo_run
    recipe = short_demo()
    calls = {"n": 0}

    def crash_after_round_two(message):
        if message.lstrip().startswith("| 2 "):
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, output_dir=tmp_path, progress=False,
                   log=lambda m: crash_after_round_two(m.splitlines()[-1]) if "|" in m else calls.update(n=1))
    resumed = run_recipe(recipe, output_dir=tmp_path, progress=False, log=lambda *_: None)
    assert resumed.rows() == run.rows()


def test_cli_run_with_typo_recipe(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nprune:\n  sparsites: [0.5]\n")
    assert main(["run", str(bad), "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"prune\.sparsites: unknown key\. Did you mean 'sparsities'", err)
    assert not any(tmp_path.glob("x-*"))


def test_report_shows_the_final_models_activation_sparsity(demo_run):
    run, _ = demo_run
    rows = run.read_json("activations.json")
    assert 'id="activation-sparsity"' in (run.path / "report.html").read_text()
    first = rows[0]  # the first layer reads the test inputs themselves
    inputs = pk.data.load_dataset("mnist1d").test.tensors[0]
    assert first["input zeros"] == pytest.approx((inputs == 0).float().mean().item(), abs=1e-4)
    later = rows[1:-1]
    assert later and all(0 <= r["input zeros"] <= 1 for r in later)
    assert any(r["input zeros"] > 0.2 for r in later)  # inputs after ReLU: many exact zeros
