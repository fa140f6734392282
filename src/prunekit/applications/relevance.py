"""How much each weight and hidden unit of an MLP carries one class, and what the others need.

Class relevance (gradient × input, averaged over the examples X_k of class k), for the
class-k logit z_k and Linear l with input a_l, weight W_l and pre-activation gradient
g_l = ∂z_k/∂h_l:

    R_l[i, j] = (1/|X_k|) Σ_{x∈X_k} g_l,i(x) · W_l[i, j] · a_l,j(x)        (edge j → i)
    R(unit i of layer l) = Σ_m R_{l+1}[m, i] = mean_x a_i(x) · ∂z_k/∂a_i(x)

R > 0 means the weight (unit) adds evidence for class k. The sum of R over a unit's
outgoing edges is its own relevance, so edges and units are measured in the same currency.

Keep importance of hidden unit i (the cost of removing it for the classes that stay),
over the examples X_keep of every other class with labels y:

    C(i) = (1/|X_keep|) Σ_{x∈X_keep} | a_i(x) · ∂z_y(x)/∂a_i(x) |

the size of the unit's first-order contribution to the correct logit; unlike the
cross-entropy gradient it does not vanish on confidently classified examples.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import PrunekitError
from .mlp import hidden_layers, layer_signals, layer_weight, mlp_linears


def class_relevance(model: nn.Module, x_class: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """{Linear name: R_l (out × in)}: the edge relevances for logit k over the inputs x_class."""
    if len(x_class) == 0:
        raise PrunekitError(f"No examples of class {k} to measure its relevance on; pass data that contains it.")
    signals = layer_signals(model, x_class, lambda out: out[:, k].sum())
    return {name: (g.T @ a) / len(x_class) * layer_weight(model, name) for name, (a, g) in signals.items()}


def unit_relevance(model: nn.Module, edge_relevance: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{hidden Linear name: R(unit)}: the column sums of the next layer's edge relevance."""
    return {layer.name: edge_relevance[layer.next_name].sum(0) for layer in hidden_layers(model)}


def keep_importance(model: nn.Module, x_keep: torch.Tensor, y_keep: torch.Tensor) -> dict[str, torch.Tensor]:
    """{hidden Linear name: C (units)}: mean |a_i · ∂z_y/∂a_i| over the examples that stay."""
    if len(x_keep) == 0:
        raise PrunekitError("No examples of the classes to keep; pass data with more than one class.")
    rows = torch.arange(len(y_keep))
    linears = mlp_linears(model)
    out: dict[str, torch.Tensor] = {}
    # Per example: ∂z_y/∂a_i = Σ_m g_{l+1,m} W_{l+1}[m, i], with g from the summed objective
    # (examples do not interact in eval mode, so each row of g is that example's own gradient).
    signals = layer_signals(model, x_keep, lambda logits: logits[rows, y_keep].sum())
    for layer, nxt in zip(linears, linears[1:]):
        a_next, g_next = signals[nxt]
        grad_a = g_next @ layer_weight(model, nxt)
        out[layer] = (a_next * grad_a).abs().mean(0)
    return out
