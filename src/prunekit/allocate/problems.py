"""Concrete pruning problems.

UnstructuredProblem — per-tensor units of any within-tensor granularity (single weights by
    default; kernel rows / columns, kernels, in/out channels, neurons, blocks — see
    prunekit.granularity), ranked by the criterion within each tensor. Units are pruned in
    ascending score (already pruned units first, ties by position), so the pruned set at k
    units contains the one at k − 1 (masks only shrink as counts grow).
    Cost (metric):
      "units":  the fraction of units left, 1 − Σ_l k_l / Σ_l n_l (what `sparsity=` asks for);
      "params": non-zero parameters = total − (non-zero weights inside the k_l pruned units);
      "flops":  sparse FLOPs = dense FLOPs − Σ_l (non-zero weights removed) · 2·P_l, P_l = output
                positions of layer l (each weight is multiplied once per output position), which
                is exactly prunekit.accounting.count_flops' sparse count.
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

from .. import granularity as gran
from ..accounting import count_flops, parameter_counts
from ..criteria import get_criterion
from ..errors import PrunekitError
from ..masks import get_masks, named_parameters, resolve_parameters
from ..selection import rank_existing_first
from ..training import TrainConfig
from .base import Layer, MaskedModelProblem, PruningProblem

METRICS = ("units", "params", "flops")


def tensor_unit_scores(model: nn.Module, chosen: Mapping[str, nn.Parameter], granularity: str, criterion,
                       how: str, p: float, batches, loss_fn) -> tuple[dict, dict]:
    """({tensor: per-unit scores, flat}, {tensor: unit id of each element}) with pruned units at −inf.

    Single weights keep the criterion's own (possibly signed) scores; larger units aggregate them.
    """
    raw = get_criterion(criterion).scores(model, chosen, batches=batches, loss_fn=loss_fn)
    existing = get_masks(model)
    if granularity == "element":
        ranked = rank_existing_first(raw, existing)
        return ({n: s.reshape(-1).cpu() for n, s in ranked.items()},
                {n: torch.arange(p.numel()).reshape(p.shape) for n, p in chosen.items()})
    scores, ids = {}, {}
    for name in chosen:
        per_unit, ids[name] = gran.unit_scores(raw[name], existing.get(name), granularity, how, p, name)
        scores[name] = per_unit.cpu()
    return scores, ids


class UnstructuredProblem(MaskedModelProblem):
    """Per-tensor units of `model`'s weights, evaluated on `val` (any batches; None: no accuracy).

    `train_data` and `train_config` enable fine-tuning (NetAdapt). `max_ratio` caps the share
    of each tensor's units that may go (1.0 allows emptying a tensor). The user's model is never
    modified. With params=None every weight whose shape fits the granularity is a layer.
    """

    def __init__(self, model: nn.Module, val=None, example_input=None, *, metric: str = "flops", params=None,
                 criterion="magnitude", granularity: str = "element", how: str = "l2", p: float = 2.0,
                 max_ratio: float = 0.99, batches=None, loss_fn=None, train_data=None,
                 train_config: TrainConfig | None = None):
        if metric not in METRICS:
            raise PrunekitError(f"metric must be one of {METRICS} for unstructured pruning, not {metric!r} "
                                "(unstructured sparsity does not change dense latency; use channel pruning).")
        if not 0 < max_ratio <= 1:
            raise PrunekitError(f"max_ratio must be in (0, 1], not {max_ratio}.")
        gran.check_granularity(granularity)
        self.model, self.val, self.metric = model, val, metric
        self.example_input, self.granularity = example_input, granularity
        self.train_data, self.train_config = train_data, train_config or TrainConfig()
        if params is None:
            params = [n for n, t in resolve_parameters(model).items() if gran.fits(t.shape, granularity)]
        chosen = resolve_parameters(model, params)
        scores, self._ids = tensor_unit_scores(model, chosen, granularity, criterion, how, p, batches, loss_fn)
        # Pruning order per tensor: ascending score, ties by position (as prunekit.selection does).
        self._order = {n: torch.argsort(s.float(), stable=True) for n, s in scores.items()}
        self._sorted = {n: s.float()[self._order[n]] for n, s in scores.items()}
        self._existing = get_masks(model)
        self.layers = []
        for n, s in scores.items():
            cap = int(max_ratio * s.numel()) if max_ratio < 1 else s.numel()
            self.layers.append(Layer(n, s.numel(), min(cap, s.numel() - 1) if max_ratio < 1 else cap))
        self._total_units = sum(l.units for l in self.layers)
        # Non-zero weights inside the first k units of the order: only those reduce params / FLOPs.
        with torch.no_grad():
            self._nonzero_before = {}
            for n, t in chosen.items():
                alive = (t.detach() != 0).reshape(-1).to(torch.float64).cpu()
                per_unit = torch.zeros(self._sorted[n].numel(), dtype=torch.float64).index_add_(
                    0, self._ids[n].reshape(-1), alive)
                self._nonzero_before[n] = torch.cumsum(per_unit[self._order[n]], 0).round().to(torch.int64)
        if metric == "units":
            self._dense, self._unit = 1.0, {n: 0.0 for n in chosen}
        elif metric == "params":
            self._dense = float(parameter_counts(model)["nonzero"])
            self._unit = {n: 1.0 for n in chosen}
        else:
            if example_input is None:
                raise PrunekitError("metric='flops' needs example_input to count FLOPs.")
            flops = count_flops(model, example_input)
            self._dense = float(flops["sparse_flops"])
            self._unit = {}
            for n, t in chosen.items():
                module = n.rpartition(".")[0]
                if n.rpartition(".")[2] != "weight" or module not in flops["layers"]:
                    raise PrunekitError(f"'{n}' is not the weight of a Linear/Conv layer, so its FLOPs are not "
                                        "counted; use metric='params' or select only layer weights.")
                macs = flops["layers"][module]["dense_macs"]
                self._unit[n] = 2.0 * macs / t.numel()

    def _removed(self, name: str, k: int) -> int:
        return int(self._nonzero_before[name][k - 1]) if k > 0 else 0

    def cost(self, counts: Mapping[str, int]) -> float:
        if self.metric == "units":
            return 1.0 - sum(int(k) for k in counts.values()) / self._total_units
        return self._dense - sum(self._removed(n, int(k)) * self._unit[n] for n, k in counts.items() if k)

    def masks(self, counts: Mapping[str, int]) -> dict[str, torch.Tensor]:
        out = {}
        for layer in self.layers:
            keep = torch.ones(layer.units, dtype=torch.bool)
            keep[self._order[layer.name][:int(counts.get(layer.name, 0))]] = False
            mask = gran.expand(keep, self._ids[layer.name])
            old = self._existing.get(layer.name)
            out[layer.name] = mask & old.cpu() if old is not None else mask
        return out

    def unit_scores(self, name: str):
        return self._sorted[name]

    def features(self, name: str) -> list[float]:
        t = named_parameters(self.model)[name]
        shape = list(t.shape) + [1] * (4 - t.dim())
        return [float(v) for v in shape[:2]] + [float(np.prod(shape[2:])), self._unit[name] * t.numel()]


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
