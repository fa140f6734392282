"""LayerNorm and RMSNorm over kept features only, so a width can be pruned through them exactly.

A norm over a feature axis computes its statistic from every feature. Zeroing a feature in a
masked model is therefore not the same as deleting it: the compacted model's LayerNorm takes
its mean and variance over the kept features K only,

    LayerNorm:  y_K = w_K ⊙ (x_K − μ_K) / √(σ²_K + ε) + b_K
    RMSNorm:    y_K = w_K ⊙ x_K / √(mean_K(x²) + ε)

When a prunekit mask sits on the weight of such a norm, the masked model computes exactly
that (and 0 for the removed features), so masked == compacted holds for a residual width that
passes through norms. The mask on the weight *is* the set of features the norm has.

How: `apply_masks` calls `normalise_over_kept(module)`, which sets `forward` (and the norm's kind
and axis, decided once) on the class that torch.nn.utils.parametrize generated for this one module. Nothing else is touched: a deep copy
carries it, and removing the module's last mask restores the user's own class (and forward).

RMS-type norms (any `*RMSNorm`, HF's `T5LayerNorm`) are computed by the module's own forward
on the input scaled by c = √(n/k), the output divided by c: with the removed features zeroed,
mean_n((c·x)²) = mean_K(x²), so any variant (a (1 + w) scale, a float32 upcast) stays exact.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# LayerNorm subclasses that normalise over axis 1 of an (N, C, H, W) input (torchvision's and
# timm's ConvNeXt): recognised by name, their forward permutes around F.layer_norm
_CHANNELS_FIRST = ("LayerNorm2d",)
_RMS_NAMES = ("T5LayerNorm",)


def _user_class(module: nn.Module) -> type:
    """The module's own class, under the one parametrize generates for a masked module."""
    cls = type(module)
    return cls.__bases__[0] if getattr(module, "parametrizations", None) is not None else cls


def _has_vector_weight(module: nn.Module) -> bool:
    chain = getattr(module, "parametrizations", None)
    if chain is not None and "weight" in chain:
        weight = getattr(chain["weight"], "original", None)  # None: computed from several tensors
    else:
        weight = module._parameters.get("weight")
    return isinstance(weight, torch.Tensor) and weight.dim() == 1


def _is_timm_layer_norm(cls: type) -> bool:
    """timm's LayerNorm: F.layer_norm over the last axis (or the same through its fused kernel)."""
    return cls.__name__ == "LayerNorm" and cls.__module__.split(".")[0] == "timm"


def norm_kind(module: nn.Module) -> tuple[str, int] | None:
    """("layer" | "rms", the axis of the input it normalises) for a norm prunekit can make exact
    over kept features; None for anything else (no scale to carry the mask, several axes, a
    subclass whose forward prunekit does not know)."""
    cls = _user_class(module)
    if not _has_vector_weight(module):
        return None
    if isinstance(module, nn.LayerNorm):
        if len(module.normalized_shape) != 1:
            return None
        if cls.forward is nn.LayerNorm.forward or _is_timm_layer_norm(cls):
            return "layer", -1
        return ("layer", 1) if cls.__name__ in _CHANNELS_FIRST else None
    if hasattr(nn, "RMSNorm") and isinstance(module, nn.RMSNorm):
        return ("rms", -1) if cls.forward is nn.RMSNorm.forward and len(module.normalized_shape) == 1 else None
    name = cls.__name__
    own = set(module._parameters) | set(getattr(module, "parametrizations", {}))
    children = set(module._modules) - {"parametrizations"}
    if (name.endswith("RMSNorm") or name in _RMS_NAMES) and not children and own == {"weight"}:
        return "rms", -1
    return None


def kept_features(module: nn.Module) -> torch.Tensor | None:
    """The bool mask on the norm's weight (True = feature kept), or None when it has none."""
    chain = getattr(module, "parametrizations", None)
    if chain is None or "weight" not in chain:
        return None
    return getattr(chain["weight"][0], "mask", None)


def removed_somewhere(model: nn.Module) -> list[str]:
    """Names of the norms of `model` whose masks remove features (their dense copies would differ)."""
    return [name for name, m in model.named_modules()
            if norm_kind(m) is not None and (keep := kept_features(m)) is not None and _partial(keep)]


def _partial(keep: torch.Tensor) -> bool:
    """Some features removed, some kept. With all removed (a silenced residual branch) the norm's
    output is 0 either way: its scale and shift are all masked."""
    return bool(keep.any()) and not bool(keep.all())


def _exact_forward(self, *args, **kwargs):
    keep = kept_features(self)
    plain = _user_class(self).forward
    if keep is None or not _partial(keep):
        out = plain(self, *args, **kwargs)
        return out if keep is None or bool(keep.any()) else torch.zeros_like(out)
    kind, axis = type(self)._prunekit_feature_norm  # decided once, when the mask was installed
    if args:
        x, rest, extra = args[0], args[1:], kwargs
    else:  # the input passed by keyword (hidden_states=…)
        key = next(iter(kwargs))
        x, rest, extra = kwargs[key], (), {k: v for k, v in kwargs.items() if k != key}
    if kind == "rms":
        scale = math.sqrt(keep.numel() / int(keep.sum()))
        x = torch.where(_along(keep.to(x.device), x, axis), x, x.new_zeros(())) * scale
        return plain(self, x, *rest, **extra) / scale
    return _layer_norm_over_kept(x, keep, axis, self.weight, self.bias, self.eps)


def _along(keep: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    shape = [1] * x.dim()
    shape[axis] = -1
    return keep.reshape(shape)


def _layer_norm_over_kept(x, keep, axis, weight, bias, eps):
    index = torch.nonzero(keep).flatten().to(x.device)
    kept = x.index_select(axis, index).movedim(axis, -1)
    y = F.layer_norm(kept, (len(index),), weight.index_select(0, index),
                     None if bias is None else bias.index_select(0, index), eps).movedim(-1, axis)
    return y.new_zeros(x.shape).index_copy(axis % x.dim(), index, y)


def normalise_over_kept(module: nn.Module) -> None:
    """Make a masked norm compute its statistic over the features its weight mask keeps.
    Called on a module whose weight carries a prunekit mask (its class is parametrize's own)."""
    kind = norm_kind(module)
    if kind is not None and kept_features(module) is not None:
        type(module)._prunekit_feature_norm = kind
        type(module).forward = _exact_forward


__all__ = ["kept_features", "norm_kind", "normalise_over_kept", "removed_somewhere"]
