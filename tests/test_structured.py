"""Structured scores, masks and selection over coupled groups."""

import copy

import pytest
import torch

import prunekit as pk
from prunekit.graph import build_graph
from prunekit.compaction import removable_units
from prunekit.prune import prune_structured
from prunekit.structured import group_masks, group_scores, unit_values

from models_zoo import mobilenet_v2, resnet_bottleneck


def lenet5():
    torch.manual_seed(0)
    return pk.models.build_model("lenet5"), torch.randn(2, 1, 28, 28)


def test_l2_group_score_is_the_norm_of_everything_the_unit_owns():
    model, x = lenet5()
    graph = build_graph(model, x)
    weights = {n: p.detach().abs() for n, p in pk.named_parameters(model).items()}
    scores = group_scores(model, graph, weights, how="l2")
    w3, w7 = model[3].weight.detach(), model[7].weight.detach()
    for c in range(16):  # conv2 filter c, its bias, and the 25 Linear columns its flattened map feeds
        owned = torch.cat([w3[c].flatten(), model[3].bias.detach()[c:c + 1], w7[:, c * 25:(c + 1) * 25].flatten()])
        assert torch.isclose(scores["3:out"][c], owned.norm(), rtol=1e-6)
    l1 = group_scores(model, graph, weights, how="l1")["7:out"]
    assert torch.allclose(l1, model[7].weight.detach().abs().sum(1) + model[7].bias.detach().abs()
                          + model[9].weight.detach().abs().sum(0))


def test_group_masks_cover_every_coupled_parameter():
    model, x = resnet_bottleneck()
    graph = build_graph(model, x)
    group = next(g for g in graph.groups if ("layers.0.conv3.weight", 0) in {(s.name, s.dim) for s in g.slices})
    keep = torch.ones(group.size, dtype=torch.bool)
    keep[[3, 7]] = False
    masks = group_masks(graph, {group.name: keep})
    assert not masks["layers.0.conv3.weight"][3].any() and masks["layers.0.conv3.weight"][4].all()
    assert not masks["layers.0.bn3.bias"][7] and not masks["layers.0.downsample.1.weight"][3]
    assert not masks["layers.1.conv1.weight"][:, 3].any() and not masks["layers.2.conv1.weight"][:, 7].any()
    assert "layers.0.bn3.running_mean" not in masks  # buffers are not masked; compaction drops them
    removed = sum(int((~m).sum()) for m in masks.values())
    assert removed == sum(s.index[~keep].numel() * (masks[s.name].numel() // masks[s.name].shape[s.dim])
                          for s in group.slices if s.kind == "param")


def test_local_pruning_removes_the_amount_of_every_group_and_the_lowest_units():
    model, x = mobilenet_v2()
    graph = build_graph(model, x)
    element = {n: p.detach().abs() for n, p in pk.named_parameters(model).items() if p.dim() >= 2}
    scores = group_scores(model, graph, element)
    prune_structured(model, 0.5, x, graph=graph)
    masks = pk.get_masks(model)
    for group in graph.prunable():
        s = next(s for s in group.slices if s.kind == "param")
        alive = unit_values(masks[s.name], s.dim, s.index).any(1)
        assert int((~alive).sum()) == round(0.5 * group.size)
        worst_kept = scores[group.name][alive].min()
        assert bool((scores[group.name][~alive] <= worst_kept).all())


def test_round_to_keeps_multiples():
    model, x = lenet5()
    graph = build_graph(model, x)
    plan = pk.Pruner(model, x, granularity="group", allocation="uniform", sparsity=0.6, round_to=8, graph=graph).plan()
    for row in plan.layers:
        name, size = row["layer"], row["units"]
        kept = size - row["pruned"]
        assert kept % 8 == 0 or size <= 8, (name, kept)
        assert kept >= size - round(0.6 * size)  # rounding keeps more, never less


def test_global_pruning_removes_exactly_the_amount_overall():
    model, x = lenet5()
    graph = build_graph(model, x)
    prune_structured(model, 0.3, x, scope="global", graph=graph)
    removed = sum(int((~k).sum()) for k in removable_units(model, graph).values())
    total = sum(g.size for g in graph.prunable())
    assert removed == round(0.3 * total)


def test_pruning_again_only_removes_more():
    model, x = lenet5()
    first = prune_structured(model, 0.3, x)
    second = prune_structured(model, 0.6, x)
    assert second.is_subset_of(first) and second.kept() < first.kept()


def test_bad_requests_leave_the_model_untouched():
    model, x = lenet5()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(pk.AmountError):
        prune_structured(model, 1.5, x)
    with pytest.raises(pk.GraphError, match="output"):
        prune_structured(model, {"11:out": 0.5}, x)
    with pytest.raises(pk.GraphError, match="Did you mean"):
        prune_structured(model, {"3:outt": 0.5}, x)
    with pytest.raises(pk.PrunekitError):
        prune_structured(model, 0.5, x, scope="everywhere")
    assert not pk.get_masks(model)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_per_group_amounts():
    model, x = lenet5()
    masks = prune_structured(model, {"3:out": 4}, x)
    assert int((~masks["3.weight"].flatten(1).any(1)).sum()) == 4
    assert "0.weight" not in masks


@pytest.mark.parametrize("how", ["l1", "l2", "lp", "mean", "sum", "max"])
def test_every_aggregation_matches_the_granularity_formula(how):
    from prunekit.granularity import aggregate

    model, x = lenet5()
    graph = build_graph(model, x)
    element = {n: torch.randn_like(p) for n, p in pk.named_parameters(model).items()}
    scores = group_scores(model, graph, element, how=how, p=3.0)
    for group in graph.prunable():
        values = torch.cat([unit_values(element[s.name], s.dim, s.index) for s in group.slices
                            if s.kind == "param"], 1)
        ids = torch.arange(group.size).unsqueeze(1).expand(values.shape)
        assert torch.allclose(scores[group.name].double(), aggregate(values, ids, group.size, how, 3.0),
                              rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("how", ["l1", "l2", "lp", "mean", "sum", "max"])
def test_magnitude_group_scores_aggregate_the_absolute_weights(how):
    """Norms read the signed weights (no |w| pass); every aggregation must still see |w|."""
    from prunekit.structured import score_groups

    model, x = lenet5()
    graph = build_graph(model, x)
    # structured scoring reads the weights, not the biases, of a group that has weights
    absolute = {n: p.detach().abs() for n, p in pk.named_parameters(model).items() if p.dim() >= 2}
    expected = group_scores(model, graph, absolute, how=how, p=3.0)
    scores = score_groups(model, graph, graph.prunable(), "magnitude", how=how, p=3.0)
    assert scores.keys() == expected.keys()
    for name in scores:
        assert torch.allclose(scores[name], expected[name], rtol=1e-6), name


def test_per_channel_criterion_reads_each_units_own_slice():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 6, 3), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(6 * 4 * 4, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.05]))
    x = torch.randn(2, 3, 8, 8)
    masks = prune_structured(model, {"0:out": 3}, x, criterion="bn_scale", batches=[(x, None)])
    removed = (~masks["0.weight"].flatten(1).any(1)).nonzero().flatten().tolist()
    assert removed == [1, 3, 7]  # the three smallest |γ| of the BatchNorm after conv 0
    assert not masks["3.weight"][:, [1, 3, 7]].any()  # and the next conv's inputs with them
    # the consumer of conv 3 is a Linear without a BatchNorm: only conv 3's own rows are scored
    masks = prune_structured(model, {"3:out": 2}, x, criterion="bn_scale", batches=[(x, None)])
    gamma = model[4].weight.detach().abs()
    gone = (~masks["3.weight"].flatten(1).any(1)).nonzero().flatten()
    assert set(gone.tolist()) == set(torch.argsort(gamma)[:2].tolist())


def _tie_gammas(model, graph, generator):
    """Give every unit one random |γ|, shared by all BatchNorms of its group: {group: γ per unit}."""
    params = pk.named_parameters(model)
    gammas = {}
    with torch.no_grad():
        for group in graph.prunable():
            norm_slices = [s for s in group.slices if s.kind == "param" and s.name.endswith(".weight")
                           and isinstance(model.get_submodule(s.name.rsplit(".", 1)[0]), torch.nn.BatchNorm2d)]
            if not norm_slices:
                continue
            g = torch.randperm(group.size, generator=generator).float().add(1.0) / group.size
            for s in norm_slices:
                for j in range(s.index.shape[1]):
                    params[s.name][s.index[:, j]] = g * torch.where(torch.rand(group.size, generator=generator) < 0.5,
                                                                    -1.0, 1.0)
            gammas[group.name] = g
    return gammas


@pytest.mark.parametrize("build,how", [("resnet8", "max"), ("mobilenetv2", "l1"), ("bottleneck", "max"),
                                       ("bottleneck", "l2")])
def test_bn_scale_removes_exactly_the_smallest_gammas(build, how):
    """Brute force: with bn_scale every group loses exactly its units of smallest |γ|, whatever the
    consumer columns (which carry the consumer's own γ) and however many BatchNorms share the unit."""
    torch.manual_seed(0)
    from prunekit import cnn_models
    model, x = {"resnet8": lambda: (cnn_models.resnet8(width=8), torch.randn(2, 3, 16, 16)),
                "mobilenetv2": lambda: (cnn_models.mobilenetv2(10, width=0.25, stem_stride=1),
                                        torch.randn(2, 3, 16, 16)),
                "bottleneck": resnet_bottleneck}[build]()
    graph = build_graph(model, x)
    gammas = _tie_gammas(model, graph, torch.Generator().manual_seed(1))
    assert len(gammas) == len(graph.prunable())  # every prunable group of these models has a BatchNorm
    masks = prune_structured(model, 0.5, x, criterion="bn_scale", how=how, graph=graph)
    for group in graph.prunable():
        rows = next(s for s in group.slices if s.kind == "param" and s.name in masks)
        alive = masks[rows.name].movedim(rows.dim, 0).flatten(1).any(1)[rows.index[:, 0]]
        removed = set((~alive).nonzero().flatten().tolist())
        assert removed and removed == set(torch.argsort(gammas[group.name])[:len(removed)].tolist()), group.name
        assert len(removed) == group.size - max(1, group.size - int(0.5 * group.size))


def test_input_channel_criterion_reads_the_consumer_columns():
    """unit_dim=1: a unit's score is read from the columns of its consumers only, never from the
    producer's own columns (which carry the scores of the producer's *input* channels)."""
    model, x = lenet5()
    graph = build_graph(model, x)
    gen = torch.Generator().manual_seed(3)
    columns = {n: torch.rand(p.shape[1], generator=gen) for n, p in pk.named_parameters(model).items() if p.dim() >= 2}
    element = {n: v.reshape([1, -1] + [1] * (pk.named_parameters(model)[n].dim() - 2))
               .expand_as(pk.named_parameters(model)[n]).clone() for n, v in columns.items()}
    scores = group_scores(model, graph, element, how="max", unit_dim=1)
    assert torch.equal(scores["0:out"], columns["3.weight"])  # conv 3's input channels
    assert torch.equal(scores["3:out"], columns["7.weight"].reshape(16, 25).amax(1))  # 25 flattened positions each
    assert torch.equal(scores["7:out"], columns["9.weight"])


def test_regression_criterion_prunes_by_the_consumer_lasso_path():
    model, x = lenet5()
    batches = [(torch.randn(16, 1, 28, 28), None)]
    masks = prune_structured(model, {"0:out": 3}, x, criterion="regression", batches=batches)
    from prunekit.criteria import Regression
    entry = Regression().scores(model, {"3.weight": model[3].weight}, batches=batches)["3.weight"][0, :, 0, 0]
    removed = (~masks["0.weight"].flatten(1).any(1)).nonzero().flatten()
    kept = masks["0.weight"].flatten(1).any(1).nonzero().flatten()
    assert len(removed) == 3 and entry[removed].max() <= entry[kept].min()


def test_per_channel_scores_without_a_slice_along_their_dimension_are_refused():
    model, x = lenet5()
    graph = build_graph(model, x)
    rows = {"3.weight": torch.rand_like(model[3].weight)}  # group 0:out owns only a dim-1 slice of it
    with pytest.raises(pk.PrunekitError, match="no tensor slice along dimension 0"):
        group_scores(model, graph, rows, unit_dim=0, groups=[graph["0:out"]])


def test_per_group_amounts_name_real_groups():
    """A misspelt group is named with a suggestion; an empty mapping says what to give."""
    model, x = lenet5()
    group = build_graph(model, x).prunable()[0].name
    with pytest.raises(pk.PrunekitError, match="No group named 'cnv1:out'"):
        prune_structured(model, {"cnv1:out": 0.5}, x)
    with pytest.raises(pk.PrunekitError, match="per-layer amounts are empty"):
        prune_structured(model, {}, x)
    assert not pk.get_masks(model)  # nothing installed by the refused calls
    masks = prune_structured(model, {group: 0.5}, x)
    assert masks.sparsity() > 0


def test_powered_sums_along_any_dim_match_a_plain_loop():
    from prunekit.structured import _powered_sums

    torch.manual_seed(0)
    e = torch.randn(3, 4, 2, 5)
    for dim in range(4):
        for power in (1.0, 2.0, 3.0):
            loop = torch.stack([(e.select(dim, i).abs() ** power).sum() for i in range(e.shape[dim])])
            assert torch.allclose(_powered_sums(e, dim, power), loop, rtol=1e-5)
    assert torch.allclose(_powered_sums(e[0, 0, 0], 0, 2.0), e[0, 0, 0] ** 2)
