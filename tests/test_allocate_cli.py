"""`prunekit sensitivity` and recipes with an allocator section."""

import csv
import json

import pytest
import yaml

from prunekit.workflows.allocation import run_allocation
from prunekit.cli import main
from prunekit.errors import PrunekitError
from prunekit.recipe import recipe_from_dict


pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["--model", "mnist1d_mlp", "--model-option", "in_features=64", "--model-option", "hidden=16",
         "--data", "digits", "--train-steps", "100", "--no-progress", "--ratios", "0.5,0.9"]


def test_sensitivity_command_writes_curves_and_ratios(tmp_path, capsys):
    assert main(["sensitivity", *SMALL, "--output-dir", str(tmp_path), "--threshold", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "chosen ratio" in out and "run folder" in out
    (folder,) = [f for f in tmp_path.iterdir() if "-sensitivity-" in f.name]
    assert any("-dense-" in f.name for f in tmp_path.iterdir())
    rows = list(csv.DictReader((folder / "sensitivity.csv").open()))
    assert len(rows) == 3 * 2  # three layers × two ratios
    assert (folder / "plots" / "sensitivity.png").stat().st_size > 0
    allocation = json.loads((folder / "allocation.json").read_text())
    for name, ratio in allocation["ratios"].items():  # ratios follow the curves and the threshold
        drops = {float(r["ratio"]): float(r["drop"]) for r in rows if r["layer"] == name}
        allowed = [r for r in sorted(drops) if all(drops[q] <= 0.05 for q in drops if q <= r)]
        assert ratio == pytest.approx(max(allowed, default=0.0), abs=1e-3)


def test_sensitivity_command_budget_and_errors(tmp_path, capsys):
    assert main(["sensitivity", *SMALL, "--output-dir", str(tmp_path), "--budget", "0.4"]) == 0
    assert "met: True" in capsys.readouterr().out
    dense = [f for f in tmp_path.iterdir() if "-dense-" in f.name]
    stamp = (dense[0] / "checkpoints" / "dense.pt").stat().st_mtime_ns
    assert main(["sensitivity", *SMALL, "--output-dir", str(tmp_path), "--budget", "0.6"]) == 0
    assert [f for f in tmp_path.iterdir() if "-dense-" in f.name] == dense  # one dense model, reused
    assert (dense[0] / "checkpoints" / "dense.pt").stat().st_mtime_ns == stamp
    assert main(["sensitivity", *SMALL, "--output-dir", str(tmp_path), "--budget", "0.0001"]) == 2
    assert "below what the prunable layers allow" in capsys.readouterr().err


def test_recipe_allocator_runs_end_to_end(tmp_path):
    recipe = recipe_from_dict({"name": "alloc", "data": {"name": "digits"},
                               "model": {"name": "mnist1d_mlp", "options": {"in_features": 64, "hidden": 16}},
                               "train": {"steps": 150, "batch_size": 64}, "finetune": {"steps": 20},
                               "allocator": {"name": "greedy", "budget": 0.5, "options": {"step": 0.2}}})
    run, allocation = run_allocation(recipe, output_dir=tmp_path, progress=False, log=lambda *a: None)
    assert allocation.met
    (row,) = run.rows()
    assert row["met"] and row["sparse_flops"] == allocation.achieved  # fine-tuning keeps the masks
    again, second = run_allocation(recipe, output_dir=tmp_path, progress=False, log=lambda *a: None)
    assert again.path == run.path and second.counts == allocation.counts  # resumed from the dense checkpoint
    with pytest.raises(PrunekitError, match="options"):
        bad = recipe_from_dict({**recipe.to_dict(), "name": "bad",
                                "allocator": {"name": "greedy", "budget": 0.5, "options": {"stepp": 1}}})
        run_allocation(bad, output_dir=tmp_path, progress=False, log=lambda *a: None)


def test_prunekit_run_dispatches_a_recipe_with_an_allocator(tmp_path, capsys):
    recipe = {"name": "alloc-cli", "data": {"name": "digits"},
              "model": {"name": "mnist1d_mlp", "options": {"in_features": 64, "hidden": 16}},
              "train": {"steps": 100, "batch_size": 64}, "finetune": {"steps": 10},
              "allocator": {"name": "uniform", "budget": 0.5}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path), "--output-dir", str(tmp_path / "runs"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    folder = next((tmp_path / "runs").iterdir())
    assert str(folder) in out and (folder / "allocation.json").exists()
    assert "uniform" in out  # the metrics table names the allocator
