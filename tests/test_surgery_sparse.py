"""Sparse layers, the measured format choice, and sparse files: outputs equal the masked model's."""

import json

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import PrunekitError
from prunekit import prune_granular
from prunekit.masks import get_masks
from prunekit.surgery import (SparseConv2d, SparseLinear, fastest_threads, load_sparse, num_threads,
                              read_sparse_header, save_sparse, to_sparse)
from prunekit.surgery.sparse import block_fill, candidate_layouts

pytestmark = pytest.mark.usefixtures("one_thread")


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, dilation=1), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=2, dilation=2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 16, bias=False))


def _rel(a, b):
    return float((a - b).norm() / a.norm())


@pytest.mark.parametrize("force", ["csr", "bsr4", "bsr8"])
def test_forced_formats_give_the_masked_models_outputs(force):
    model = _net()
    pk.prune(model, 0.8)
    x = torch.randn(5, 3, 8, 8)
    sparse, report = to_sparse(model, x, force=force, threads=(1,), repeats=1, min_fill=0.0)
    kinds = {type(m) for m in sparse.modules()}
    assert SparseLinear in kinds
    if force == "csr":
        assert SparseConv2d in kinds  # every layer converts to CSR
    with torch.no_grad():
        assert _rel(model.eval()(x), sparse(x)) <= 1e-5
    assert report.max_relative_error <= 1e-5
    assert {r["chosen"] for r in report.rows} <= {"dense", force}


def test_sparse_linear_keeps_leading_dimensions_and_stores_only_nonzeros():
    torch.manual_seed(0)
    linear = nn.Linear(12, 8)
    with torch.no_grad():
        linear.weight[torch.rand(8, 12) < 0.7] = 0
    layer = SparseLinear.from_dense(linear, "csr")
    x = torch.randn(2, 3, 12)
    assert torch.allclose(layer(x), linear(x), atol=1e-6)
    assert layer(x).is_contiguous()
    assert layer.weight.values().numel() == int(linear.weight.count_nonzero())


def test_sparse_conv_matches_the_dense_conv_batched_and_unbatched():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    with torch.no_grad():
        conv.weight[torch.rand_like(conv.weight) < 0.6] = 0
    layer = SparseConv2d.from_dense(conv, "csr")
    for x in (torch.randn(3, 4, 9, 7), torch.randn(4, 9, 7)):
        assert layer(x).shape == conv(x).shape
        assert torch.allclose(layer(x), conv(x), atol=1e-5)
    with pytest.raises(PrunekitError, match="groups=1"):
        SparseConv2d.from_dense(nn.Conv2d(4, 4, 3, groups=2), "csr")


def test_user_model_and_masks_are_untouched():
    model = _net()
    pk.prune(model, 0.9)
    masks, state = get_masks(model), {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    to_sparse(model, torch.randn(2, 3, 8, 8), force="csr", threads=(1,), repeats=1)
    assert get_masks(model) == masks and model.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_measured_choice_keeps_the_fastest_candidate_and_says_why():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    pk.prune(model, 0.97, params=["0.weight"], scope="local")
    pk.prune(model, 0.2, params=["2.weight"], scope="local")
    x = torch.randn(32, 512)
    sparse, report = to_sparse(model, x, threads=(1,), repeats=5)
    rows = {r["layer"]: r for r in report.rows}
    assert "min_sparsity" in rows["2"]["why"] and rows["2"]["chosen"] == "dense"  # 20 %: not worth measuring
    measured = rows["0"]
    assert set(measured["times_ms"]) >= {"dense", "csr"} and set(measured["speedups"]) >= {"csr"}
    assert measured["speedups"]["csr"] == pytest.approx(measured["dense_ms"] / measured["csr_ms"])
    best = max(measured["speedups"], key=measured["speedups"].get)
    if measured["chosen"] == "dense":  # kept dense only when no sparse kernel beat it by the 5 % margin
        assert measured["speedups"][best] <= 1 / 0.95 and "needs" in measured["why"]
    else:  # the kept layout is the one with the best median speedup over dense
        assert measured["chosen"] == best and measured["speedups"][best] > 1 / 0.95
        assert isinstance(sparse[0], SparseLinear)
    assert report.threads == 1 and set(report.latency_ms) == {1}
    assert "threads=1" in report.table()


def test_block_pruned_masks_offer_bsr_and_random_masks_do_not():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32))
    prune_granular(model, 0.75, "block16x16")
    w = model[0].weight.detach()
    assert block_fill(w, 16) == 1.0
    found, _ = candidate_layouts(w, ("csr", "bsr"), (4, 8, 16), 0.5)
    assert {"csr", "bsr4", "bsr8", "bsr16"} <= set(found)
    found, note = candidate_layouts(torch.randn(32, 64) * (torch.rand(32, 64) < 0.25), ("csr", "bsr"), (4, 16), 0.5)
    assert set(found) == {"csr"} and "full" in note
    found, note = candidate_layouts(torch.randn(30, 64), ("csr", "bsr"), (16,), 0.5)
    assert set(found) == {"csr"} and "not divisible" in note


def test_block_granularities_prune_whole_tiles():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8))
    prune_granular(model, 0.5, "block1x4")
    rows = get_masks(model)["0.weight"].reshape(8, 2, 4)
    assert bool((rows.all(-1) | ~rows.any(-1)).all())  # each 1×4 tile kept or pruned whole
    model = nn.Sequential(nn.Linear(8, 8))
    prune_granular(model, 0.5, "block4x1")
    cols = get_masks(model)["0.weight"].reshape(2, 4, 8)
    assert bool((cols.all(1) | ~cols.any(1)).all())


def test_save_and_load_round_trip_without_pickle(tmp_path):
    model = _net()
    pk.prune(model, 0.8)
    x = torch.randn(3, 3, 8, 8)
    sparse, report = to_sparse(model, x, force="csr", threads=(1,), repeats=1)
    path = save_sparse(sparse, tmp_path / "m.safetensors", extra=report.to_dict())
    loaded = load_sparse(path, _net())
    assert [type(m) for m in loaded.modules()] == [type(m) for m in sparse.modules()]
    with torch.no_grad():
        assert torch.equal(loaded(x), sparse(x))
    assert read_sparse_header(path)["extra"]["threads"] == 1
    with pytest.raises(PrunekitError, match="exists"):
        save_sparse(sparse, path)
    with pytest.raises(PrunekitError, match="template"):
        load_sparse(path, nn.Sequential(nn.Linear(3, 3)))
    with pytest.raises(PrunekitError, match="masks"):
        save_sparse(model, tmp_path / "masked.safetensors")


def test_bad_options_raise_before_anything_happens():
    model = _net()
    x = torch.randn(1, 3, 8, 8)
    for kwargs in ({"formats": ("coo",)}, {"threads": (0,)}, {"margin": 1.5}, {"force": "bsr3"},
                   {"block_sizes": (0,)}):
        with pytest.raises(PrunekitError):
            to_sparse(model, x, **kwargs)


def test_thread_helpers_restore_and_pick_the_measured_minimum():
    before = torch.get_num_threads()
    with num_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    model = nn.Sequential(nn.Linear(32, 32))
    best, seconds = fastest_threads(model, torch.randn(4, 32), (1, 2), repeats=3)
    assert best == min(seconds, key=seconds.get) and set(seconds) == {1, 2}
    assert torch.get_num_threads() == before


def test_corrupt_indices_in_a_file_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    model = nn.Sequential(nn.Linear(8, 4))
    pk.prune(model, 0.5)
    sparse, _ = to_sparse(model, torch.randn(2, 8), force="csr", threads=(1,), repeats=1)
    path = save_sparse(sparse, tmp_path / "m.safetensors")
    tensors = load_file(str(path))
    tensors["0.weight.col_indices"][0] = 99  # out of range: would read past the row
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"prunekit": json.dumps(read_sparse_header(path))})
    with pytest.raises(PrunekitError, match="corrupt"):
        load_sparse(bad, nn.Sequential(nn.Linear(8, 4)))
