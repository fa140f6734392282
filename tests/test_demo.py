"""The demo end to end, on its quick settings (a few seconds; the numbers mean nothing):
every figure in metrics.json is recomputed here from the files the run left behind."""

import json

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.workflows.demo import DemoSettings, load_csr, mnist_cnn, paired_latency, run_demo, save_csr

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return pk.data.load_dataset("mnist5k")


@pytest.fixture(scope="module")
def demo(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("runs")
    lines = []
    path, metrics = run_demo(DemoSettings().quick(), output_dir=root, progress=False, log=lines.append, data=data)
    return root, path, metrics, lines


def test_headline_is_printed_with_the_report_path_and_written_to_metrics_json(demo):
    _, path, metrics, lines = demo
    assert json.loads((path / "metrics.json").read_text()) == metrics
    assert metrics["headline"]["text"] in lines[-1] and str(path / "report.html") in lines[-1]
    assert (path / "report.html").is_file() and (path / "settings.yaml").is_file()
    assert any("thread" in line for line in lines)


def test_nonzero_ratio_and_accuracy_are_those_of_the_saved_pruned_lenet(demo, data):
    _, path, metrics, _ = demo
    model = pk.models.lenet300100()
    pk.load_masked_state_dict(model, torch.load(path / "checkpoints" / "lenet_pruned.pt", weights_only=True))
    weights = [pk.effective_weight(model, n) for n in pk.named_parameters(model)]
    nonzero = sum(int(torch.count_nonzero(w)) for w in weights)
    total = sum(w.numel() for w in weights)
    final = metrics["unstructured"]["rows"][-1]
    assert final["nonzero"] == nonzero
    assert metrics["headline"]["nonzero_ratio"] == pytest.approx(total / nonzero, rel=1e-4)
    assert final["accuracy"] == pk.evaluate(model, data.test)["accuracy"]
    dense = pk.models.lenet300100()
    dense.load_state_dict(torch.load(path / "checkpoints" / "lenet_dense.pt", weights_only=True))
    dense_accuracy = pk.evaluate(dense, data.test)["accuracy"]
    assert metrics["headline"]["accuracy_change_pt"] == pytest.approx(100 * (final["accuracy"] - dense_accuracy))
    # the CSR file holds exactly the pruned weights, and is the size reported
    csr = path / "checkpoints" / "lenet_csr.pt"
    assert all(torch.equal(load_csr(csr)[n], pk.effective_weight(model, n)) for n in pk.named_parameters(model))
    assert metrics["unstructured"]["csr_bytes_on_disk"] == csr.stat().st_size


def test_compacted_cnn_rebuilds_from_its_record_with_the_reported_figures(demo, data):
    _, path, metrics, _ = demo
    settings = DemoSettings().quick()
    dense = mnist_cnn(settings.cnn_width)
    dense.load_state_dict(torch.load(path / "checkpoints" / "cnn_dense.pt", weights_only=True))
    small = pk.apply_record(mnist_cnn(settings.cnn_width),
                            pk.CompactionRecord.load(path / "checkpoints" / "cnn_compact.record"))
    small.load_state_dict(torch.load(path / "checkpoints" / "cnn_compact.pt", weights_only=True))
    rows = {r["model"]: r for r in metrics["structured"]["rows"]}
    x = data.example_input(1)
    for name, net in (("dense", dense), ("compacted", small)):
        assert rows[name]["accuracy"] == pk.evaluate(net, data.test)["accuracy"]
        assert rows[name]["flops"] == pk.count_flops(net, x)["dense_flops"]
        assert rows[name]["channels"] == "-".join(str(m.out_channels) for m in net if isinstance(m, nn.Conv2d))
    assert metrics["headline"]["flops_ratio"] == pytest.approx(rows["dense"]["flops"] / rows["compacted"]["flops"],
                                                               rel=1e-4)
    assert rows["compacted"]["params"] < rows["dense"]["params"]
    assert metrics["headline"]["speedup"] == rows["compacted"]["speedup_b64"] > 0


def test_rerun_loads_the_finished_parts(demo):
    root, path, metrics, _ = demo
    lines = []
    again_path, again = run_demo(DemoSettings().quick(), output_dir=root, progress=False, log=lines.append)
    assert again_path == path
    assert sum("already finished" in line for line in lines) == 2
    assert again["headline"] == metrics["headline"]


def test_paired_latency_alternates_the_models_in_both_orders_and_restores_their_modes():
    calls = []
    first, second = nn.Linear(4, 4), nn.Linear(4, 4)
    first.register_forward_hook(lambda *_: calls.append("first"))
    second.register_forward_hook(lambda *_: calls.append("second"))
    second.eval()
    result = paired_latency(first, second, torch.randn(2, 4), repeats=5, warmup=2)
    assert calls == ["first", "second", "second", "first"] * 3 + ["first", "second"]  # order flips every pair
    assert first.training and not second.training
    assert result["first_s"] > 0 and result["second_s"] > 0 and result["ratio"] > 0


def test_csr_round_trip_and_foreign_file(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 5))
    pk.prune(model, 0.9)
    size = save_csr(model, tmp_path / "m.pt")
    state = load_csr(tmp_path / "m.pt")
    assert set(state) == set(pk.named_parameters(model))
    assert all(torch.equal(state[n], pk.effective_weight(model, n)) for n in state)
    torch.save({"0.weight": torch.zeros(2)}, tmp_path / "other.pt")
    assert size == (tmp_path / "m.pt").stat().st_size
    with pytest.raises(pk.PrunekitError, match="save_csr"):
        load_csr(tmp_path / "other.pt")


@pytest.mark.parametrize("change, message", [
    ({"sparsities": (0.9, 0.5)}, "sparsities"),
    ({"channel_fraction": 1.0}, "channel_fraction"),
    ({"latency_batches": ()}, "latency_batches"),
    ({"threads": 0}, "threads"),
])
def test_bad_settings_are_refused(change, message):
    with pytest.raises(pk.PrunekitError, match=message):
        DemoSettings(**change)
