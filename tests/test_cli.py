"""The command line around a finished run: compact with accuracy and latency, export formats,
report, --version."""

import pytest
import torch
import yaml

import prunekit as pk
from prunekit.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPE = {"name": "cli", "data": {"name": "digits"},
          "model": {"name": "mnist1d_mlp", "options": {"in_features": 64, "hidden": 16}},
          "train": {"steps": 20, "batch_size": 50},
          "prune": {"granularity": "neuron", "allocation": "uniform", "sparsities": [0.5]}, "finetune": {"steps": 0}}


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    (root / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    assert main(["run", str(root / "recipe.yaml"), "--output-dir", str(root / "runs")]) == 0
    (folder,) = (root / "runs").iterdir()
    return folder


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and pk.__version__ in capsys.readouterr().out


def test_compact_reports_accuracy_and_latency(run_folder, tmp_path, capsys):
    assert main(["compact", str(run_folder / "checkpoints" / "round1.pt"), "--model", "mnist1d_mlp",
                 "--model-option", "in_features=64", "--model-option", "hidden=16", "--input-shape", "64",
                 "--data", "digits", "--out", str(tmp_path / "small.pt")]) == 0
    out = capsys.readouterr().out
    assert "accuracy on digits" in out and "latency" in out and (tmp_path / "small.pt").is_file()


def test_export_masked_and_report(run_folder, tmp_path, capsys):
    assert main(["export", str(run_folder), "--format", "masked", "--out", str(tmp_path / "masked")]) == 0
    model = pk.load(tmp_path / "masked")
    state = torch.load(run_folder / "checkpoints" / "round1.pt", weights_only=True)
    assert pk.get_masks(model) == pk.MaskSet.from_state_dict(state)
    (run_folder / "report.html").unlink()
    assert main(["report", str(run_folder)]) == 0
    assert (run_folder / "report.html").stat().st_size > 0
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_export_sparse_reads_back_with_the_same_outputs(run_folder, tmp_path, capsys):
    from prunekit.surgery import load_sparse
    from prunekit.workflows.sources import dataset_from, fresh_model

    out = tmp_path / "model.sparse.safetensors"
    assert main(["export", str(run_folder), "--format", "sparse", "--out", str(out)]) == 0
    assert "chosen" in capsys.readouterr().out
    dataset = dataset_from("digits")
    masked = fresh_model("mnist1d_mlp", {"in_features": 64, "hidden": 16}, dataset.num_classes, seed=0)
    pk.load_masked_state_dict(masked, torch.load(run_folder / "checkpoints" / "round1.pt", weights_only=True))
    template = fresh_model("mnist1d_mlp", {"in_features": 64, "hidden": 16}, dataset.num_classes, seed=1)
    pk.apply_record(template, pk.CompactionRecord.load(tmp_path / "model.sparse.safetensors.record"))
    sparse = load_sparse(out, template)
    x = dataset.test.tensors[0][:32]
    with torch.no_grad():
        assert torch.allclose(sparse.eval()(x), masked.eval()(x), rtol=1e-5, atol=1e-5)
