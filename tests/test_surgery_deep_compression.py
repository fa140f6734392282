"""Deep Compression: k-means sharing, centroid gradients, Huffman codes, and the file read back bit for bit."""

import heapq
import itertools

import numpy as np
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.data import load_dataset
from prunekit.errors import PrunekitError
from prunekit.surgery import (bake_shared, deep_compress, kmeans_1d, read_deep_compressed, share_weights,
                              write_deep_compressed)
from prunekit.surgery import huffman
from prunekit.surgery.compressed_file import _Reader, decode_tensor, encode_tensor
from prunekit.training import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


# k-means -----------------------------------------------------------------------------------

def test_kmeans_ends_at_a_lloyd_fixed_point():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(300, generator=g) * 0.1 - 1, torch.randn(200, generator=g) * 0.3 + 2])
    centroids, assignment = kmeans_1d(x, 8)
    nearest = (x.double()[:, None] - centroids[None]).abs().argmin(1)
    assert torch.equal(nearest, assignment)  # every value sits at its nearest centroid
    for k in assignment.unique():  # every used centroid is the mean of its values
        assert torch.isclose(centroids[k], x.double()[assignment == k].mean())


def test_kmeans_starts_linear_over_the_range():
    x = torch.tensor([0.0, 1.0, 2.0, 3.0])  # one value per linearly spaced centroid: already converged
    centroids, assignment = kmeans_1d(x, 4)
    assert torch.equal(centroids, torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64))
    assert torch.equal(assignment, torch.arange(4))


# Weight sharing ----------------------------------------------------------------------------

def _pruned_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    pk.prune(model, 0.7)
    return model


def test_centroid_gradient_is_the_sum_of_its_weights_gradients():
    model = _pruned_mlp()
    shared = share_weights(model, bits=3)
    x, y = torch.randn(16, 64), torch.randint(0, 10, (16,))
    nn.functional.cross_entropy(shared(x), y).backward()
    layer = shared[1]
    p = layer.parametrizations.weight[0]
    plain = nn.Linear(64, 32)  # the same layer with ordinary weights C[I]: its weight gradient, summed per cluster
    with torch.no_grad():
        plain.weight.copy_(layer.weight)
        plain.bias.copy_(layer.bias)
    rest = nn.Sequential(nn.Flatten(), plain, nn.ReLU(), shared[3])
    nn.functional.cross_entropy(rest(x), y).backward()
    k = len(p.codebook)
    per_cluster = torch.zeros(k + 1).index_add_(0, p.index.reshape(-1), plain.weight.grad.reshape(-1))[:k]
    assert torch.allclose(p.codebook.grad, per_cluster, atol=1e-6)
    assert not layer.parametrizations.weight.original.requires_grad


def test_fine_tuning_trains_codebooks_while_masks_hold():
    data = load_dataset("digits")
    model = _pruned_mlp()
    masks = pk.get_masks(model)
    before = share_weights(model, bits=4)
    codebook_before = before[1].parametrizations.weight[0].codebook.detach().clone()
    shared = deep_compress(model, data.train, TrainConfig(steps=30, lr=1e-3, batch_size=64), bits=4)
    for name in masks:
        w = pk.named_parameters(shared)[name].detach()
        assert torch.equal(w != 0, masks[name] & (w != 0))  # pruned weights are still exactly 0
        assert len(w[w != 0].unique()) <= 16
    values = shared[1].weight.detach()
    assert not set(values[values != 0].unique().tolist()) <= set(codebook_before.tolist())  # centroids moved
    assert not pk.get_masks(shared) and not any(hasattr(m, "parametrizations") for m in shared.modules())
    assert pk.get_masks(model) == masks  # the user's model is untouched


def test_bake_shared_gives_the_codebook_values():
    shared = share_weights(_pruned_mlp(), bits=2)
    p = shared[1].parametrizations.weight[0]
    expected = torch.cat([p.codebook.detach(), torch.zeros(1)])[p.index]
    bake_shared(shared)
    assert torch.equal(shared[1].weight.detach(), expected)


# Huffman -------------------------------------------------------------------------------------

def _optimal_cost(counts):
    """The cost of an optimal prefix code: the sum of all merged weights (independent of lengths)."""
    heap, total = [c for c in counts if c], 0
    heapq.heapify(heap)
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        total += merged
        heapq.heappush(heap, merged)
    return total


@pytest.mark.parametrize("seed", range(4))
def test_huffman_lengths_are_optimal_prefix_free_and_round_trip(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 50, size=20) * (rng.random(20) < 0.8)
    lengths = huffman.code_lengths(counts)
    assert (counts * lengths).sum() == _optimal_cost(counts)
    assert sum(2.0 ** -l for l in lengths if l) <= 1 + 1e-12  # Kraft
    codes = huffman.canonical_codes(lengths)
    words = [format(int(codes[s]), f"0{lengths[s]}b") for s in np.flatnonzero(lengths)]
    assert not any(a != b and b.startswith(a) for a, b in itertools.product(words, words))
    symbols = rng.choice(np.flatnonzero(counts), size=500)
    data, nbits = huffman.encode(symbols, lengths)
    assert np.array_equal(huffman.decode(data, nbits, len(symbols), lengths), symbols)


def test_huffman_lengths_are_limited():
    counts = [2 ** i for i in range(25)]  # an unlimited code would need 24 bits
    lengths = huffman.code_lengths(counts, limit=10)
    assert lengths.max() <= 10 and sum(2.0 ** -l for l in lengths) <= 1


# The file ------------------------------------------------------------------------------------

def _round_trip(tensor, **kwargs):
    encoded = encode_tensor("t", tensor, **kwargs)
    header = {**encoded.header, "parts": [len(p) for p in encoded.parts]}
    return decode_tensor(header, _Reader(b"".join(encoded.parts), 0, header["parts"])), encoded


@pytest.mark.parametrize("coding", ["huffman", "fixed"])
@pytest.mark.parametrize("gap_bits", [1, 3, None])
def test_tensors_decode_bit_for_bit_with_fillers(coding, gap_bits):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 50, generator=g)
    w[torch.rand(40, 50, generator=g) < 0.95] = 0
    w[:10] = 0  # long runs of zeros: fillers needed for small gap widths
    shared = w.clone()
    shared[shared != 0] = torch.tensor([-0.5, 0.25, 1.5])[torch.randint(0, 3, (int((w != 0).sum()),), generator=g)]
    for tensor, kind in ((w, "raw"), (shared, "shared")):
        back, encoded = _round_trip(tensor, coding=coding, gap_bits=gap_bits, share=kind == "shared")
        assert torch.equal(back, tensor) and back.dtype == tensor.dtype
        assert encoded.header["encoding"] == "sparse" and encoded.header["values"] == kind
        if gap_bits == 1:
            assert encoded.header["entries"] > int((tensor != 0).sum())  # fillers were used


def test_dense_and_odd_tensors_are_stored_raw():
    for t in (torch.randn(5, 4), torch.zeros(3, 3), torch.tensor(7, dtype=torch.int64), torch.zeros(0)):
        back, encoded = _round_trip(t)
        assert encoded.header["encoding"] == "raw" and torch.equal(back, t)


def test_file_reads_back_identical_weights_and_reports_its_real_size(tmp_path):
    data = load_dataset("digits")
    shared = deep_compress(_pruned_mlp(), data.train, TrainConfig(steps=10, lr=1e-3), bits=5)
    sizes = {}
    for coding in ("huffman", "fixed"):
        for share in (True, False):
            path = tmp_path / f"{coding}-{share}.pkdc"
            result = write_deep_compressed(shared, path, coding=coding, share=share, extra={"bits": 5})
            assert result["bytes"] == path.stat().st_size
            state = read_deep_compressed(path)
            assert state.keys() == shared.state_dict().keys()
            assert all(torch.equal(state[k], v) for k, v in shared.state_dict().items())
            sizes[coding, share] = result["bytes"]
    assert sizes["huffman", True] < sizes["fixed", True] < sizes["fixed", False]
    assert sizes["huffman", True] < sizes["huffman", False]
    fresh = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    fresh.load_state_dict(read_deep_compressed(tmp_path / "huffman-True.pkdc"))
    x = data.test.tensors[0][:8]
    assert torch.equal(fresh(x), shared(x))


def test_file_errors(tmp_path):
    model = _pruned_mlp()
    with pytest.raises(PrunekitError, match="masks"):
        write_deep_compressed(model, tmp_path / "a.pkdc")
    path = tmp_path / "b.pkdc"
    write_deep_compressed(pk.remove_masks(model), path)
    with pytest.raises(PrunekitError, match="exists"):
        write_deep_compressed(model, path)
    with pytest.raises(PrunekitError, match="coding"):
        write_deep_compressed(model, tmp_path / "c.pkdc", coding="zip")
    (tmp_path / "junk.pkdc").write_bytes(b"not a model")
    with pytest.raises(PrunekitError, match="not a prunekit"):
        read_deep_compressed(tmp_path / "junk.pkdc")
    truncated = tmp_path / "short.pkdc"
    truncated.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(PrunekitError):
        read_deep_compressed(truncated)
    with pytest.raises(PrunekitError, match="does not exist"):
        read_deep_compressed(tmp_path / "missing.pkdc")
