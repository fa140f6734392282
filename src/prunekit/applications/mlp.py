"""The layered structure of an MLP, and per-layer signals on data.

An MLP here is an `nn.Sequential` of Flatten / Linear / ReLU / Dropout / Identity whose
last Linear produces the class scores. Its hidden units are the outputs of every other
Linear: unit i of Linear l is row i of W_l, and it reaches the rest of the network only
through column i of W_{l+1}.

`layer_signals` runs the model once on a batch and returns, for every Linear l, its input
a_l (batch × in) and the gradient g_l = ∂f/∂h_l (batch × out) of a scalar f of the
outputs with respect to its pre-activation h_l = W_l a_l + b_l.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import PrunekitError
from ..masks import effective_weight
from ..modes import evaluation_mode

_ALLOWED = (nn.Flatten, nn.Linear, nn.ReLU, nn.Dropout, nn.Identity)


@dataclass(frozen=True)
class HiddenLayer:
    """The units produced by Linear `name`; `next_name` is the Linear that reads them."""

    name: str
    next_name: str
    size: int


def mlp_linears(model: nn.Module) -> list[str]:
    """Names of the model's Linear layers in forward order; raises unless `model` is an MLP."""
    if not isinstance(model, nn.Sequential):
        raise PrunekitError(f"Expected an MLP built as nn.Sequential (Flatten/Linear/ReLU/Dropout), got "
                            f"{type(model).__name__}; wrap the layers in nn.Sequential.")
    names = []
    for name, child in model.named_children():
        if not isinstance(child, _ALLOWED):
            raise PrunekitError(f"Layer '{name}' ({type(child).__name__}) is not supported here; the MLP may only "
                                "hold Flatten, Linear, ReLU, Dropout and Identity layers.")
        if isinstance(child, nn.Linear):
            names.append(name)
    if len(names) < 2:
        raise PrunekitError("The MLP needs at least one hidden layer (two Linear layers).")
    return names


def hidden_layers(model: nn.Module) -> list[HiddenLayer]:
    linears = mlp_linears(model)
    return [HiddenLayer(name, nxt, model.get_submodule(name).out_features) for name, nxt in zip(linears, linears[1:])]


def layer_weight(model: nn.Module, name: str) -> torch.Tensor:
    """The weight the forward pass of Linear `name` uses (w ⊙ m when masked)."""
    return effective_weight(model, f"{name}.weight").detach()


def layer_signals(model: nn.Module, x: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor]
                  ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{Linear name: (a_l, g_l)} for f = objective(model(x)) (a scalar), in eval mode."""
    linears = mlp_linears(model)
    inputs, outputs, handles = {}, {}, []

    def record(name):
        def hook(module, args, output):
            inputs[name] = args[0].detach()
            outputs[name] = output
        return hook

    for name in linears:
        handles.append(model.get_submodule(name).register_forward_hook(record(name)))
    try:
        with evaluation_mode(model), torch.enable_grad():
            f = objective(model(x.detach().requires_grad_(True)))  # a graph even with frozen weights
            # autograd.grad, not backward(): the parameters' .grad stay exactly as the user left them
            grads = torch.autograd.grad(f, [outputs[name] for name in linears], allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    return {name: (inputs[name], torch.zeros_like(outputs[name]) if g is None else g.detach())
            for name, g in zip(linears, grads)}
