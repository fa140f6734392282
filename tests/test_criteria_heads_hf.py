"""Head criteria on HuggingFace BERT attention against direct computations: entropy by a loop over
the maps HF itself returns, the gate gradient by finite differences of the output projection's
columns, ablation by zeroing those columns; every criterion through Pruner with dict batches."""

import copy
import math

import pytest
import torch

import prunekit as pk
from prunekit.criteria import HeadAblation, HeadImportance, HeadTaylor, Taylor
from prunekit.criteria.attention_sites import eager_attention, find_attention_sites
from prunekit.criteria.heads import capture_site_statistics
from prunekit.errors import PrunekitError
from prunekit.masks import resolve_parameters

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

HEADS, D, LAYERS = 4, 4, 2


def _bert(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=40, hidden_size=HEADS * D, num_hidden_layers=LAYERS,
                                     num_attention_heads=HEADS, intermediate_size=32, max_position_embeddings=16)
    return transformers.BertModel(config).eval().to(dtype)


def _batches(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1, 40, (3, 7), generator=g)
        mask = torch.ones(3, 7, dtype=torch.long)
        mask[1, 5:] = 0  # padding
        mask[2, 3:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def _pooled(model, batch):
    h = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
    return ((h * m).sum(1) / m.sum(1)).double()


def _scale_head(model, site, h, factor):
    """The same model with head h's output scaled by `factor` (its output-projection columns)."""
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        scaled.get_submodule(site.output_projection).weight[:, h * D:(h + 1) * D] *= factor
    return scaled


def _head_params(model):
    return resolve_parameters(model, [n for s in find_attention_sites(model) for n in s.head_params])


def test_sites_are_the_graphs_head_groups():
    model = _bert()
    sites = find_attention_sites(model)
    assert [s.name for s in sites] == [f"encoder.layer.{i}.attention" for i in range(LAYERS)]
    graph = pk.build_graph(model, _batches(1)[0])
    groups = [g for g in graph.prunable() if g.kind == "head"]
    assert len(groups) == LAYERS
    for site, group in zip(sites, groups):
        assert site.num_heads == group.size == HEADS and site.head_dim == D
        assert {s.name: s.dim for s in group.slices if s.kind == "param"} == site.head_params


def test_vit_projection_style_sites_are_its_head_groups_and_prune():
    torch.manual_seed(0)
    model = transformers.ViTModel(transformers.ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                                         intermediate_size=32, image_size=16, patch_size=8)).eval()
    x = {"pixel_values": torch.randn(2, 3, 16, 16)}
    sites = find_attention_sites(model)
    groups = [g for g in pk.build_graph(model, x).prunable() if g.kind == "head"]
    assert [s.num_heads for s in sites] == [g.size for g in groups] == [4, 4]
    for site, group in zip(sites, groups):
        assert {s.name: s.dim for s in group.slices if s.kind == "param"} == site.head_params
    for criterion in (HeadImportance("entropy"), HeadTaylor()):
        plan = pk.Pruner(model, x, granularity="head", criterion=criterion, sparsity=0.5, allocation="uniform",
                         batches=[x]).plan()
        assert [row["pruned"] for row in plan.layers] == [2, 2]


def test_entropy_and_similarity_from_maps_equal_a_loop_over_valid_rows():
    model = _bert()
    batches = _batches()
    site = find_attention_sites(model)[1]
    stats = capture_site_statistics(model, [site], [(b,) for b in batches])[site.name]
    assert model.config._attn_implementation != "eager" or True  # restored whatever it was
    entropy, rows, cos = torch.zeros(HEADS, dtype=torch.float64), 0, torch.zeros(HEADS, HEADS, dtype=torch.float64)
    examples = 0
    for b in batches:
        with eager_attention(model), torch.no_grad():
            maps = model(**b, output_attentions=True).attentions[1].double()
        for n in range(maps.shape[0]):
            valid = [i for i in range(maps.shape[2]) if b["attention_mask"][n, i]]
            for i in valid:
                rows += 1
                for h in range(HEADS):
                    entropy[h] -= sum(float(p) * math.log(float(p)) for p in maps[n, h, i] if p > 0)
            flat = maps[n][:, valid].reshape(HEADS, -1)
            unit = flat / flat.norm(dim=1, keepdim=True)
            cos += unit @ unit.T
            examples += 1
    torch.testing.assert_close(stats["entropy"], entropy / rows)
    torch.testing.assert_close(stats["similarity"], cos / examples)


def test_eager_switch_and_hooks_are_undone():
    model = _bert()
    before = model.config._attn_implementation
    HeadImportance("entropy").scores(model, _head_params(model), batches=_batches(1))
    HeadTaylor().scores(model, _head_params(model), batches=_batches(1))
    assert model.config._attn_implementation == before
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_taylor_with_a_loss_is_the_mean_absolute_gate_gradient_by_finite_differences():
    model = _bert(dtype=torch.float64)
    batches = _batches()
    targets = [torch.randn(3, HEADS * D, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
               for i in range(2)]

    def loss_fn(outputs, y):
        return ((outputs.last_hidden_state.mean(1) - y) ** 2).sum()

    params = _head_params(model)
    scores = HeadTaylor().scores(model, params, batches=list(zip(batches, targets)), loss_fn=loss_fn)
    eps = 1e-3
    for site in find_attention_sites(model):
        for h in range(HEADS):
            total = 0.0
            for b, y in zip(batches, targets):
                with torch.no_grad():
                    up = loss_fn(_scale_head(model, site, h, 1 + eps)(**b), y)
                    down = loss_fn(_scale_head(model, site, h, 1 - eps)(**b), y)
                total += abs(float(up - down) / (2 * eps))
            got = scores[site.output_projection + ".weight"][0, h * D]
            assert float(got) == pytest.approx(total / 2, rel=1e-5)
            # broadcast over the head's query rows too
            q = next(n for n in site.head_params if n.endswith("query.weight"))
            assert torch.all(scores[q][h * D:(h + 1) * D] == got)


def test_taylor_without_a_loss_estimates_the_output_jacobian_norm():
    model = _bert(dtype=torch.float64)
    batches = _batches()
    scores = HeadTaylor(output="mean_pooled", probes=200).scores(model, _head_params(model), batches=batches)
    eps = 1e-3
    with torch.no_grad():
        norm = sum(float((_pooled(model, b) ** 2).sum()) for b in batches)
    for site in find_attention_sites(model):
        exact = []
        for h in range(HEADS):
            with torch.no_grad():
                up, down = _scale_head(model, site, h, 1 + eps), _scale_head(model, site, h, 1 - eps)
                exact.append(sum(float((((_pooled(up, b) - _pooled(down, b)) / (2 * eps)) ** 2).sum())
                                 for b in batches) / norm)
        got = scores[site.output_projection + ".weight"][0, ::D].double()
        torch.testing.assert_close(got, torch.tensor(exact, dtype=torch.float64), rtol=0.25, atol=0)


def test_ablation_equals_removing_each_head_by_hand():
    model = _bert()
    batches = _batches()
    scores = HeadAblation(output="mean_pooled").scores(model, _head_params(model), batches=batches)
    with torch.no_grad():
        dense = [_pooled(model, b) for b in batches]
        norm = sum(float((y ** 2).sum()) for y in dense)
        for site in find_attention_sites(model):
            for h in range(HEADS):
                removed = _scale_head(model, site, h, 0.0)
                change = sum(float(((_pooled(removed, b) - y) ** 2).sum()) for b, y in zip(batches, dense))
                got = scores[site.output_projection + ".weight"][0, h * D]
                assert float(got) == pytest.approx(change / norm, rel=1e-4)


def test_elementwise_taylor_takes_dict_batches():
    model = _bert()
    batches = _batches(1)
    target = torch.randn(3, HEADS * D, generator=torch.Generator().manual_seed(5))

    def loss_fn(outputs, y):
        return ((outputs.last_hidden_state.mean(1) - y) ** 2).mean()

    name = "encoder.layer.0.attention.self.value.weight"
    scores = Taylor().scores(model, resolve_parameters(model, [name]), batches=[(batches[0], target)],
                             loss_fn=loss_fn)
    weight = model.get_parameter(name)
    model.zero_grad()
    loss_fn(model(**batches[0]), target).backward()
    torch.testing.assert_close(scores[name], (weight.grad * weight).abs().detach())
    model.zero_grad()
    wrapped = Taylor().scores(model, resolve_parameters(model, [name]),
                              batches=[(pk.ExampleInputs(**batches[0]), target)], loss_fn=loss_fn)
    torch.testing.assert_close(wrapped[name], scores[name])


@pytest.mark.parametrize("criterion", ["heads", "head_taylor", "head_ablation", "magnitude", "random"])
def test_every_head_criterion_prunes_through_pruner_and_compacts_exactly(criterion):
    model = _bert()
    batches = _batches()
    pruner = pk.Pruner(model, batches[0], granularity="head", criterion=criterion, sparsity=0.5,
                       allocation="uniform", batches=batches)
    plan = pruner.step()
    assert [row["pruned"] for row in plan.layers] == [HEADS // 2] * LAYERS
    with torch.no_grad():
        masked = model(**batches[1]).last_hidden_state
        small = pk.compact(model, batches[0])[0]
        torch.testing.assert_close(small(**batches[1]).last_hidden_state, masked, rtol=1e-5, atol=1e-5)
    assert find_attention_sites(small)[0].num_heads == HEADS // 2


@pytest.mark.parametrize("criterion", ["snip", "taylor", "grasp", "obd", "regression", "apoz"])
def test_every_data_criterion_takes_dict_batches_through_pruner(criterion):
    model = _bert()
    batches = _batches()
    targets = [torch.randn(3, HEADS * D, generator=torch.Generator().manual_seed(i)) for i in range(2)]

    def loss_fn(outputs, y):
        return ((outputs.last_hidden_state.mean(1) - y) ** 2).mean()

    granularity = "channel" if criterion in ("regression", "apoz") else "head"
    plan = pk.Pruner(model, batches[0], granularity=granularity, criterion=criterion, sparsity=0.25,
                     allocation="uniform", batches=list(zip(batches, targets)), loss_fn=loss_fn).step()
    assert plan.pruned_units > 0


def test_pruner_removes_the_lowest_ablation_heads():
    model = _bert()
    batches = _batches()
    crit = HeadAblation(output="mean_pooled")
    sites = find_attention_sites(model)
    per_head = crit.head_scores(model, sites, [(b,) for b in batches])
    pk.Pruner(model, batches[0], granularity="head", criterion=crit, sparsity=0.5, allocation="uniform",
              batches=batches).step()
    masks = pk.get_masks(model)
    for site in sites:
        kept = masks[site.output_projection + ".weight"][0, ::D]
        assert set((~kept).nonzero().flatten().tolist()) == set(torch.argsort(per_head[site.name])[:2].tolist())


def test_pruner_removes_the_highest_entropy_heads():
    """Entropy scores are positive (exp(−E)), so the ℓ2 aggregation over a head's slices keeps their order."""
    model = _bert()
    batches = _batches()
    sites = find_attention_sites(model)
    stats = capture_site_statistics(model, sites, [(b,) for b in batches])
    pk.Pruner(model, batches[0], granularity="head", criterion=HeadImportance("entropy"), sparsity=0.5,
              allocation="uniform", batches=batches).step()
    masks = pk.get_masks(model)
    for site in sites:
        kept = masks[site.output_projection + ".weight"][0, ::D]
        expected = torch.argsort(stats[site.name]["entropy"], descending=True)[:2]
        assert set((~kept).nonzero().flatten().tolist()) == set(expected.tolist())


def test_models_and_parameters_the_head_criteria_cannot_score_are_refused():
    model = _bert()
    with pytest.raises(PrunekitError, match="not a per-head parameter"):
        HeadTaylor().scores(model, resolve_parameters(model, ["encoder.layer.0.intermediate.dense.weight"]),
                            batches=_batches(1))
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(PrunekitError, match="no attention block"):
        HeadAblation().scores(mlp, resolve_parameters(mlp, ["0.weight"]), batches=[torch.randn(2, 4)])
    with pytest.raises(PrunekitError, match="no attention block"):
        HeadImportance().scores(mlp, resolve_parameters(mlp, ["0.weight"]), batches=[torch.randn(2, 4)])
    with pytest.raises(PrunekitError, match="output must be"):
        HeadAblation(output="cls")
    with pytest.raises(PrunekitError, match="probes"):
        HeadTaylor(probes=0)
