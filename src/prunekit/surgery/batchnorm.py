"""Fold eval-mode BatchNorm into the layer before it.

In eval mode a BatchNorm is an affine map per channel c,
    y_c = γ_c (z_c − μ_c) / √(σ²_c + ε) + β_c,
and when z = W x + b comes straight from a convolution or Linear layer, the two compose into
one layer with s_c = γ_c / √(σ²_c + ε):
    W'_c = s_c · W_c,    b'_c = s_c (b_c − μ_c) + β_c.
The BatchNorm becomes nn.Identity, and the memory-bound normalisation pass disappears.

Pairs are found from one forward pass, not from module order: a BatchNorm folds into a layer
only when its input *is* that layer's output tensor and nothing else reads that tensor (a
TorchFunctionMode counts every use), both modules run exactly once, and the BatchNorm uses
running statistics in eval mode. Anything else is left as it is.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import PrunekitError
from ..modes import evaluation_mode
from ..nested import tensors_in
from .common import call, plain_copy, relative_error, replace_module

_PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_METADATA = {"size", "dim", "numel", "stride", "__get__", "__len__", "is_contiguous", "is_floating_point",
             "element_size"}  # reading these does not consume the tensor's values


class _CountUses(TorchFunctionMode):
    """Counts the torch calls that read each watched tensor (at the level the Python code calls them).

    Only tensors in `watched` (id → name, kept alive by the caller) are counted: the id of a
    freed tensor can come back for a new one, so counting every id would mix tensors up."""

    def __init__(self, watched: dict):
        super().__init__()
        self.watched, self.uses = watched, Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") not in _METADATA:
            for t in tensors_in((args, kwargs)):
                if id(t) in self.watched:
                    self.uses[id(t)] += 1
        return func(*args, **kwargs)


def _foldable_bn(bn: nn.Module) -> bool:
    return isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.running_mean is not None


def find_foldable(model: nn.Module, example_inputs) -> list[tuple[str, str]]:
    """[(layer name, BatchNorm name)] of the pairs that fold exactly (see the module docstring)."""
    outputs, inputs, calls, keep = {}, {}, Counter(), []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, _PRODUCERS):
            def produced(mod, args, out, name=name):
                calls[name] += 1
                outputs[id(out)] = name
                keep.append(out)  # alive until the pass ends, so ids stay unique
            handles.append(module.register_forward_hook(produced))
        elif _foldable_bn(module):
            def consumed(mod, args, name=name):
                calls[name] += 1
                inputs[name] = id(args[0])
            handles.append(module.register_forward_pre_hook(consumed))
    try:
        with evaluation_mode(model), torch.no_grad(), _CountUses(outputs) as counter:
            call(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    pairs = []
    for bn_name, tensor in inputs.items():
        layer_name = outputs.get(tensor)
        if layer_name is None or counter.uses[tensor] != 1 or calls[layer_name] != 1 or calls[bn_name] != 1:
            continue
        layer, bn = model.get_submodule(layer_name), model.get_submodule(bn_name)
        if layer.weight.shape[0] == bn.num_features:
            pairs.append((layer_name, bn_name))
    return pairs


def fold_into(layer: nn.Module, bn: nn.Module) -> None:
    """W ← s·W, b ← s(b − μ) + β in place (s = γ/√(σ² + ε); γ = 1, β = 0 without affine)."""
    with torch.no_grad():
        w = layer.weight
        scale = (bn.running_var.double() + bn.eps).rsqrt()
        shift = -bn.running_mean.double()
        if bn.affine:
            scale = scale * bn.weight.double()
        bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(scale)
        new_bias = scale * (bias + shift) + (bn.bias.double() if bn.affine else 0.0)
        w.copy_((w.double() * scale.reshape(-1, *[1] * (w.dim() - 1))).to(w.dtype))
        if layer.bias is None:
            layer.bias = nn.Parameter(new_bias.to(w.dtype), requires_grad=w.requires_grad)
        else:
            layer.bias.copy_(new_bias.to(w.dtype))


def fold_batchnorm(model: nn.Module, example_inputs, *, rtol: float = 1e-5) -> tuple[nn.Module, list[dict]]:
    """(copy of `model` with every foldable BatchNorm folded and replaced by Identity, [{layer, batchnorm}]).

    The copy is for inference: its outputs equal `model`'s in eval mode (relative error ≤
    rtol, checked on `example_inputs`; PrunekitError otherwise). Masks are baked first;
    zeros stay zeros. `model` is not changed.
    """
    folded = plain_copy(model)
    pairs = find_foldable(folded, example_inputs)
    for layer_name, bn_name in pairs:
        bn = folded.get_submodule(bn_name)
        fold_into(folded.get_submodule(layer_name), bn)
        replace_module(folded, bn, nn.Identity())
    with torch.no_grad(), evaluation_mode(model), evaluation_mode(folded):
        error = relative_error(call(model, example_inputs), call(folded, example_inputs))
    if not error <= rtol:
        raise PrunekitError(f"Folding BatchNorm changed the outputs (relative error {error:.2e} > {rtol:g}); nothing "
                            "was changed. Please report this model.")
    return folded.eval(), [{"layer": a, "batchnorm": b} for a, b in pairs]
