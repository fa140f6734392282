"""Attention-head entropy and similarity against direct computation on fixed maps."""

import math

import pytest
import torch
from torch import nn

from prunekit.criteria import HeadImportance
from prunekit.criteria.heads import (attention_parameters, capture_statistics, head_entropy, head_similarity,
                                     redundancy_scores)
from prunekit.errors import PrunekitError
from prunekit.masks import resolve_parameters


pytestmark = pytest.mark.usefixtures("one_thread")


def _fixed_maps():
    g = torch.Generator().manual_seed(0)
    maps = torch.softmax(torch.randn(3, 4, 5, 6, generator=g) * 2, dim=-1)
    maps[:, 3] = 0.0
    maps[:, 3, :, :2] = 0.5  # a head with exactly two keys: entropy log 2, zeros elsewhere
    return maps


def test_entropy_and_similarity_equal_direct_loops():
    maps = _fixed_maps()
    n, heads, queries, keys = maps.shape
    ent = head_entropy(maps)
    sim = head_similarity(maps)
    for h in range(heads):
        total = 0.0
        for i in range(n):
            for q in range(queries):
                total -= sum(float(p) * math.log(float(p)) for p in maps[i, h, q] if p > 0)
        assert float(ent[h]) == pytest.approx(total / (n * queries), rel=1e-10)
        for k in range(heads):
            cos = 0.0
            for i in range(n):
                a, b = maps[i, h].reshape(-1).double(), maps[i, k].reshape(-1).double()
                cos += float(a @ b) / (float(a.norm()) * float(b.norm()))
            assert float(sim[h, k]) == pytest.approx(cos / n, rel=1e-10)
    assert float(ent[3]) == pytest.approx(math.log(2))


def test_a_duplicate_specialist_scores_lowest_and_its_twin_survives():
    g = torch.Generator().manual_seed(1)
    maps = torch.softmax(torch.randn(2, 4, 5, 5, generator=g) * 4, dim=-1)
    maps[:, 2] = maps[:, 0]  # head 2 duplicates head 0's specialty
    maps[:, 3] = 1.0 / 5  # a uniform generalist
    sim, ent = head_similarity(maps), head_entropy(maps)
    scores = redundancy_scores(sim, ent)
    assert int(scores.argmin()) == 2  # the later of two identical heads goes first
    assert sorted(scores.tolist()) == [0.25, 0.5, 0.75, 1.0] and scores[0] > scores[2]
    crit = HeadImportance("similarity")
    both = crit.head_scores({"similarity": sim, "entropy": ent})
    assert both[0] == pytest.approx(0.0, abs=1e-12) and both[2] == pytest.approx(0.0, abs=1e-12)
    assert int(HeadImportance("entropy").head_scores({"similarity": sim, "entropy": ent}).argmin()) == 3


def _encoder():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True, dropout=0.0)
    return nn.Sequential(layer)


def test_hooks_capture_the_maps_mha_returns_and_leave_no_trace():
    model = _encoder()
    model.train()
    mha = model[0].self_attn
    x = torch.randn(3, 4, 8)
    with torch.no_grad():
        model.eval()
        _, maps = mha(x, x, x, need_weights=True, average_attn_weights=False)
        model.train()
        reference = model(x)
    stats = capture_statistics(model, [(x, None)])["0.self_attn"]
    torch.testing.assert_close(stats["entropy"], head_entropy(maps))
    torch.testing.assert_close(stats["similarity"], head_similarity(maps))
    assert model.training and not mha._forward_hooks and not mha._forward_pre_hooks
    # the caller (TransformerEncoderLayer asks need_weights=False) still gets what it asked for
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference)


def test_head_scores_are_broadcast_over_each_heads_slices():
    model = _encoder()
    names = attention_parameters(model)
    assert names == ["0.self_attn.in_proj_weight", "0.self_attn.in_proj_bias", "0.self_attn.out_proj.weight"]
    params = resolve_parameters(model, names)
    x = torch.randn(2, 5, 8)
    scores = HeadImportance("entropy").scores(model, params, batches=[x])
    with torch.no_grad():
        model.eval()
        _, maps = model[0].self_attn(x, x, x, need_weights=True, average_attn_weights=False)
        model.train()
    per_head = torch.exp(-head_entropy(maps)).float()
    d = 4
    for block in range(3):  # q, k, v
        for h in range(2):
            rows = slice(block * 8 + h * d, block * 8 + (h + 1) * d)
            assert torch.allclose(scores["0.self_attn.in_proj_weight"][rows], per_head[h].expand(d, 8))
            assert torch.allclose(scores["0.self_attn.in_proj_bias"][rows], per_head[h].expand(d))
    for h in range(2):
        cols = slice(h * d, (h + 1) * d)
        assert torch.allclose(scores["0.self_attn.out_proj.weight"][:, cols], per_head[h].expand(8, d))


def test_non_head_parameters_and_models_without_attention_are_refused():
    model = _encoder()
    with pytest.raises(PrunekitError, match="not an attention-head parameter"):
        HeadImportance().scores(model, resolve_parameters(model, ["0.linear1.weight"]), batches=[torch.randn(1, 2, 8)])
    with pytest.raises(PrunekitError, match="shared by all heads"):
        HeadImportance().scores(model, resolve_parameters(model, ["0.self_attn.out_proj.bias"]),
                                batches=[torch.randn(1, 2, 8)])
    with pytest.raises(PrunekitError, match="calibration data"):
        HeadImportance().scores(model, resolve_parameters(model, attention_parameters(model)))
    with pytest.raises(PrunekitError, match="kind"):
        HeadImportance("bogus")
