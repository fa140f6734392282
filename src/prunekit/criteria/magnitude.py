"""Magnitude: the score of a weight is |w| (what the forward pass sees, i.e. w ⊙ m).

Pruning the k smallest |w| is the Euclidean projection onto k-sparse vectors:
argmin_{‖v‖₀ ≤ n−k} ‖w − v‖₂ keeps the largest entries and zeroes the rest.
Group norms (L1/L2/Lp over a row, kernel, channel …) come from aggregating these scores
over the granularity's units.
"""

from __future__ import annotations

import torch

from ..masks import effective_weight
from .base import Criterion


class Magnitude(Criterion):
    name = "magnitude"
    local = True

    def scores(self, model, params, *, batches=None, loss_fn=None):
        return {n: w.abs() for n, w in self.signed_scores(model, params).items()}

    def signed_scores(self, model, params, *, batches=None, loss_fn=None):
        with torch.no_grad():
            return {n: effective_weight(model, n).detach() for n in params}
