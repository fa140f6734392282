import copy
import itertools

import networkx as nx
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.applications import (attribution_units, capability_cut, class_accuracy, covering, min_unit_cut,
                                   random_units, remove_units, search_cut, smallest_attribution, unit_masks)
from prunekit.applications.relevance import class_relevance, keep_importance, unit_relevance
from prunekit.masks import apply_masks, get_masks

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- the max-flow / min-cut core ------------------------------------------------------------

def test_diamond_whose_min_cut_is_known():
    #   s → a → c → t      cutting {a, b} costs 1 + 2 = 3, cutting {c} costs 5: {a, b} wins;
    #   s → b → c          with c = 2.5 the single unit c wins.
    edges = [("a", "c"), ("b", "c")]
    cut = min_unit_cut({"a": 1.0, "b": 2.0, "c": 5.0}, edges, sources=["a", "b"], sinks=["c"])
    assert cut.units == {"a", "b"} and cut.capacity == cut.max_flow == 3.0
    cut = min_unit_cut({"a": 1.0, "b": 2.0, "c": 2.5}, edges, sources=["a", "b"], sinks=["c"])
    assert cut.units == {"c"} and cut.capacity == cut.max_flow == 2.5


def _separates(units, edges, sources, sinks, removed):
    graph = nx.DiGraph()
    graph.add_nodes_from(units)
    graph.add_edges_from(edges)
    graph.add_edges_from(("s", u) for u in sources)
    graph.add_edges_from((u, "t") for u in sinks)
    graph.remove_nodes_from(removed)
    return not nx.has_path(graph, "s", "t")


@pytest.mark.parametrize("seed", range(6))
def test_min_cut_equals_brute_force_and_max_flow(seed):
    g = torch.Generator().manual_seed(seed)
    layers = [[(l, i) for i in range(3)] for l in range(3)]
    units = [u for layer in layers for u in layer]
    capacity = {u: float(torch.randint(1, 10, (1,), generator=g)) for u in units}
    edges = [(u, v) for a, b in zip(layers, layers[1:]) for u in a for v in b if torch.rand(1, generator=g) < 0.5]
    sources, sinks = layers[0], layers[-1]
    cut = min_unit_cut(capacity, edges, sources, sinks)
    best = min(sum(capacity[u] for u in subset) for r in range(len(units) + 1)
               for subset in itertools.combinations(units, r) if _separates(units, edges, sources, sinks, subset))
    assert cut.capacity == pytest.approx(best) and cut.max_flow == pytest.approx(best)
    assert _separates(units, edges, sources, sinks, cut.units)


def test_priced_sinks_on_a_diamond_whose_min_cut_is_known():
    #   s → a → c → t (arc c → t priced p): leaving c in place costs p, cutting {a, b} 3, {c} 5.
    edges = [("a", "c"), ("b", "c")]
    capacity = {"a": 1.0, "b": 2.0, "c": 5.0}
    cheap = min_unit_cut(capacity, edges, sources=["a", "b"], sinks={"c": 2.0})
    assert cheap.units == frozenset() and cheap.paid == {"c"} and cheap.capacity == cheap.max_flow == 2.0
    dear = min_unit_cut(capacity, edges, sources=["a", "b"], sinks={"c": 10.0})
    assert dear.units == {"a", "b"} and dear.paid == frozenset() and dear.capacity == dear.max_flow == 3.0


def _reached_sinks(units, edges, sources, removed):
    graph = nx.DiGraph()
    graph.add_nodes_from(units)
    graph.add_edges_from(edges)
    graph.add_edges_from(("s", u) for u in sources)
    graph.remove_nodes_from(removed)
    return set(nx.descendants(graph, "s"))


@pytest.mark.parametrize("seed", range(4))
def test_priced_min_cut_equals_brute_force_and_max_flow(seed):
    g = torch.Generator().manual_seed(100 + seed)
    layers = [[(l, i) for i in range(3)] for l in range(3)]
    units = [u for layer in layers for u in layer]
    capacity = {u: float(torch.randint(1, 10, (1,), generator=g)) for u in units}
    edges = [(u, v) for a, b in zip(layers, layers[1:]) for u in a for v in b if torch.rand(1, generator=g) < 0.5]
    prices = {u: float(torch.randint(0, 12, (1,), generator=g)) for u in layers[-1]}
    cut = min_unit_cut(capacity, edges, layers[0], prices)
    best = min(sum(capacity[u] for u in subset) + sum(p for u, p in prices.items()
                                                      if u in _reached_sinks(units, edges, layers[0], subset))
               for r in range(len(units) + 1) for subset in itertools.combinations(units, r))
    assert cut.capacity == pytest.approx(best) and cut.max_flow == pytest.approx(best)
    assert cut.paid == _reached_sinks(units, edges, layers[0], cut.units) & set(prices)


def test_min_cut_rejects_bad_costs_and_unknown_units():
    with pytest.raises(pk.PrunekitError, match="finite and ≥ 0"):
        min_unit_cut({"a": -1.0}, [], ["a"], ["a"])
    with pytest.raises(pk.PrunekitError, match="no capacity"):
        min_unit_cut({"a": 1.0}, [("a", "b")], ["a"], ["a"])
    with pytest.raises(pk.PrunekitError, match="Sink prices"):
        min_unit_cut({"a": 1.0}, [], ["a"], {"a": float("inf")})


def test_covering_takes_the_largest_positive_entries_up_to_the_coverage():
    values = torch.tensor([0.5, -3.0, 0.3, 0.2, 0.0])
    assert covering(values, 0.5).tolist() == [True, False, False, False, False]
    assert covering(values, 0.6).tolist() == [True, False, True, False, False]
    assert covering(values, 1.0).tolist() == [True, False, True, True, False]
    assert not covering(torch.tensor([-1.0, 0.0]), 0.9).any()


# ---- relevance and keep importance against hand-written formulas ------------------------------

def _tiny_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def _hand_forward(model, x):
    w1, b1, w2, b2, w3, b3 = (p.detach() for p in model.parameters())
    h1 = x @ w1.T + b1
    a1 = h1.clamp(min=0)
    h2 = a1 @ w2.T + b2
    a2 = h2.clamp(min=0)
    return (w1, w2, w3), (h1, a1, h2, a2), a2 @ w3.T + b3


def test_class_relevance_matches_the_chain_rule_by_hand():
    model, x, k = _tiny_mlp(), torch.randn(7, 4), 2
    (w1, w2, w3), (h1, a1, h2, a2), _ = _hand_forward(model, x)
    g3 = torch.zeros(7, 3)
    g3[:, k] = 1
    g2 = (g3 @ w3) * (h2 > 0)           # ∂z_k/∂h2
    g1 = (g2 @ w2) * (h1 > 0)           # ∂z_k/∂h1
    expected = {"1": torch.einsum("bi,ij,bj->ij", g1, w1, x) / 7, "3": torch.einsum("bi,ij,bj->ij", g2, w2, a1) / 7,
                "5": torch.einsum("bi,ij,bj->ij", g3, w3, a2) / 7}
    got = class_relevance(model, x, k)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name])
    units = unit_relevance(model, got)
    torch.testing.assert_close(units["3"], (a2 * w3[k]).mean(0))  # a_i · ∂z_k/∂a_i for the last hidden layer


def test_keep_importance_matches_the_chain_rule_by_hand():
    model, x, y = _tiny_mlp(1), torch.randn(9, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    (w1, w2, w3), (h1, a1, h2, a2), _ = _hand_forward(model, x)
    grad_a2 = w3[y]                                  # ∂z_y/∂a2, one row per example
    grad_a1 = ((grad_a2 * (h2 > 0)) @ w2)            # ∂z_y/∂a1
    got = keep_importance(model, x, y)
    torch.testing.assert_close(got["3"], (a2 * grad_a2).abs().mean(0))
    torch.testing.assert_close(got["1"], (a1 * grad_a1).abs().mean(0))


def test_signals_leave_parameter_gradients_and_modes_alone():
    model = _tiny_mlp()
    model.train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    class_relevance(model, torch.randn(5, 4), 0)
    assert all(bool((p.grad == 7.0).all()) for p in model.parameters())
    assert all(m.training for m in model.modules())


# ---- removal ---------------------------------------------------------------------------------

def test_removal_masks_exactly_the_units_and_outputs_follow_the_hand_forward():
    model, x = _tiny_mlp(), torch.randn(8, 4)
    units = {"1": [0, 4], "3": [2]}
    masks = unit_masks(model, units)
    assert set(masks) == {"3.weight", "5.weight"}
    assert torch.nonzero(~masks["3.weight"].all(0)).flatten().tolist() == [0, 4]  # columns of the next Linear
    assert torch.nonzero(~masks["5.weight"].all(0)).flatten().tolist() == [2]
    assert bool(masks["3.weight"][:, [1, 2, 3, 5]].all())
    (w1, w2, w3), _, _ = _hand_forward(model, x)
    b1, b2, b3 = model[1].bias.detach(), model[3].bias.detach(), model[5].bias.detach()
    a1 = (x @ w1.T + b1).clamp(min=0)
    a1[:, [0, 4]] = 0
    a2 = (a1 @ w2.T + b2).clamp(min=0)
    a2[:, 2] = 0
    expected = a2 @ w3.T + b3
    remove_units(model, units)
    torch.testing.assert_close(model(x), expected)


def test_removal_keeps_earlier_masks():
    model = _tiny_mlp()
    earlier = torch.ones(5, 6, dtype=torch.bool)
    earlier[0, 1] = False
    apply_masks(model, {"3.weight": earlier})
    remove_units(model, {"1": [3]})
    mask = get_masks(model)["3.weight"]
    assert not mask[0, 1] and not mask[:, 3].any() and int(mask.sum()) == 30 - 5 - 1


def test_removal_rejects_bad_units_and_leaves_the_model_alone():
    model = _tiny_mlp()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(pk.PrunekitError, match="outside"):
        remove_units(model, {"1": [6]})
    with pytest.raises(pk.PrunekitError, match="not a hidden Linear"):
        remove_units(model, {"5": [0]})
    assert not get_masks(model) and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_baseline_unit_choices():
    relevance = {"1": torch.tensor([0.1, 3.0, 0.2]), "3": torch.tensor([2.0, -1.0])}
    assert attribution_units(relevance, 2) == {"1": [1], "3": [0]}
    drawn = random_units({"1": 300, "3": 100}, 40, torch.Generator().manual_seed(0))
    assert sum(map(len, drawn.values())) == 40 and len(set(drawn["1"])) == len(drawn["1"])


def test_non_mlp_models_are_refused():
    with pytest.raises(pk.PrunekitError, match="nn.Sequential"):
        capability_cut(pk.models.mnist1d_cnn(), torch.randn(4, 40), torch.arange(4), 0)
    with pytest.raises(pk.PrunekitError, match="not supported"):
        capability_cut(nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)), torch.randn(4, 4),
                       torch.tensor([0, 1, 0, 1]), 0)
    with pytest.raises(pk.PrunekitError, match="class index"):
        capability_cut(_tiny_mlp(), torch.randn(4, 4), torch.tensor([0, 1, 2, 0]), 3)


# ---- end to end on a trained MLP ---------------------------------------------------------------

def test_cut_removes_the_class_on_a_trained_mlp(digits_mlp):
    model, data, _ = digits_mlp
    before = copy.deepcopy(model.state_dict())
    x, y = data.train.tensors
    cut = capability_cut(model, x, y, 3, coverage=0.9)
    assert cut.cut.capacity == pytest.approx(cut.cut.max_flow, rel=1e-9)
    assert cut.count == len(cut.cut.units) > 0
    best, acc = search_cut(model, x, y, 3, target=0.15)
    assert acc["removed"] <= 0.15
    baseline = class_accuracy(model, data.train, 3)
    # selective: the removed class loses far more than the classes that stay
    assert baseline["removed"] - acc["removed"] > 2 * (baseline["kept"] - acc["kept"])
    units, attr = smallest_attribution(model, best.relevance, x, y, 3, target=0.15)
    assert attr["removed"] <= 0.15
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()) and not get_masks(model)


def test_last_layer_cut_is_the_covering_set_of_the_class_evidence():
    model, k = _tiny_mlp(2), 1
    x, y = torch.randn(30, 4), torch.arange(30) % 3
    cut = capability_cut(model, x, y, k, coverage=0.7, last_layer=True)
    evidence = class_relevance(model, x[y == k], k)["5"][k]
    assert cut.units["1"] == [] and cut.units["3"] == torch.nonzero(covering(evidence, 0.7)).flatten().tolist()
    priced = capability_cut(model, x, y, k, price=3.0, last_layer=True)
    cost = keep_importance(model, x[y != k], y[y != k])["3"]
    cost = cost + cost.mean()
    expected = [i for i in range(5) if evidence[i] > 0 and 3.0 * evidence[i] > cost[i]]
    assert priced.units["3"] == expected
