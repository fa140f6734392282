"""Concrete pruning problems.

UnstructuredProblem — per-layer unstructured sparsity with prunekit.prune's ranking.
    Units are single weights, pruned in ascending criterion score within each layer, so the
    pruned set at k units contains the one at k − 1 (masks only shrink as counts grow).
    Cost (metric):
      "params": non-zero parameters = total − Σ_l k_l;
      "flops":  sparse FLOPs = dense FLOPs − Σ_l k_l · 2·P_l, P_l = output positions of
                layer l (each weight is multiplied once per output position), which is
                exactly prunekit.accounting.count_flops' sparse count.

TableProblem — a synthetic problem given by per-unit costs and accuracy curves; no model.
    cost = fixed + Σ_l (units_l − k_l) · unit_cost_l;
    accuracy(counts) = base − Σ_l drop_l(k_l / units_l), drop_l interpolated linearly in a
    table of (ratio, drop) points. Tests use it for exact, fast, model-free checks.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from ..prune import score as element_scores
from ..accounting import count_flops, parameter_counts
from ..errors import PrunekitError
from ..masks import named_parameters, resolve_parameters
from ..training import TrainConfig
from .base import Layer, MaskedModelProblem, PruningProblem

METRICS = ("params", "flops")


class UnstructuredProblem(MaskedModelProblem):
    """Per-layer unstructured pruning of `model`'s weights, evaluated on `val` (a TensorDataset).

    `train_data` and `train_config` enable fine-tuning (NetAdapt). `max_ratio` caps each layer
    so that no layer is ever emptied. The user's model is never modified.
    """

    def __init__(self, model: nn.Module, val, example_input, *, metric: str = "flops", params=None,
                 criterion="magnitude", max_ratio: float = 0.99, batches=None, loss_fn=None,
                 train_data=None, train_config: TrainConfig | None = None):
        if metric not in METRICS:
            raise PrunekitError(f"metric must be one of {METRICS} for unstructured pruning, not {metric!r} "
                                "(unstructured sparsity does not change dense latency; use channel pruning).")
        if not 0 < max_ratio < 1:
            raise PrunekitError(f"max_ratio must be in (0, 1), not {max_ratio}.")
        self.model, self.val, self.metric = model, val, metric
        self.example_input = example_input
        self.train_data, self.train_config = train_data, train_config or TrainConfig()
        chosen = resolve_parameters(model, params)
        scores = element_scores(model, criterion, list(chosen), batches=batches, loss_fn=loss_fn)
        # Pruning order per layer: ascending score, ties by position (as prunekit.selection does).
        self._order = {n: torch.argsort(s.detach().reshape(-1).float().cpu(), stable=True) for n, s in scores.items()}
        self._sorted = {n: s.detach().reshape(-1).float().cpu()[self._order[n]] for n, s in scores.items()}
        self.layers = [Layer(n, p.numel(), min(p.numel() - 1, int(max_ratio * p.numel()))) for n, p in chosen.items()]
        if metric == "params":
            self._dense = float(parameter_counts(model)["nonzero"])
            self._unit = {n: 1.0 for n in chosen}
        else:
            flops = count_flops(model, example_input)
            self._dense = float(flops["sparse_flops"])
            self._unit = {}
            for n, p in chosen.items():
                module = n.rpartition(".")[0]
                if n.rpartition(".")[2] != "weight" or module not in flops["layers"]:
                    raise PrunekitError(f"'{n}' is not the weight of a Linear/Conv layer, so its FLOPs are not "
                                        "counted; use metric='params' or select only layer weights.")
                macs = flops["layers"][module]["dense_macs"]
                self._unit[n] = 2.0 * macs / p.numel()
        # Weights that are already zero are not counted again when pruned in their turn.
        with torch.no_grad():
            self._zero_before = {n: torch.cumsum((named_parameters(model)[n].detach().reshape(-1)[self._order[n]] == 0)
                                                 .to(torch.int64), 0) for n in chosen}

    def _removed(self, name: str, k: int) -> int:
        # Units among the first k in order that were non-zero (only those reduce the cost).
        return k - int(self._zero_before[name][k - 1]) if k > 0 else 0

    def cost(self, counts: Mapping[str, int]) -> float:
        return self._dense - sum(self._removed(n, int(k)) * self._unit[n] for n, k in counts.items() if k)

    def masks(self, counts: Mapping[str, int]) -> dict[str, torch.Tensor]:
        params = named_parameters(self.model)
        out = {}
        for layer in self.layers:
            keep = torch.ones(layer.units, dtype=torch.bool)
            keep[self._order[layer.name][:int(counts.get(layer.name, 0))]] = False
            out[layer.name] = keep.reshape(params[layer.name].shape)
        return out


    def unit_scores(self, name: str):
        return self._sorted[name]

    def features(self, name: str) -> list[float]:
        p = named_parameters(self.model)[name]
        shape = list(p.shape) + [1] * (4 - p.dim())
        return [float(v) for v in shape[:2]] + [float(np.prod(shape[2:])), self._unit[name] * p.numel()]


class TableProblem(PruningProblem):
    """A model-free problem: linear costs per unit and interpolated accuracy-drop curves."""

    def __init__(self, units: Mapping[str, int], unit_cost: Mapping[str, float], curves: Mapping[str, list],
                 *, base: float = 1.0, fixed: float = 0.0, max_ratio: float = 1.0, metric: str = "cost"):
        self.metric, self.base, self.fixed = metric, base, fixed
        self.unit_cost = dict(unit_cost)
        self.curves = {n: (np.array([0.0] + [r for r, _ in c]), np.array([0.0] + [d for _, d in c]))
                       for n, c in curves.items()}
        self.layers = [Layer(n, u, int(max_ratio * u)) for n, u in units.items()]

    def cost(self, counts):
        return self.fixed + sum((l.units - counts.get(l.name, 0)) * self.unit_cost[l.name] for l in self.layers)

    def apply(self, counts, model=None):
        return dict(self.full(counts))  # the "model" of a table problem is its counts

    def evaluate(self, model) -> float:
        drop = 0.0
        for l in self.layers:
            xs, ys = self.curves[l.name]
            drop += float(np.interp(model[l.name] / l.units, xs, ys))
        return self.base - drop

    def state(self, model) -> dict:
        return {}

    def restore(self, counts, state):
        return self.apply(counts)

    def finetune(self, model, steps, seed=0):
        return model  # tables have no weights: fine-tuning recovers nothing

    def features(self, name):
        return [float(self.layer(name).units), self.unit_cost[name]]
