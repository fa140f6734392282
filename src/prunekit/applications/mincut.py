"""Minimum vertex cut between a network's inputs and one class, by max-flow (networkx).

Flow network. Every hidden unit u becomes two nodes u_in → u_out joined by an arc of
capacity c(u), its cost (importance to the classes that stay). Weights become arcs of
unlimited capacity between units: u_out → v_in for an edge u → v; the source s feeds the
units the inputs drive, the units that drive the removed class feed the sink t. Since
weight arcs cannot be cut, a finite s-t cut is a set of units S whose removal leaves no
path from the inputs to the class, and by the max-flow/min-cut theorem

    max-flow value = min_S Σ_{u∈S} c(u)        (over all such separating sets S).

S is read off the residual graph: the units with u_in reachable from s and u_out not.

Priced evidence. The sinks may instead carry finite arcs u_out → t of capacity p(u): then a
cut may leave unit u in place and pay p(u) for the class evidence it still delivers, and

    max-flow value = min_S [ Σ_{u∈S} c(u) + Σ_{sink u still reached from s} p(u) ].

Capability removal (`capability_cut`): the edges kept in the network are those that
carry the class, i.e. the weights whose class relevance R_l[i, j] (prunekit.applications.
relevance) is positive, taken in decreasing order until they cover `coverage` of the
layer's positive relevance. The source edges are the first layer's units ranked by the
relevance their inputs bring them (Σ_j R_1[i, j]); the sink edges are the last hidden
units ranked by R_L[k, i]. The unit costs are c(u) = C(u) + unit_cost · mean(C) of its
layer, so among equally cheap cuts the one with fewer units wins.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import PrunekitError
from .mlp import hidden_layers
from .relevance import class_relevance, keep_importance, unit_relevance

SOURCE, SINK = "source", "sink"


@dataclass(frozen=True)
class UnitCut:
    """A minimum vertex cut: the units, its capacity and the max-flow value (equal by theory);
    `paid`: the sinks left in place whose (finite) arc to the sink the cut crosses."""

    units: frozenset
    capacity: float
    max_flow: float
    nodes: int
    arcs: int
    paid: frozenset = frozenset()


def _networkx():
    try:
        import networkx
    except ImportError as e:
        raise PrunekitError("Min-cut capability removal needs networkx: pip install 'prunekit[applications]' "
                            "(or pip install networkx).") from e
    return networkx


def min_unit_cut(capacity: Mapping[Hashable, float], edges: Iterable[tuple], sources: Iterable, sinks: Iterable
                 ) -> UnitCut:
    """The cheapest set of units separating `sources` (fed by the inputs) from `sinks` (feeding
    the class). `capacity`: unit → cost ≥ 0; `edges`: (u, v) pairs between units; `sinks`:
    units (arcs to the sink unlimited) or {unit: price ≥ 0 of leaving its arc to the sink}."""
    nx = _networkx()
    bad = {u: c for u, c in capacity.items() if not (float(c) >= 0 and float(c) != float("inf"))}
    if bad:
        raise PrunekitError(f"Unit costs must be finite and ≥ 0; got {dict(list(bad.items())[:3])}.")
    prices = dict(sinks) if isinstance(sinks, Mapping) else None
    bad = {u: c for u, c in (prices or {}).items() if not (float(c) >= 0 and float(c) != float("inf"))}
    if bad:
        raise PrunekitError(f"Sink prices must be finite and ≥ 0; got {dict(list(bad.items())[:3])}.")
    graph = nx.DiGraph()
    graph.add_nodes_from([SOURCE, SINK])
    for unit, cost in capacity.items():
        graph.add_edge(("in", unit), ("out", unit), capacity=float(cost))
    for u, v in edges:  # arcs without a 'capacity' attribute are unlimited in networkx
        _require_unit(capacity, u)
        _require_unit(capacity, v)
        graph.add_edge(("out", u), ("in", v))
    for unit in sources:
        _require_unit(capacity, unit)
        graph.add_edge(SOURCE, ("in", unit))
    for unit in sinks:
        _require_unit(capacity, unit)
        if prices is None:
            graph.add_edge(("out", unit), SINK)
        else:
            graph.add_edge(("out", unit), SINK, capacity=float(prices[unit]))
    value, (reachable, _) = nx.minimum_cut(graph, SOURCE, SINK)
    units = frozenset(u for u in capacity if ("in", u) in reachable and ("out", u) not in reachable)
    paid = frozenset()
    if prices is not None:  # the priced sinks the inputs still reach once the units are gone
        graph.remove_edges_from((("in", u), ("out", u)) for u in units)
        reached = nx.descendants(graph, SOURCE)
        paid = frozenset(u for u in prices if ("out", u) in reached)
    return UnitCut(units, sum(float(capacity[u]) for u in units) + sum(float(prices[u]) for u in paid),
                   float(value), graph.number_of_nodes(), graph.number_of_edges(), paid)


def _require_unit(capacity, unit):
    if unit not in capacity:
        raise PrunekitError(f"Edge endpoint {unit!r} has no capacity; give every unit a cost.")


def covering(values: torch.Tensor, coverage: float) -> torch.Tensor:
    """Bool mask of the largest positive entries whose sum first reaches `coverage` of the
    positive total (nothing when no entry is positive)."""
    flat = values.flatten()
    positive = flat.clamp(min=0)
    total = positive.sum()
    keep = torch.zeros_like(flat, dtype=torch.bool)
    if total <= 0:
        return keep.reshape(values.shape)
    order = torch.argsort(positive, descending=True)
    cumulative = torch.cumsum(positive[order], 0)
    count = int(torch.searchsorted(cumulative, coverage * total).item()) + 1
    count = min(count, int((positive > 0).sum()))
    keep[order[:count]] = True
    return keep.reshape(values.shape)


@dataclass(frozen=True)
class CapabilityCut:
    """Which hidden units to remove to cut class `removed_class` off the inputs.

    units: {Linear name: sorted unit indices}; cut: the underlying UnitCut (with priced sinks,
    cut.paid are the last hidden units left in place)."""

    removed_class: int
    coverage: float
    units: dict
    cut: UnitCut
    relevance: dict = field(repr=False)      # {hidden Linear: class relevance per unit}
    keep_cost: dict = field(repr=False)      # {hidden Linear: keep importance per unit}
    price: float | None = None               # β of priced sinks (None: covered sinks)

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.units.values())


def capability_cut(model: nn.Module, x: torch.Tensor, y: torch.Tensor, remove_class: int, *,
                   coverage: float = 0.9, unit_cost: float = 1.0, price: float | None = None,
                   last_layer: bool = False) -> CapabilityCut:
    """The minimum-cost set of hidden units whose removal disconnects class `remove_class`'s
    relevant paths from the inputs, measured on (x, y) (training data, all classes).

    price: None — the sinks are the last hidden units covering `coverage` of the class's
    relevance, all of which must be cut off; a number β — every last hidden unit i with
    R_L[k, i] > 0 is a sink whose arc costs β · R_L[k, i] (the class evidence it would still
    deliver, in the same logit units as the keep costs), so the cut removes a unit only where
    that is cheaper than the evidence it carries.

    last_layer: cut among the last hidden layer's units only (the layer nearest the output).
    The graph is then that layer alone, every unit fed by the inputs, so the cut is exactly
    its sinks: the units delivering `coverage` of the class's direct evidence (or, priced,
    those whose evidence β · R_L[k, i] exceeds their cost)."""
    layers = hidden_layers(model)
    out_features = model.get_submodule(layers[-1].next_name).out_features
    if not 0 <= remove_class < out_features:
        raise PrunekitError(f"remove_class must be a class index in [0, {out_features}), not {remove_class!r}.")
    if not 0 < coverage <= 1:
        raise PrunekitError(f"coverage must be in (0, 1], not {coverage!r}.")
    if unit_cost < 0:
        raise PrunekitError(f"unit_cost must be ≥ 0, not {unit_cost!r}.")
    if price is not None and not price >= 0:
        raise PrunekitError(f"price must be ≥ 0 (or None for covered sinks), not {price!r}.")
    chosen = y == remove_class
    edge_relevance = class_relevance(model, x[chosen], remove_class)
    keep = keep_importance(model, x[~chosen], y[~chosen])
    if last_layer:
        layers = layers[-1:]
    capacity = {}
    for layer in layers:
        cost = keep[layer.name] + unit_cost * keep[layer.name].mean()
        capacity.update({(layer.name, i): float(c) for i, c in enumerate(cost)})
    first, last = layers[0], layers[-1]
    if last_layer:  # the layer's units all carry the inputs' signal
        sources = [(first.name, i) for i in range(first.size)]
    else:
        sources = [(first.name, int(i)) for i in
                   torch.nonzero(covering(edge_relevance[first.name].sum(1), coverage)).flatten()]
    evidence = edge_relevance[last.next_name][remove_class]
    if price is None:
        sinks = [(last.name, int(i)) for i in torch.nonzero(covering(evidence, coverage)).flatten()]
    else:
        sinks = {(last.name, int(i)): price * float(evidence[i]) for i in torch.nonzero(evidence > 0).flatten()}
    edges = []
    for before, after in zip(layers, layers[1:]):
        kept = covering(edge_relevance[after.name], coverage)  # (units of `after`) × (units of `before`)
        edges += [((before.name, int(j)), (after.name, int(i))) for i, j in torch.nonzero(kept).tolist()]
    cut = min_unit_cut(capacity, edges, sources, sinks)
    units = {layer.name: sorted(i for name, i in cut.units if name == layer.name) for layer in hidden_layers(model)}
    return CapabilityCut(remove_class, coverage, units, cut, unit_relevance(model, edge_relevance), keep, price)
