"""Removing one class to a target accuracy: the min-cut search and the attribution baseline.

Both are chosen on the data they are given (training data; never the test set):

  * `search_cut` tries every coverage of the grid, keeps the cuts that bring the removed
    class's accuracy to ≤ `target`, and returns the one that keeps the other classes' accuracy
    highest (the largest coverage when none reaches the target);
  * `smallest_attribution` returns the fewest top-attribution units that reach `target`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.data import TensorDataset

from ..errors import PrunekitError
from .mincut import CapabilityCut, capability_cut
from .removal import attribution_units, class_accuracy, remove_units

COVERAGES = tuple(i / 20 for i in range(2, 20))  # 0.10, 0.15, … 0.95


def removal_accuracy(model: nn.Module, units: dict, data: TensorDataset, k: int) -> dict:
    """class_accuracy of a copy of `model` with `units` removed (the model itself is untouched)."""
    trial = copy.deepcopy(model)
    remove_units(trial, units)
    return class_accuracy(trial, data, k)


def search_cut(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int, *, target: float = 0.15,
               coverages=COVERAGES, unit_cost: float = 1.0, last_layer: bool = False) -> tuple[CapabilityCut, dict]:
    """(cut, its accuracies on (x, y)) for the best coverage, as described above;
    `last_layer`: cut among the last hidden layer's units only (see capability_cut)."""
    if not coverages:
        raise PrunekitError("Give at least one coverage to try.")
    data = TensorDataset(x, y)
    best = None
    for coverage in sorted(coverages):
        cut = capability_cut(model, x, y, k, coverage=coverage, unit_cost=unit_cost, last_layer=last_layer)
        acc = removal_accuracy(model, cut.units, data, k)
        reached = acc["removed"] <= target
        key = (reached, acc["kept"] if reached else coverage)
        if best is None or key > best[0]:
            best = (key, cut, acc)
    return best[1], best[2]


def smallest_attribution(model: nn.Module, relevance: dict, x: torch.Tensor, y: torch.Tensor, k: int, *,
                         target: float = 0.15) -> tuple[dict, dict]:
    """(units, accuracies on (x, y)) for the fewest top-relevance units reaching `target`
    (all hidden units when none does)."""
    data = TensorDataset(x, y)
    total = sum(len(v) for v in relevance.values())
    for n in range(1, total + 1):
        units = attribution_units(relevance, n)
        acc = removal_accuracy(model, units, data, k)
        if acc["removed"] <= target:
            return units, acc
    return units, acc
