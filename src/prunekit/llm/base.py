"""The interface of a one-shot layer method: a Linear weight and its input statistics in,
a mask (and possibly reconstructed weights) out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from .statistics import InputStatistics


@dataclass
class LayerPruning:
    """A layer's outcome: `mask` (True keeps) and, for methods that reconstruct the kept
    weights, the new dense `weight` (pruned entries zero); None keeps the old values."""

    mask: torch.Tensor
    weight: torch.Tensor | None = None


class LayerMethod(ABC):
    """Prunes one Linear layer to a target (a float sparsity or an N:M pattern)."""

    name: str = ""
    #: which input statistics `prune` reads: None (data-free), "norms" or "gram"
    needs: str | None = None

    @abstractmethod
    def prune(self, weight: torch.Tensor, stats: InputStatistics | None, target) -> LayerPruning:
        """Never modifies `weight`; returns the mask and any new weights."""
