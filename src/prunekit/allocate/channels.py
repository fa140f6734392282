"""Channel pruning as a pruning problem: the real FLOPs and latency savings.

Layers are the prunable groups of prunekit.graph (a conv's output channels together with
its bias, norm and every consumer's input slice); units are channels, removed in ascending
group score (prunekit.structured.group_scores of the criterion, ℓ2 over each unit's slices),
so the removed set at k channels contains the one at k − 1.

Costs are computed from the groups, without building the model:
  * units = the fraction of channels left, 1 − Σ_g k_g / Σ_g n_g (what `sparsity=` asks for);
  * along every (tensor, dim) the kept fraction is f = 1 − Σ_g k_g · p_g / n, summed over the
    groups g slicing it (p_g positions per unit, n the dim's size);
  * params = Σ_tensors numel · Π_dims f — what compact() leaves;
  * flops  = dense − Σ_layers 2·MACs_l · (1 − f_out · f_in): a conv / linear layer's MACs
    are proportional to its output × input channels at fixed spatial size, so this equals
    prunekit.compaction.predicted_counts' FLOPs (and count_flops of the compacted model);
  * latency = the LatencyTable prediction at the layers' kept (input, output) widths.

`measure(model)` compacts a pruned model (prunekit.compaction) and times it, so NetAdapt's front
and the benchmarks report measured latency, not only predictions.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import torch
from torch import nn

from ..accounting import count_flops
from ..compaction import compact
from ..errors import GraphError, PrunekitError
from ..graph import build_graph
from ..masks import get_masks, named_parameters
from ..structured import group_masks, score_groups
from ..training import TrainConfig
from .base import Layer, MaskedModelProblem
from .latency import LatencyTable, measure_latency

METRICS = ("units", "params", "flops", "latency")


class ChannelProblem(MaskedModelProblem):
    """Per-group channel pruning of `model`, evaluated on `val`; see the module docstring."""

    def __init__(self, model: nn.Module, val, example_input, *, metric: str = "flops", criterion="magnitude",
                 how: str = "l2", p: float = 2.0, max_ratio: float = 0.9, groups=None, batches=None, loss_fn=None,
                 latency_input=None, latency_table: LatencyTable | None = None, latency_grid: int = 6,
                 train_data=None, train_config: TrainConfig | None = None, graph=None):
        if metric not in METRICS:
            raise PrunekitError(f"metric must be one of {METRICS}, not {metric!r}.")
        if not 0 < max_ratio <= 1:
            raise PrunekitError(f"max_ratio must be in (0, 1], not {max_ratio}.")
        self.model, self.val, self.example_input, self.metric = model, val, example_input, metric
        self.train_data, self.train_config = train_data, train_config or TrainConfig()
        self.graph = graph if graph is not None else build_graph(model, example_input)
        groups = self._select(groups)
        scores = score_groups(model, self.graph, groups, criterion, how, p, batches=batches, loss_fn=loss_fn)
        self._order = {g.name: torch.argsort(scores[g.name].float(), stable=True) for g in groups}
        self._sorted = {g.name: scores[g.name].float()[self._order[g.name]] for g in groups}
        # The global threshold compares s_u / mean of the group's live scores, so that wide and
        # narrow layers compete fairly (raw norms grow with a layer's fan-in).
        self._normalised = {}
        for name, s in self._sorted.items():
            live = s[torch.isfinite(s)]
            self._normalised[name] = s / (live.abs().mean().clamp_min(1e-12) if len(live) else 1.0)
        # A group keeps at least one unit: compact() cannot make a zero-width layer.
        self.layers = [Layer(g.name, g.size, min(g.size - 1, int(max_ratio * g.size))) for g in groups]
        self._units = sum(g.size for g in groups)
        self._existing = get_masks(model)
        # (tensor, dim) → [(group, positions per unit)], for kept fractions
        self._cuts: dict[tuple[str, int], list[tuple[str, int]]] = {}
        for g in groups:
            for s in g.slices:
                if s.kind == "param":
                    self._cuts.setdefault((s.name, s.dim), []).append((g.name, s.positions_per_unit))
        self._shapes = {n: tuple(p.shape) for n, p in named_parameters(model).items()}
        self.latency_input = latency_input if latency_input is not None else example_input
        self.table = latency_table
        if metric == "latency" and self.table is None:
            self.table = LatencyTable(model, self.latency_input, grid=latency_grid)

    @functools.cached_property
    def _flops(self) -> tuple[float, dict[str, float], dict[str, nn.Module]]:
        """(dense FLOPs, {layer: dense MACs}, {layer: module}): a counting forward pass, run only
        when a cost needs it (the "units" and "params" metrics never do)."""
        flops = count_flops(self.model, self.example_input)
        macs = {m: v["dense_macs"] for m, v in flops["layers"].items()}
        modules = dict(self.model.named_modules())
        return float(flops["dense_flops"]), macs, {m: modules[m] for m in macs}

    def _select(self, names):
        """The groups to prune: all prunable ones, or the named ones (each must be prunable)."""
        if names is None:
            groups = self.graph.prunable()
            if not groups:
                reasons = sorted({g.reason.split("; ")[0] for g in self.graph.groups if g.reason})
                why = "; ".join(self.graph.unsupported[:3]) or "; ".join(reasons[:3]) + (
                    f"; and {len(reasons) - 3} more" if len(reasons) > 3 else "") or "no channel-coupled layers found"
                raise GraphError(f"No prunable group in this model ({why}); see prunekit.build_graph(model, x).")
            return groups
        groups = []
        for name in names:
            group = self.graph[name]
            if not group.prunable:
                raise GraphError(f"Group '{name}' cannot be pruned: {group.reason}.")
            groups.append(group)
        return groups

    # Costs -----------------------------------------------------------------------------------
    def _kept(self, name: str, dim: int, counts: Mapping[str, int]) -> float:
        n = self._shapes[name][dim]
        removed = sum(counts.get(g, 0) * ppu for g, ppu in self._cuts.get((name, dim), ()))
        return 1.0 - removed / n

    def widths(self, counts: Mapping[str, int]) -> dict[str, tuple[int, int]]:
        """(input, output) channels of every Linear / Conv layer after pruning `counts`."""
        out = {}
        for m, module in self._flops[2].items():
            w = f"{m}.weight" if m else "weight"
            shape = self._shapes[w]
            kept_in = round(shape[1] * self._kept(w, 1, counts)) * (getattr(module, "groups", 1) or 1)
            out[m] = (max(1, kept_in), max(1, round(shape[0] * self._kept(w, 0, counts))))
        return out

    def cost(self, counts: Mapping[str, int]) -> float:
        if self.metric == "units":
            return 1.0 - sum(int(k) for k in counts.values()) / self._units
        if self.metric == "params":
            return float(sum(round(math.prod(shape) * math.prod(self._kept(n, d, counts) for d in range(len(shape))))
                             for n, shape in self._shapes.items()))
        if self.metric == "flops":
            saved = 0.0
            for m, macs in self._flops[1].items():
                w = f"{m}.weight" if m else "weight"
                saved += 2 * macs * (1 - self._kept(w, 0, counts) * self._kept(w, 1, counts))
            return self._flops[0] - round(saved)
        return self.table.predict(self.widths(counts))

    # Models ----------------------------------------------------------------------------------
    def masks(self, counts: Mapping[str, int]):
        keep = {}
        for layer in self.layers:
            k = torch.ones(layer.units, dtype=torch.bool)
            k[self._order[layer.name][:int(counts.get(layer.name, 0))]] = False
            keep[layer.name] = k
        new = group_masks(self.graph, keep)
        return self._existing.intersect(new) if len(self._existing) else new


    def compact(self, model: nn.Module) -> nn.Module:
        return compact(model, self.example_input, graph=self.graph)[0]

    def measure(self, model: nn.Module) -> dict:
        """Measured latency of the compacted model on `latency_input`."""
        return {"latency_s": measure_latency(self.compact(model), self.latency_input)}

    def unit_scores(self, name: str):
        return self._normalised[name]

    def features(self, name: str) -> list[float]:
        group = self.graph[name]
        producer = next((s.name for s in group.slices if s.kind == "param" and s.dim == 0
                         and len(self._shapes[s.name]) >= 2), None)
        shape = list(self._shapes[producer]) if producer else [group.size, 1]
        shape += [1] * (4 - len(shape))
        module = producer.rpartition(".")[0] if producer else None
        return [float(shape[0]), float(shape[1]), float(math.prod(shape[2:])),
                float(self._flops[1].get(module, 0)) * 2]
