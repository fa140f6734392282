"""Whole residual branches as a pruning problem (prunekit.blocks finds and scores them).

One layer, "blocks", whose units are the prunable identity-shortcut branches, removed in
ascending relative branch norm s_F = ‖F(x)‖ / ‖x‖ over the calibration inputs (already removed
branches first, ties: the earlier branch). Pruning a unit masks every parameter of its branch.
Cost (metric):
  "units":  the fraction of branches left, 1 − k / n;
  "params": non-zero parameters left = total − non-zero parameters of the k removed branches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from ..accounting import parameter_counts
from ..blocks import block_scores, calibration_inputs, check_silenced, find_residual_blocks, is_removed
from ..errors import GraphError, PrunekitError
from ..masks import get_masks, named_parameters
from ..training import TrainConfig
from .base import Layer, MaskedModelProblem

METRICS = ("units", "params")
LAYER = "blocks"


class BlockProblem(MaskedModelProblem):
    def __init__(self, model: nn.Module, val=None, example_input=None, *, metric: str = "units", batches=None,
                 blocks=None, max_ratio: float = 1.0, train_data=None, train_config: TrainConfig | None = None):
        if metric not in METRICS:
            raise PrunekitError(f"metric must be one of {METRICS} for residual blocks, not {metric!r}.")
        self.model, self.val, self.example_input, self.metric = model, val, example_input, metric
        self.train_data, self.train_config = train_data, train_config or TrainConfig()
        found = blocks if blocks is not None else find_residual_blocks(model, example_input)
        self.blocks = [b for b in found if b.prunable]
        if not self.blocks:
            raise GraphError("No residual block with an identity shortcut and a maskable branch in this model; "
                             "see prunekit.find_residual_blocks(model, x) for the reasons.")
        self._inputs = calibration_inputs(batches, example_input)
        self._existing = get_masks(model)
        scores = block_scores(model, self.blocks, self._inputs)
        ranked = torch.tensor([-math.inf if is_removed(b, self._existing) else scores[b.name] for b in self.blocks],
                              dtype=torch.float64)
        self._order = torch.argsort(ranked, stable=True)
        self._sorted = ranked[self._order]
        n = len(self.blocks)
        self.layers = [Layer(LAYER, n, n if max_ratio >= 1 else int(max_ratio * n))]
        params = named_parameters(model)
        nonzero = [sum(int((params[p] != 0).sum()) for p in self.blocks[i].params) for i in self._order.tolist()]
        self._nonzero_before = [0] + list(torch.tensor(nonzero, dtype=torch.int64).cumsum(0).tolist())
        self._dense = float(parameter_counts(model)["nonzero"]) if metric == "params" else 1.0

    def cost(self, counts: Mapping[str, int]) -> float:
        k = int(counts.get(LAYER, 0))
        if self.metric == "units":
            return 1.0 - k / len(self.blocks)
        return self._dense - self._nonzero_before[k]

    def removed(self, counts: Mapping[str, int]) -> list:
        """The branches pruned at `counts`."""
        return [self.blocks[i] for i in self._order[:int(counts.get(LAYER, 0))].tolist()]

    def masks(self, counts: Mapping[str, int]):
        params = named_parameters(self.model)
        new = {name: torch.zeros(params[name].shape, dtype=torch.bool) for b in self.removed(counts) for name in b.params}
        return self._existing.intersect(new) if len(self._existing) else new

    def verify(self, masks) -> None:
        """Every removed branch must output exact zeros under `masks` (eval and train mode)."""
        gone = [b for b in self.blocks if is_removed(b, masks)]
        if gone:
            check_silenced(self.model, masks, gone, self._inputs[0])

    def unit_scores(self, name: str):
        return self._sorted
