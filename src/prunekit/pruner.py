"""One pruning pipeline for every granularity: units → scores → allocation → masks.

    pruner = pk.Pruner(model, x, granularity="channel", criterion="taylor", allocation="global",
                       sparsity=0.5, batches=calibration, loss_fn=F.cross_entropy)
    plan = pruner.plan()     # what would go, per layer; the model is not changed
    pruner.step()            # install the masks (intersected with the ones already there)

Granularity — what one unit is:
    element, kernel_row, kernel_col, kernel, in_channel, out_channel, neuron
                 units inside one weight tensor (prunekit.granularity); a layer is a tensor
    "N:M"        e.g. "2:4": N kept of every M consecutive input weights — a pattern, no allocation
    channel      a channel with every tensor slice coupled to it (prunekit.graph); a layer is a group
    head         an attention head found by the graph (groups of kind "head")
    group        every prunable graph group, channels and heads alike
    block        a whole identity-shortcut residual branch (prunekit.blocks); one layer, "blocks"

Target — exactly one of:
    sparsity=0.5            the fraction of units removed (an int: a count; {layer: amount}: per layer)
    budget={"flops": 0.5}   keep ≤ this fraction (≤ 1) or absolute amount of "params", "flops" or,
                            for graph groups, "latency" (seconds, measured on this machine)
    threshold=τ             remove every unit scoring below τ (global allocation)

Allocation — how many units each layer loses:
    "uniform"  the same fraction everywhere (with a budget: the smallest that fits)
    "global"   one ranking over all layers; graph groups compare s_u / mean of their group
    a name in prunekit.allocate.ALLOCATORS ("sensitivity", "greedy", "knapsack", "netadapt",
    "amc"; options in allocation_options) or an Allocator instance — these search with
    accuracy measured on `val` (and fine-tune on `train_data` where they do).

Units already pruned rank lowest and count as pruned, and new masks are intersected with the
installed ones: masks only shrink. Everything is validated before anything is installed, and a
failed step leaves the model as it was.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn

from . import granularity as gran
from . import selection
from .allocate import ALLOCATORS, Allocation, Allocator, ChannelProblem, GlobalThresholdAllocator, UniformAllocator
from .allocate.base import allocation_of
from .allocate.problems import UnstructuredProblem, tensor_unit_scores
from .allocate.residual import BlockProblem
from .criteria import get_criterion
from .errors import AmountError, PrunekitError, did_you_mean
from .masks import MaskSet, apply_masks, get_masks, resolve_parameters
from .table import format_table

GRAPH_GRANULARITIES = {"channel": "channel", "head": "head", "group": None}
GRANULARITIES = gran.GRANULARITIES + tuple(GRAPH_GRANULARITIES) + ("block", "N:M")
BUDGET_METRICS = ("params", "flops", "latency")
SIMPLE_ALLOCATIONS = ("uniform", "global")
_NM = re.compile(r"^(\d+):(\d+)$")


@dataclass
class Plan:
    """What a step removes: per layer its units and how many go, and the masks that does it."""

    granularity: str
    criterion: str
    allocation: Allocation | None
    masks: MaskSet                      # the complete masks to install (existing ones included)
    layers: list[dict] = field(default_factory=list)

    @property
    def pruned_units(self) -> int:
        return sum(row["pruned"] for row in self.layers)

    @property
    def units(self) -> int:
        return sum(row["units"] for row in self.layers)

    def __str__(self) -> str:
        head = (f"Plan: {self.granularity} units by {self.criterion}"
                + (f", {self.allocation.method} allocation" if self.allocation else "")
                + f": {self.pruned_units} of {self.units} units pruned, weight sparsity {self.masks.sparsity():.4f}")
        return head + "\n" + format_table(self.layers, ["layer", "units", "pruned", "ratio"])


class Pruner:
    """Prune `model` at one granularity by one criterion and allocation; see the module docstring."""

    def __init__(self, model: nn.Module, example_inputs=None, *, granularity: str = "element",
                 criterion="magnitude", allocation="global", sparsity=None, budget: Mapping | None = None,
                 threshold: float | None = None, params=None, how: str = "l2", p: float = 2.0, round_to: int = 1,
                 max_ratio: float | None = None, batches=None, loss_fn=None, val=None, train_data=None,
                 train_config=None, allocation_options: Mapping | None = None, graph=None, blocks=None):
        if not isinstance(model, nn.Module):
            raise PrunekitError(f"model must be a torch.nn.Module, not {type(model).__name__}; "
                                "pass the model instance (call your factory function first).")
        self.model, self.example_inputs = model, example_inputs
        self.granularity = _check_granularity(granularity)
        self.criterion = get_criterion(criterion)
        self.allocation, self.options = allocation, dict(allocation_options or {})
        self.sparsity, self.budget, self.threshold = sparsity, dict(budget or {}), threshold
        self.params, self.how, self.p, self.round_to = params, how, p, round_to
        self.batches, self.loss_fn, self.val = batches, loss_fn, val
        self.train_data, self.train_config, self.graph, self.blocks = train_data, train_config, graph, blocks
        self.max_ratio = max_ratio
        self._validate()

    # Validation (cheap, before any scoring) ---------------------------------------------------
    def _validate(self) -> None:
        if isinstance(self.sparsity, Mapping) and not self.sparsity:
            raise PrunekitError("The per-layer amounts are empty: give {layer or group name: fraction} for at least "
                                "one (build_graph(model, x).prunable() lists the groups).")
        targets = sum(x is not None and x != {} for x in (self.sparsity, self.budget, self.threshold))
        if self.nm is not None:
            if targets or self.allocation not in SIMPLE_ALLOCATIONS:
                raise PrunekitError(f"granularity '{self.granularity}' fixes the sparsity pattern itself; "
                                    "leave out sparsity=, budget=, threshold= and allocation=.")
            return
        if isinstance(self.allocation, Allocator):
            if targets:
                raise PrunekitError(f"{type(self.allocation).__name__} carries its own budget; "
                                    "leave out sparsity=, budget= and threshold=.")
        elif self.allocation not in ALLOCATORS:
            raise PrunekitError(f"Unknown allocation '{self.allocation}'.{did_you_mean(str(self.allocation), ALLOCATORS)} "
                                f"Known: {', '.join(ALLOCATORS)}, or an Allocator instance.")
        elif targets != 1 and not (self.allocation == "sensitivity" and "threshold" in self.options and not targets):
            raise PrunekitError("Give exactly one target: sparsity= (fraction of units removed), "
                                "budget={'flops': 0.5} (or 'params' / 'latency'), or threshold=.")
        if self.budget:
            if len(self.budget) != 1 or next(iter(self.budget)) not in BUDGET_METRICS:
                raise PrunekitError(f"budget must name one metric of {BUDGET_METRICS} with the fraction (≤ 1) or "
                                    f"absolute amount to keep, e.g. {{'flops': 0.5}}; got {self.budget!r}.")
            value = next(iter(self.budget.values()))
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise PrunekitError(f"budget value must be a positive number, not {value!r}.")
        if self.threshold is not None and self.allocation != "global":
            raise PrunekitError("threshold= removes every unit below τ across layers: use allocation='global'.")
        if isinstance(self.sparsity, Mapping):
            if self.allocation not in SIMPLE_ALLOCATIONS:
                raise PrunekitError("Per-layer sparsity {layer: amount} is an allocation itself; "
                                    "use allocation='uniform'.")
            for name, amount in self.sparsity.items():
                _check_amount(amount, f"sparsity['{name}']")
        elif self.sparsity is not None:
            _check_amount(self.sparsity, "sparsity")
        if self.granularity in GRAPH_GRANULARITIES or self.granularity == "block":
            if self.params is not None:
                raise PrunekitError(f"params= selects tensors; granularity '{self.granularity}' prunes graph units. "
                                    "Choose groups with sparsity={group name: amount} instead.")
            if self.example_inputs is None:
                raise PrunekitError(f"granularity '{self.granularity}' traces the model: pass example_inputs "
                                    "(a tensor, a tuple of positional inputs, or a dict of keyword inputs).")
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise AmountError(f"round_to must be a positive int, not {self.round_to!r}.")

    @property
    def nm(self) -> tuple[int, int] | None:
        return nm_pattern(self.granularity)

    # The pipeline -------------------------------------------------------------------------------
    def problem(self):
        """The units of this granularity as a prunekit.allocate pruning problem."""
        if self.budget:
            metric = next(iter(self.budget))
        elif isinstance(self.allocation, Allocator):
            metric = self.options.get("metric", "flops")  # the metric its own budget is written in
        else:
            metric = "units"
        common = dict(val=self.val, train_data=self.train_data, train_config=self.train_config)
        if self.granularity == "block":
            return BlockProblem(self.model, example_input=self.example_inputs, metric=metric, batches=self.batches,
                                blocks=self.blocks, max_ratio=self.max_ratio or 1.0, **common)
        if self.granularity in GRAPH_GRANULARITIES:
            groups = list(self.sparsity) if isinstance(self.sparsity, Mapping) else self._graph_groups()
            return ChannelProblem(self.model, example_input=self.example_inputs, metric=metric,
                                  criterion=self.criterion, how=self.how, p=self.p, groups=groups,
                                  max_ratio=self.max_ratio or 1.0, batches=self.batches, loss_fn=self.loss_fn,
                                  graph=self.graph, **common)
        params = list(self.sparsity) if isinstance(self.sparsity, Mapping) else self.params
        return UnstructuredProblem(self.model, example_input=self.example_inputs, metric=metric, params=params,
                                   criterion=self.criterion, granularity=self.granularity, how=self.how, p=self.p,
                                   max_ratio=self.max_ratio or 1.0, batches=self.batches, loss_fn=self.loss_fn,
                                   **common)

    def _graph_groups(self) -> list[str] | None:
        kind = GRAPH_GRANULARITIES[self.granularity]
        if kind is None:
            return None
        from .graph import build_graph  # only graph granularities trace the model

        if self.graph is None:
            self.graph = build_graph(self.model, self.example_inputs)
        names = [g.name for g in self.graph.prunable() if g.kind == kind]
        if not names:
            raise PrunekitError(f"The graph found no prunable {kind} group in this model; "
                                f"see print(prunekit.build_graph(model, x)). Try granularity='group'.")
        return names

    def allocator(self, problem) -> Allocator:
        if isinstance(self.allocation, Allocator):
            return self.allocation
        budget = next(iter(self.budget.values())) if self.budget else None
        if self.allocation == "global":
            if self.threshold is not None:
                return GlobalThresholdAllocator(threshold=self.threshold)
            if budget is not None:
                return GlobalThresholdAllocator(budget)
            total = sum(l.units for l in problem.layers)
            return GlobalThresholdAllocator(count=selection.resolve_amount(self.sparsity, total, "units"))
        if self.allocation == "uniform":
            return UniformAllocator(budget) if budget is not None else UniformAllocator(ratio=self.sparsity)
        if budget is None and self.sparsity is not None:  # a search allocator asked for a sparsity
            if isinstance(self.sparsity, int):
                raise PrunekitError(f"allocation '{self.allocation}' needs a fraction, not a count.")
            budget = 1.0 - self.sparsity
        options = {k: v for k, v in self.options.items() if k != "metric"}
        if self.allocation == "sensitivity" and "threshold" in options:
            return ALLOCATORS["sensitivity"](**options)
        return ALLOCATORS[self.allocation](budget, **options)

    def plan(self) -> Plan:
        """Score, allocate and build the masks — without changing the model."""
        if self.nm is not None:
            return self._nm_plan()
        problem = self.problem()
        if isinstance(self.sparsity, Mapping):
            allocation = _per_layer(problem, self.sparsity)
        else:
            allocation = self.allocator(problem).allocate(problem)
        counts = self._rounded(problem, allocation.counts)
        masks = MaskSet(problem.masks(counts))
        problem.verify(masks)
        layers = [{"layer": l.name, "units": l.units, "pruned": counts[l.name],
                   "ratio": round(counts[l.name] / l.units, 4)} for l in problem.layers]
        return Plan(self.granularity, self.criterion.name, allocation, masks, layers)

    def step(self, batches=None) -> Plan:
        """Plan, then install the masks. `batches` (calibration data) replaces the constructor's."""
        if batches is not None:
            self.batches = batches
        plan = self.plan()
        apply_masks(self.model, plan.masks)
        return plan

    # Details ------------------------------------------------------------------------------------
    def _rounded(self, problem, counts: Mapping[str, int]) -> dict[str, int]:
        """Graph groups keep a multiple of round_to units (at least one) where they are that large."""
        if self.round_to == 1 or self.granularity not in GRAPH_GRANULARITIES:
            return dict(counts)
        out = {}
        for layer in problem.layers:
            keep = layer.units - counts[layer.name]
            if layer.units <= self.round_to:
                keep = layer.units
            else:
                keep = min(layer.units, math.ceil(max(1, keep) / self.round_to) * self.round_to)
            out[layer.name] = layer.units - keep
        return out

    def _nm_plan(self) -> Plan:
        n, m = self.nm
        gran.check_nm(n, m)
        params = self.params
        if params is None:
            params = [name for name, t in resolve_parameters(self.model).items()
                      if t.shape[1 if t.dim() > 1 else 0] % m == 0]
        chosen = resolve_parameters(self.model, params)
        scores, _ = tensor_unit_scores(self.model, chosen, "element", self.criterion, self.how, self.p,
                                       self.batches, self.loss_fn)
        existing = get_masks(self.model)
        masks, layers = {}, []
        for name, t in chosen.items():
            keep = gran.nm_mask(scores[name].reshape(t.shape), n, m, name=name)
            masks[name] = keep & existing[name].to(keep.device) if name in existing else keep
            pruned = int((~masks[name]).sum())
            layers.append({"layer": name, "units": t.numel(), "pruned": pruned, "ratio": round(pruned / t.numel(), 4)})
        return Plan(self.granularity, self.criterion.name, None, MaskSet(masks), layers)


def nm_pattern(granularity: str) -> tuple[int, int] | None:
    """(N, M) for an "N:M" granularity, else None."""
    match = _NM.match(granularity) if isinstance(granularity, str) else None
    return (int(match[1]), int(match[2])) if match else None


def _check_granularity(granularity: str) -> str:
    if not isinstance(granularity, str):
        raise PrunekitError(f"granularity must be a string such as 'channel' or '2:4', not {granularity!r}.")
    if granularity in GRANULARITIES or _NM.match(granularity):
        return granularity
    raise PrunekitError(f"Unknown granularity '{granularity}'.{did_you_mean(granularity, GRANULARITIES)} "
                        f"Known: {', '.join(GRANULARITIES[:-1])}, or N:M such as '2:4'.")


def _check_amount(amount, what: str) -> None:
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise AmountError(f"{what} must be a float fraction in [0, 1] or an int count, not {amount!r}.")
    if isinstance(amount, float) and not (math.isfinite(amount) and 0.0 <= amount <= 1.0):
        raise AmountError(f"{what} = {amount} is outside [0, 1]; pass a fraction such as 0.9 (90 % pruned).")
    if isinstance(amount, int) and amount < 0:
        raise AmountError(f"{what} = {amount}: a count must be ≥ 0.")


def _per_layer(problem, amounts: Mapping) -> Allocation:
    """The allocation a user wrote down: {layer: fraction or count}."""
    counts = {}
    for layer in problem.layers:
        if layer.name in amounts:
            k = selection.resolve_amount(amounts[layer.name], layer.units, f"units of '{layer.name}'")
            counts[layer.name] = min(k, layer.max_units)
    return allocation_of(problem, counts, "per-layer", details={"per_layer": dict(amounts)})


__all__ = ["GRANULARITIES", "Plan", "Pruner", "nm_pattern"]
