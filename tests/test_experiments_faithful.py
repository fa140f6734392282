import gzip

import numpy as np
import pytest
import torch

import prunekit as pk
from prunekit.data import fashion_mnist, fashion_mnist_available, read_idx
from prunekit.experiments import ALIASES, EXPERIMENTS
from prunekit.lottery import LotteryConfig, magnitude_masks
from prunekit.lottery.notebook import (NotebookConfig, ResidualMLP, layer_groups, layer_masks, notebook_lottery,
                                      train_notebook)
from prunekit.masks import MaskSet
from prunekit.training import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- Fashion-MNIST ----------------------------------------------------------------------------

def _write_idx(path, array, code):
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def test_read_idx_reads_what_the_format_says(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "x.gz", images, 0x08)
    assert np.array_equal(read_idx(tmp_path / "x.gz"), images)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03")
    with pytest.raises(pk.PrunekitError, match="not an IDX file"):
        read_idx(tmp_path / "bad")


def test_fashion_mnist_from_a_folder_of_idx_files(tmp_path, monkeypatch):
    for prefix, n in (("train", 6), ("t10k", 4)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", np.full((n, 28, 28), 255, np.uint8), 0x08)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8) % 10, 0x08)
    monkeypatch.setenv("PRUNEKIT_FASHION_MNIST", str(tmp_path))
    data = fashion_mnist()
    assert (len(data.train), len(data.test)) == (6, 4) and data.train.tensors[0].shape[1:] == (1, 28, 28)
    assert float(data.train.tensors[0].max()) == 1.0 and data.test.tensors[1].tolist() == [0, 1, 2, 3]
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    assert not fashion_mnist_available()
    with pytest.raises(pk.PrunekitError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist()


@pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed: "
                    "sudo apt-get install dataset-fashion-mnist (make install does it as root)")
def test_installed_fashion_mnist_is_the_published_split():
    data = pk.data.load_dataset("fashion_mnist")
    assert (len(data.train), len(data.test)) == (60000, 10000)
    assert data.train.tensors[1].bincount().tolist() == [6000] * 10
    assert data.test.tensors[1].bincount().tolist() == [1000] * 10


# ---- the notebook's procedure -----------------------------------------------------------------

def test_layer_masks_rank_weight_and_bias_together_per_layer():
    model = ResidualMLP(4, 3, 2)
    scores = {n: p.detach().abs() for n, p in model.named_parameters()}
    masks = layer_masks(scores, layer_groups(model), 0.5)
    for layer, names in layer_groups(model).items():
        flat = torch.cat([scores[n].flatten() for n in names])
        kept = torch.cat([masks[n].flatten() for n in names])
        assert int((~kept).sum()) == int(0.5 * flat.numel())
        assert flat[~kept].max() <= flat[kept].min()  # the dropped entries are the smallest of the layer


def test_notebook_training_keeps_pruned_entries_at_zero_and_uses_ordered_batches():
    data = pk.data.load_dataset("mnist1d")
    torch.manual_seed(0)
    model = ResidualMLP(40, 16, 10)
    masks = layer_masks({n: torch.rand(p.shape) for n, p in model.named_parameters()}, layer_groups(model), 0.7)
    config = NotebookConfig(hidden=16, steps=20, mask_step=10, eval_every=10)
    result = train_notebook(model, masks, data, config)
    for name, p in model.named_parameters():
        assert bool((p[~masks[name]] == 0).all())
        assert bool((result["weights"][name][~masks[name]] == 0).all())
    assert len(result["accuracies"]) == 3 and result["max"] == max(result["accuracies"])


def test_notebook_schedule_reports_chosen_rounds_and_trains_random_masks_only_there():
    data = pk.data.load_dataset("mnist1d")
    config = NotebookConfig(hidden=8, steps=4, mask_step=2, eval_every=2, sparsities=tuple(i / 12 for i in range(12)))
    lines = []
    rows = notebook_lottery(data, config, report_at=[0, 11], log=lines.append)
    assert [r["round"] for r in rows] == [0, 11]
    assert rows[0]["random final"] == rows[0]["ticket final"]  # at sparsity 0 the random mask is no mask
    assert rows[1]["sparsity"] == 11 / 12
    # every round in between is trained (the ticket chains through them) and shown every 10 rounds
    assert [line.split(" round ")[1].split()[0] for line in lines] == ["0", "10", "11"]


def test_notebook_config_validation():
    with pytest.raises(pk.PrunekitError, match="mask_step"):
        NotebookConfig(steps=10, mask_step=11)
    with pytest.raises(pk.PrunekitError, match="non-decreasing"):
        NotebookConfig(sparsities=(0.5, 0.2))


# ---- the paper's half-rate output layer --------------------------------------------------------

def test_output_layer_pruned_at_its_own_rate():
    torch.manual_seed(0)
    weights = {"a": torch.randn(20, 10), "out": torch.randn(10, 10)}
    current = MaskSet.ones_like(weights)
    masks = MaskSet(magnitude_masks(weights, current, 0.2, "local", {"out": 0.1}))
    assert int((~masks["a"]).sum()) == 40 and int((~masks["out"]).sum()) == 10
    again = MaskSet(magnitude_masks({n: w * masks[n] for n, w in weights.items()}, masks, 0.2, "local", {"out": 0.1}))
    assert int((~again["a"]).sum()) == 40 + 32 and int((~again["out"]).sum()) == 10 + 9 and again.is_subset_of(masks)


def test_output_rate_needs_local_scope_and_keeps_old_hashes():
    with pytest.raises(pk.PrunekitError, match="scope='local'"):
        LotteryConfig(output_rate=0.1)
    assert "output_rate" not in LotteryConfig().settings()
    assert LotteryConfig(scope="local", output_rate=0.1).settings()["output_rate"] == 0.1


# ---- the paper's Gaussian Glorot initialisation -----------------------------------------------

def test_glorot_normal_has_the_closed_form_spread_and_zero_biases():
    from torch import nn
    from prunekit.models import glorot_normal_init

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 300), nn.Conv2d(16, 32, 5), nn.BatchNorm2d(32))
    norm_before = model[2].weight.clone()
    glorot_normal_init(model)
    for layer, fan_in, fan_out in ((model[0], 784, 300), (model[1], 16 * 25, 32 * 25)):
        std = (2 / (fan_in + fan_out)) ** 0.5  # N(0, 2 / (fan_in + fan_out)): Glorot & Bengio's variance
        assert layer.weight.std().item() == pytest.approx(std, rel=0.02)
        assert abs(layer.weight.mean().item()) < 0.02 * std and not layer.bias.any()
        # Gaussian, not uniform of the same variance (whose tails stop at √3 σ): P(|w| > 2σ) = 4.55 %
        assert (layer.weight.abs() > 2 * std).float().mean().item() == pytest.approx(0.0455, abs=0.005)
    assert torch.equal(model[2].weight, norm_before)  # only Linear and Conv layers


def test_lottery_init_option_is_seeded_named_and_keeps_old_hashes():
    from prunekit.lottery.imp import build

    with pytest.raises(pk.PrunekitError, match="glorot_normal"):
        LotteryConfig(init="glorot")
    assert "init" not in LotteryConfig().settings()
    config = LotteryConfig(model="lenet300100", dataset="mnist5k", init="glorot_normal")
    assert config.settings()["init"] == "glorot_normal"
    first, again, other = build(config, 10, 3), build(config, 10, 3), build(config, 10, 4)
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), again.parameters()))
    assert not torch.equal(first[1].weight, other[1].weight) and not first[1].bias.any()
    assert first[1].weight.std().item() == pytest.approx((2 / (784 + 300)) ** 0.5, rel=0.02)
    default = build(config.replace(init="default"), 10, 3)
    assert default[1].bias.any()  # torch's default draws biases too


def test_paper_rates_reach_the_density_by_layer(tmp_path):
    config = LotteryConfig(model="mnist1d_mlp", dataset="mnist1d", model_options={"hidden": 16}, scope="local",
                           rate=0.2, output_rate=0.1, rounds=2, controls=(),
                           train=TrainConfig(optimizer="adam", lr=1e-2, steps=5, batch_size=100), eval_every=5)
    run = pk.lottery.run_lottery(config, tmp_path, log=lambda s: None)
    from prunekit.lottery import Experiment
    masks = pk.get_masks(Experiment(config, tmp_path, log=lambda s: None).load_state("round2_ticket"))
    kept_out = int(masks["5.weight"].sum())
    assert kept_out == 160 - 16 - 14   # 10 % of 160, then 10 % of the 144 left (rounded)
    assert int(masks["1.weight"].sum()) == 640 - 128 - 102
    assert len(run.rows()) == 3


# ---- registry and quick runs -------------------------------------------------------------------

def test_new_experiments_are_registered():
    for alias, key in {"mincut": "f", "gating": "g", "notebook": "h", "lenet-paper": "i"}.items():
        assert ALIASES[alias] == key and key in EXPERIMENTS
