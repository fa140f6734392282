"""Ranks as pruning units, so prunekit's allocators choose per-layer SVD ranks under a budget.

    problem = RankProblem(model, data.test, x, metric="params")
    allocation = KnapsackAllocator(budget=0.5).allocate(problem)     # or GreedyAllocator, …
    small, rows = low_rank(model, ranks=problem.ranks(allocation.counts))

Layer l (weight matrix m × n) has u = useful_rank(m, n) units: the ranks below m·n/(m+n), the
only ones at which factorising saves anything. Pruning k units gives

    k = 0: the dense layer, cost c·m·n;      k ≥ 1: rank r = u + 1 − k, cost c·r·(m + n),

with c = 1 for metric "params" and c = 2·P (P output positions: every weight of either factor
is used once per position, as in prunekit.accounting) for "flops". The cost falls with every
unit (the first saves m·n − u·(m+n) ∈ (0, m+n], each further one m+n), so the allocators'
"within one unit" guarantee holds. Unit order is fixed: the smallest singular values go first.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from ..accounting import count_flops
from ..errors import PrunekitError
from ..surgery.common import matrix_view, plain_copy
from ..surgery.lowrank import chosen_layers, low_rank, useful_rank
from ..training import TrainConfig
from .base import Layer, ModelProblem

METRICS = ("params", "flops")


class RankProblem(ModelProblem):
    """Per-layer SVD ranks of `model`'s Linear / Conv layers, evaluated on `val` (a TensorDataset)."""

    def __init__(self, model: nn.Module, val, example_input=None, *, metric: str = "params", layers=None,
                 train_data=None, train_config: TrainConfig | None = None):
        if metric not in METRICS:
            raise PrunekitError(f"metric must be one of {METRICS}, not {metric!r}.")
        if metric == "flops" and example_input is None:
            raise PrunekitError("metric='flops' needs example_input to count each layer's output positions.")
        self.model, self.val, self.metric = model, val, metric
        self.train_data, self.train_config = train_data, train_config or TrainConfig()
        plain = plain_copy(model)
        chosen = chosen_layers(plain, layers)
        flops = count_flops(plain, example_input)["layers"] if metric == "flops" else {}
        self._shape, self._unit = {}, {}
        self.layers = []
        for name, module in chosen.items():
            m, n = matrix_view(module.weight).shape
            if useful_rank(m, n) < 1:
                continue  # no rank of this layer saves anything
            self._shape[name] = (m, n)
            self._unit[name] = 1.0 if metric == "params" else 2.0 * flops[name]["dense_macs"] / (m * n)
            self.layers.append(Layer(name, useful_rank(m, n), useful_rank(m, n)))
        if not self.layers:
            raise PrunekitError("No layer of the model can be factorised to fewer parameters.")
        if metric == "params":
            self._dense = float(sum(p.numel() for p in plain.parameters()))
        else:
            self._dense = float(count_flops(plain, example_input)["dense_flops"])

    def rank(self, name: str, k: int) -> int | None:
        """The rank layer `name` keeps with k units pruned (None: dense)."""
        return None if k == 0 else self.layer(name).units + 1 - k

    def ranks(self, counts: Mapping[str, int]) -> dict[str, int]:
        """{layer: rank} for every factorised layer of an allocation (dense layers left out)."""
        return {n: self.rank(n, k) for n, k in self.full(counts).items() if k}

    def _layer_cost(self, name: str, k: int) -> float:
        m, n = self._shape[name]
        return self._unit[name] * (m * n if k == 0 else self.rank(name, k) * (m + n))

    def cost(self, counts: Mapping[str, int]) -> float:
        return self._dense - sum(self._layer_cost(n, 0) - self._layer_cost(n, int(k)) for n, k in counts.items() if k)

    def apply(self, counts: Mapping[str, int], model: nn.Module | None = None) -> nn.Module:
        source = model if model is not None else self.model
        ranks = self.ranks(counts)
        return low_rank(source, ranks=ranks)[0] if ranks else plain_copy(source)

    def features(self, name: str) -> list[float]:
        m, n = self._shape[name]
        return [float(m), float(n), self._unit[name] * m * n]
