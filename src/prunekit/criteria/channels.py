"""Which module's output channels a parameter belongs to, and which BatchNorm normalises them.

Channel-level criteria (BN |γ|, APoZ) score the output channels of a layer and broadcast each
channel's value over the parameter's slice along dimension 0 (a conv filter, a Linear row, a
bias entry, a BN γ/β entry). To find the BatchNorm that follows a conv or Linear layer:

- with an example input, a forward pass records which module produced each BatchNorm's input
  tensor (exact, whatever the module order);
- without one, the first BatchNorm registered after the layer, with no other weighted layer in
  between and a matching number of channels, is taken (the usual conv → bn → act order).
"""

from __future__ import annotations

import torch
from torch import nn

from ..modes import evaluation_mode
from ..nested import model_inputs

NORMS = (nn.modules.batchnorm._BatchNorm,)


def owner_name(param_name: str) -> str:
    return param_name.rpartition(".")[0]


def out_channels(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels
    if isinstance(module, NORMS):
        return module.num_features
    return None


def channel_dim(module: nn.Module, output: torch.Tensor) -> int:
    """Linear layers put features last; convolutions and BatchNorm put channels at dim 1."""
    if isinstance(module, nn.Linear) or output.dim() < 2:
        return output.dim() - 1
    return 1


def _weighted(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.modules.conv._ConvNd))


def traced_norms(model: nn.Module, example: torch.Tensor) -> dict[str, str]:
    """{layer name: name of the BatchNorm that normalises its output}, from one forward pass."""
    names = {m: n for n, m in model.named_modules()}
    produced: dict[int, str] = {}
    found: dict[str, str] = {}
    handles = []

    def after(module, args, output):
        if _weighted(module) and isinstance(output, torch.Tensor):
            produced[id(output)] = names[module]

    def before(module, args):
        if args and isinstance(args[0], torch.Tensor) and id(args[0]) in produced:
            found[produced[id(args[0])]] = names[module]

    try:
        for module in model.modules():
            if _weighted(module):
                handles.append(module.register_forward_hook(after))
            elif isinstance(module, NORMS):
                handles.append(module.register_forward_pre_hook(before))
        with evaluation_mode(model), torch.no_grad():
            model_inputs(example)(model)
    finally:
        for h in handles:
            h.remove()
    return found


def ordered_norms(model: nn.Module) -> dict[str, str]:
    """{layer name: following BatchNorm} from registration order (no forward pass)."""
    found, pending = {}, None
    for name, module in model.named_modules():
        if _weighted(module):
            pending = (name, out_channels(module))
        elif isinstance(module, NORMS) and pending is not None:
            if pending[1] == module.num_features:
                found[pending[0]] = name
            pending = None
    return found


def norms_after(model: nn.Module, example: torch.Tensor | None = None) -> dict[str, str]:
    return traced_norms(model, example) if example is not None else ordered_norms(model)
