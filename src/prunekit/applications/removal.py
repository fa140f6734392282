"""Removing hidden units of an MLP with masks, the baselines, and per-class accuracy.

A hidden unit i of Linear l is removed by masking column i of the next Linear's weight:
whatever the unit computes (its bias included) then never reaches the rest of the network,
which is exactly the network with a_i ≡ 0. Masks are prunekit masks (w ⊙ m), intersected
with any already installed, so the removal composes with earlier pruning.

Baselines for the same number of units n:
  * attribution — the n units with the largest class relevance R(unit) (one ranking over
    all hidden layers; relevance is in logit units, comparable across layers);
  * random — n units drawn uniformly from all hidden units.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import PrunekitError
from ..masks import MaskSet, apply_masks, get_masks
from ..modes import evaluation_mode
from .mlp import hidden_layers


def unit_masks(model: nn.Module, units: dict[str, list[int]]) -> MaskSet:
    """Masks (for the next Linears' weights) that remove `units` ({hidden Linear: indices})."""
    layers = {layer.name: layer for layer in hidden_layers(model)}
    masks = {}
    for name, indices in units.items():
        if name not in layers:
            raise PrunekitError(f"'{name}' is not a hidden Linear of this MLP; choose from {list(layers)}.")
        layer = layers[name]
        bad = [i for i in indices if not 0 <= int(i) < layer.size]
        if bad:
            raise PrunekitError(f"Unit indices {bad[:5]} are outside [0, {layer.size}) for layer '{name}'.")
        weight_name = f"{layer.next_name}.weight"
        mask = torch.ones(model.get_submodule(layer.next_name).weight.shape, dtype=torch.bool)
        mask[:, list(map(int, indices))] = False
        masks[weight_name] = mask
    return MaskSet(masks)


def remove_units(model: nn.Module, units: dict[str, list[int]]) -> MaskSet:
    """Remove `units` from `model` in place (masks kept together with existing ones); returns
    the masks now installed on the affected weights."""
    new = unit_masks(model, units)
    existing = get_masks(model)
    combined = MaskSet({name: mask & existing[name] if name in existing else mask for name, mask in new.items()})
    apply_masks(model, combined)
    return combined


def attribution_units(relevance: dict[str, torch.Tensor], n: int) -> dict[str, list[int]]:
    """The n units with the largest relevance, over all layers (ties: earlier layer first)."""
    flat = [(float(r), name, i) for name, values in relevance.items() for i, r in enumerate(values)]
    order = sorted(range(len(flat)), key=lambda j: -flat[j][0])[:n]
    out = {name: [] for name in relevance}
    for j in order:
        out[flat[j][1]].append(flat[j][2])
    return {name: sorted(v) for name, v in out.items()}


def random_units(sizes: dict[str, int], n: int, generator: torch.Generator) -> dict[str, list[int]]:
    """n units drawn uniformly without replacement from all hidden units."""
    index = [(name, i) for name, size in sizes.items() for i in range(size)]
    if not 0 <= n <= len(index):
        raise PrunekitError(f"Cannot draw {n} of {len(index)} hidden units.")
    chosen = torch.randperm(len(index), generator=generator)[:n].tolist()
    out = {name: [] for name in sizes}
    for j in chosen:
        out[index[j][0]].append(index[j][1])
    return {name: sorted(v) for name, v in out.items()}


def class_accuracy(model: nn.Module, dataset, k: int) -> dict:
    """Accuracy on the examples of class k ("removed") and on all the others ("kept")."""
    x, y = dataset.tensors
    with evaluation_mode(model), torch.no_grad():
        predicted = model(x).argmax(-1)
    correct = predicted == y
    chosen = y == k
    return {"removed": correct[chosen].float().mean().item(), "kept": correct[~chosen].float().mean().item(),
            "predicted_as_removed": (predicted[~chosen] == k).float().mean().item()}
