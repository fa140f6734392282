"""`prunekit export --format deep-compression | torch-export`: the files read back to the very model
they were written from, the source is only read, and nothing existing is replaced unasked."""

import hashlib

import pytest
import torch

import prunekit as pk
from prunekit.cli import main
from prunekit.cnn_models import resnet8
from prunekit.data import load_dataset
from prunekit.models import mnist1d_mlp
from prunekit.surgery import deep_compress, read_deep_compressed
from prunekit.training import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")

MLP = ["--model", "mnist1d_mlp", "--model-option", "in_features=64", "--model-option", "hidden=16",
       "--input-shape", "64"]
RESNET = ["--model", "prunekit.cnn_models:resnet8", "--model-option", "in_channels=1", "--model-option", "width=4",
          "--input-shape", "1,8,8"]


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def mlp_checkpoint(tmp_path_factory):
    """A 64-16-16-10 MLP trained briefly on digits, four hidden units of each layer masked whole (so
    compaction has something to remove), then 80 % of its weights masked."""
    torch.manual_seed(0)
    model = mnist1d_mlp(in_features=64, hidden=16)
    train(model, load_dataset("digits").train, TrainConfig(steps=50, batch_size=64), progress=False)
    pk.prune_structured(model, 0.25, torch.randn(2, 64))
    pk.prune(model, 0.8)
    path = tmp_path_factory.mktemp("export") / "mlp.pt"
    torch.save(model.state_dict(), path)
    return path


def masked_mlp(checkpoint):
    model = mnist1d_mlp(in_features=64, hidden=16)
    pk.load_masked_state_dict(model, torch.load(checkpoint, weights_only=True))
    return model.eval()


def read_back(out):
    template = mnist1d_mlp(in_features=64, hidden=16)
    pk.apply_record(template, pk.CompactionRecord.load(out.with_name(out.name + ".record")))
    template.load_state_dict(read_deep_compressed(out))
    return template.eval()


def test_deep_compression_reads_back_to_the_fine_tuned_quantised_model(mlp_checkpoint, tmp_path, capsys):
    out = tmp_path / "mlp.pkdc"
    assert main(["export", str(mlp_checkpoint), *MLP, "--format", "deep-compression", "--out", str(out),
                 "--data", "digits", "--bits", "3", "--finetune-steps", "20"]) == 0
    printed = capsys.readouterr().out
    assert "fine-tuned for 20 steps on digits" in printed and "test accuracy (digits)" in printed
    masked, data = masked_mlp(mlp_checkpoint), load_dataset("digits")
    # The same pipeline through the Python API: compact, share with 3 bits, fine-tune the codebooks.
    small, _ = pk.compact(masked, data.example_input(2))
    expected = deep_compress(small, data.train, TrainConfig().for_finetuning(0.1, 20), bits=3).eval()
    got = read_back(out)
    assert got[1].out_features == 12  # the file holds the compacted model
    for name, tensor in expected.state_dict().items():
        assert torch.equal(got.state_dict()[name], tensor), name
    x = data.test.tensors[0][:50]
    with torch.no_grad():
        assert torch.equal(got(x), expected(x))
    # Masks held: every weight masked in the source (zero in its compacted form) is zero in the file;
    # every layer has at most 2^3 shared non-zero values.
    for index in (1, 3, 5):
        weight = got[index].weight
        assert torch.all(weight[small[index].weight == 0] == 0)
        assert len(torch.unique(weight[weight != 0])) <= 8


def test_deep_compression_without_data_stores_the_kmeans_codebook(mlp_checkpoint, tmp_path, capsys):
    out = tmp_path / "mlp.pkdc"
    assert main(["export", str(mlp_checkpoint), *MLP, "--format", "deep-compression", "--out", str(out)]) == 0
    assert "not fine-tuned" in capsys.readouterr().out
    masked = masked_mlp(mlp_checkpoint)
    small, _ = pk.compact(masked, torch.randn(2, 64))
    expected = deep_compress(small)  # k-means only, 5 bits for fully connected weights
    got = read_back(out)
    for name, tensor in expected.state_dict().items():
        assert torch.equal(got.state_dict()[name], tensor), name


def test_export_only_reads_the_source_and_replaces_nothing_unasked(mlp_checkpoint, tmp_path, capsys):
    before = digest(mlp_checkpoint)
    deep = [str(mlp_checkpoint), *MLP, "--format", "deep-compression"]
    # The source itself as --out, even with --overwrite.
    assert main(["export", *deep, "--out", str(mlp_checkpoint), "--overwrite"]) == 2
    assert "the source is only read" in capsys.readouterr().err
    # An existing record beside a new OUT: refused before anything is written.
    out = tmp_path / "mlp.pkdc"
    record = tmp_path / "mlp.pkdc.record"
    record.write_bytes(b"mine")
    assert main(["export", *deep, "--out", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert not out.exists() and record.read_bytes() == b"mine"
    # Arguments that cannot apply.
    for extra, message in ((["--bits", "13"], "[1, 12]"), (["--finetune-steps", "-1"], "≥ 0")):
        assert main(["export", *deep, "--out", str(tmp_path / "x.pkdc"), *extra]) == 2
        assert message in capsys.readouterr().err
    assert main(["export", str(mlp_checkpoint), *MLP, "--bits", "4", "--out", str(tmp_path / "c")]) == 2
    assert "deep-compression only" in capsys.readouterr().err
    assert main(["export", str(mlp_checkpoint), *MLP, "--format", "torch-export",
                 "--out", str(tmp_path / "m.onnx")]) == 2
    assert ".pt2" in capsys.readouterr().err
    assert digest(mlp_checkpoint) == before and sorted(p.name for p in tmp_path.iterdir()) == ["mlp.pkdc.record"]


def test_torch_export_program_reloads_with_the_compacted_folded_outputs(tmp_path, capsys):
    torch.manual_seed(0)
    model = resnet8(in_channels=1, width=4)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding has something to fold
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 1.5)
    pk.prune_structured(model, 0.5, torch.randn(2, 1, 8, 8))
    source = tmp_path / "resnet8.pt"
    torch.save(model.state_dict(), source)
    before = digest(source)
    out = tmp_path / "resnet8.pt2"
    assert main(["export", str(source), *RESNET, "--format", "torch-export", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "BatchNorm folded" in printed and "any batch size" in printed
    program = torch.export.load(str(out)).module()
    small_params = sum(p.numel() for p in program.parameters())
    assert small_params < sum(p.numel() for p in resnet8(in_channels=1, width=4).parameters())
    model.eval()
    for batch in (1, 5):  # traced at batch 2: other batch sizes run too
        x = torch.randn(batch, 1, 8, 8)
        with torch.no_grad():
            expected, got = model(x), program(x)
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert digest(source) == before and sorted(p.name for p in tmp_path.iterdir()) == ["resnet8.pt", "resnet8.pt2"]
    assert main(["export", str(source), *RESNET, "--format", "torch-export", "--out", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err


def test_deep_compression_of_a_run_folder_fine_tunes_on_the_runs_own_data(tmp_path, capsys):
    import yaml

    recipe = {"name": "dc", "data": {"name": "digits"},
              "model": {"name": "mnist1d_mlp", "options": {"in_features": 64, "hidden": 16}},
              "train": {"steps": 20, "batch_size": 50},
              "prune": {"granularity": "element", "allocation": "global", "sparsities": [0.8]},
              "finetune": {"steps": 0}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["run", str(tmp_path / "recipe.yaml"), "--output-dir", str(tmp_path / "runs")]) == 0
    (folder,) = (tmp_path / "runs").iterdir()
    out = tmp_path / "run.pkdc"
    assert main(["export", str(folder), "--format", "deep-compression", "--finetune-steps", "5",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fine-tuned for 5 steps on digits" in printed and "test accuracy (digits)" in printed
    model = read_back(out)
    for layer in (model[1], model[3], model[5]):  # 5 bits for fully connected weights by default
        assert len(torch.unique(layer.weight[layer.weight != 0])) <= 32
