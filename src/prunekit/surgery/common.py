"""Small helpers every surgery step shares: replacing a module wherever it is attached and the
matrix view of a layer weight; a plain copy, a call on example inputs and the output error are
prunekit.compaction's (re-exported here so every surgery module imports from one place)."""

from __future__ import annotations

import torch
from torch import nn

from ..compaction import call_model as call
from ..compaction import plain_copy, relative_error

__all__ = ["call", "matrix_view", "plain_copy", "relative_error", "replace_module"]


def replace_module(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Attach `new` wherever `old` is attached below `root` (a module reachable by two names is replaced at both)."""
    for name, module in list(root.named_modules(remove_duplicate=False)):
        for child_name, child in module.named_children():
            if child is old:
                setattr(module, child_name, new)


def matrix_view(weight: torch.Tensor) -> torch.Tensor:
    """A Linear weight as it is, a conv weight (O, I, k…) as its (O, I·k…) matrix."""
    return weight.reshape(weight.shape[0], -1)

