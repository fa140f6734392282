"""Small helpers every surgery step shares: a plain copy of a model, calling it on example
inputs, replacing a module wherever it is attached, and the matrix view of a layer weight."""

from __future__ import annotations

import torch
from torch import nn


def plain_copy(model: nn.Module) -> nn.Module:
    """A deep copy with every mask baked in (w ⊙ m) and no parametrization left; `model` is unchanged."""
    from ..compaction import _plain_copy  # the one implementation of a mask-free copy (tied weights kept tied)

    return _plain_copy(model)


def call(model: nn.Module, example_inputs):
    """model(example_inputs): a tensor, a tuple of positional inputs, or a dict of keyword inputs."""
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    return model(*(example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)))


def relative_error(reference, other) -> float:
    """max over outputs of ‖reference − other‖ / ‖reference‖ (inf when shapes differ)."""
    from ..compaction import relative_error as error

    return error(reference, other)


def replace_module(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Attach `new` wherever `old` is attached below `root` (a module reachable by two names is replaced at both)."""
    for name, module in list(root.named_modules(remove_duplicate=False)):
        for child_name, child in module.named_children():
            if child is old:
                setattr(module, child_name, new)


def matrix_view(weight: torch.Tensor) -> torch.Tensor:
    """A Linear weight as it is, a conv weight (O, I, k…) as its (O, I·k…) matrix."""
    return weight.reshape(weight.shape[0], -1)

