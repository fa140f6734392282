"""Magnitude pruning per output row: score S_ij = |W_ij|.

The lowest-scoring weights of each output row are pruned (round(s · in_features) of them),
or the m − n lowest of each group of m under an N:M pattern. Data-free: the baseline every
calibrated method must beat.
"""

from __future__ import annotations

import torch

from .base import LayerMethod, LayerPruning
from .targets import mask_from_scores


class Magnitude(LayerMethod):
    name = "magnitude"
    needs = None

    def prune(self, weight: torch.Tensor, stats, target) -> LayerPruning:
        return LayerPruning(mask_from_scores(weight.detach().abs(), target))
