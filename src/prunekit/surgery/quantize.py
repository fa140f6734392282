"""Int8 weights with one scale per output channel (symmetric, weight-only).

For output channel o of a Linear / Conv weight W:
    s_o = max_i |W_oi| / 127   (1 for an all-zero channel),   q_oi = round(W_oi / s_o) ∈ [−127, 127],
and the layer computes with Ŵ_oi = s_o · q_oi, so |Ŵ_oi − W_oi| ≤ s_o / 2. A pruned weight
(0) stays exactly 0 and the channel's largest weight is exact up to rounding of s_o, so
sparsity and structure survive. Storage: 1 byte per weight plus 4 bytes per channel,
≈ 4× smaller than float32. Activations stay in floating point (the layer dequantises its
weight on the fly), so this saves memory and file size, not compute.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PrunekitError, did_you_mean
from .common import plain_copy, replace_module

_CONV = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 q, float scale per output channel) with weight ≈ scale[o] · q[o, …]."""
    w = weight.detach().double()
    peak = w.reshape(w.shape[0], -1).abs().amax(dim=1)
    scale = torch.where(peak > 0, peak / 127, torch.ones_like(peak))
    q = torch.round(w / scale.reshape(-1, *[1] * (w.dim() - 1))).clamp(-127, 127).to(torch.int8)
    return q, scale.to(weight.dtype)


class Int8Layer(nn.Module):
    """A Linear or Conv layer whose weight is stored as int8 with per-output-channel scales."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        q, scale = quantize_per_channel(layer.weight)
        self.kind = type(layer).__name__
        self.register_buffer("weight_int8", q)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())
        self.conv_args = None if isinstance(layer, nn.Linear) else (
            layer.stride, layer.padding, layer.dilation, layer.groups)
        self._conv = _CONV.get(type(layer))

    def dequantized(self) -> torch.Tensor:
        return self.weight_int8.to(self.scale.dtype) * self.scale.reshape(-1, *[1] * (self.weight_int8.dim() - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv_args is None:
            return F.linear(x, self.dequantized(), self.bias)
        return self._conv(x, self.dequantized(), self.bias, *self.conv_args)

    def extra_repr(self) -> str:
        return f"{self.kind}, weight={tuple(self.weight_int8.shape)} int8, per-channel scales"


def _quantizable(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return type(module) in _CONV and module.padding_mode == "zeros" and not isinstance(module.padding, str)


def quantize_int8(model: nn.Module, layers=None) -> nn.Module:
    """A copy of `model` whose Linear / Conv layers (default: all; or the module names in
    `layers`) hold int8 weights with per-output-channel scales. Masks are baked first;
    `model` is not changed."""
    plain = plain_copy(model)
    available = {n: m for n, m in plain.named_modules() if n and _quantizable(m)}
    names = list(available) if layers is None else list(layers)
    for name in names:
        if name not in available:
            raise PrunekitError(f"'{name}' is not a Linear / Conv layer that can be quantised."
                                f"{did_you_mean(name, available)}")
    for name in names:
        replace_module(plain, available[name], Int8Layer(available[name]))
    return plain


def model_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer of `model` as stored (an int8 weight counts 1 byte)."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
