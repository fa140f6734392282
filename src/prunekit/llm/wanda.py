"""Wanda (Sun et al., 2024): pruning by weights and activations, compared per output row.

    S_ij = |W_ij| · ‖X_j‖₂

where X_j is input feature j over every calibration token reaching the layer. Within each
output row i the lowest scores are pruned (or the m − n lowest of each N:M group). No weight
update: the mask alone.
"""

from __future__ import annotations

import torch

from ..errors import PrunekitError
from .base import LayerMethod, LayerPruning
from .statistics import InputStatistics
from .targets import mask_from_scores


def wanda_scores(weight: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """|W| · ‖X_j‖₂ broadcast along the rows."""
    return weight.detach().abs().float() * norms.to(weight.device).float().unsqueeze(0)


class Wanda(LayerMethod):
    name = "wanda"
    needs = "norms"

    def prune(self, weight: torch.Tensor, stats: InputStatistics | None, target) -> LayerPruning:
        if stats is None or stats.tokens == 0:
            raise PrunekitError("Wanda needs the layer's input norms from calibration tokens; none were seen.")
        return LayerPruning(mask_from_scores(wanda_scores(weight, stats.norms), target))
