"""Built-in layer handlers for torch.nn layers: their attributes after compaction and their MACs.

Their tracing is done operation by operation (layers.py: F.conv2d, F.linear …), so these
handlers only say what compaction and accounting need; GPT-2's Conv1D is also traced whole.
A few widely used modules of other libraries write a channel count into their code; they are
recognised by class name and layout (never imported) and get handlers that name those counts:
torchvision's VisionTransformer, timm's ViT Attention, transformers' GPT2Attention.
`size(tensor, dim, default)` gives the new size of one of the module's tensors along `dim`
("<channels>" is the module's input channel count).
"""

from __future__ import annotations

import torch
from torch import nn

from ..feature_norms import norm_kind
from .layers import feature_norm, is_transposed_linear, transposed_linear
from .registry import LayerHandler


def _weighted_macs(weight: torch.Tensor, positions: int) -> tuple[int, int]:
    """Every weight is used once per position: (dense, non-zero) multiply-accumulates."""
    return positions * weight.numel(), positions * int(torch.count_nonzero(weight))


class ConvHandler(LayerHandler):
    def attributes(self, m, size):
        if m.transposed:
            return {"in_channels": size("weight", 0), "out_channels": size("weight", 1) * m.groups}
        out = {"out_channels": size("weight", 0), "in_channels": size("<channels>", 0, m.in_channels)}
        out["groups"] = out["in_channels"] // size("weight", 1)
        return out

    def macs(self, m, inputs, output):
        # per output position (weight.shape[0] = output channels); a transposed conv uses every
        # weight once per *input* position (weight.shape[0] = input channels)
        source = inputs[0] if m.transposed else output
        return _weighted_macs(m.weight, source.numel() // m.weight.shape[0])


class LinearHandler(LayerHandler):
    def attributes(self, m, size):
        return {"in_features": size("weight", 1), "out_features": size("weight", 0)}

    def macs(self, m, inputs, output):
        return _weighted_macs(m.weight, output.numel() // m.weight.shape[0])


class ChannelNormHandler(LayerHandler):
    """BatchNorm / InstanceNorm: one scale, shift and statistic per channel."""

    def attributes(self, m, size):
        return {"num_features": size("<channels>", 0, m.num_features)}


class GroupNormHandler(LayerHandler):
    def attributes(self, m, size):
        per_group = m.num_channels // m.num_groups
        channels = size("<channels>", 0, m.num_channels)
        return {"num_channels": channels, "num_groups": channels // per_group}


class FeatureNormHandler(LayerHandler):
    """LayerNorm / RMSNorm: the normalised shape follows the scale's shape.

    A norm over one feature axis with a scale (feature_norms.norm_kind) is traced whole: its
    features are channels like any others, because a masked norm normalises over the kept
    features only. Any other form is traced op by op (F.layer_norm then blocks its features)."""

    def traces_whole(self, module) -> bool:
        return norm_kind(module) is not None

    def trace(self, trace, module, name, args, kwargs, output):
        feature_norm(trace, module, name, norm_kind(module)[1], args, kwargs, output)

    def attributes(self, m, size):
        if not isinstance(getattr(m, "normalized_shape", None), tuple) or getattr(m, "weight", None) is None:
            return {}
        return {"normalized_shape": tuple(size("weight", d) for d in range(m.weight.dim()))}


class EmbeddingHandler(LayerHandler):
    def attributes(self, m, size):
        return {"embedding_dim": size("weight", 1)}


class PReLUHandler(LayerHandler):
    def attributes(self, m, size):
        return {"num_parameters": size("weight", 0)}


class MultiheadAttentionHandler(LayerHandler):
    def attributes(self, m, size):
        embed = size("in_proj_weight", 1, m.embed_dim)
        return {"embed_dim": embed, "kdim": embed, "vdim": embed, "num_heads": embed // m.head_dim}


class TransposedLinearHandler(LayerHandler):
    """GPT-2's Conv1D: y = x @ W + b, W of shape (in, out), the width in `nf` (traced whole:
    its forward writes `nf` into a view)."""

    def trace(self, trace, module, name, args, kwargs, output):
        transposed_linear(trace, module, name, args, kwargs, output)

    def attributes(self, m, size):
        return {"nf": size("weight", 1)}

    def macs(self, m, inputs, output):
        return _weighted_macs(m.weight, output.numel() // m.weight.shape[1])


class VisionTransformerHandler(LayerHandler):
    """torchvision's VisionTransformer writes its width into code — `x.reshape(n, self.hidden_dim,
    n_h * n_w)` — so `hidden_dim` is named as a count: the width then follows the channels (and
    the class token's), and compaction sets the new value."""

    counts = ("hidden_dim",)

    def attributes(self, m, size):
        return {"hidden_dim": size("class_token", 2)}


def is_torchvision_vit(module) -> bool:
    """A VisionTransformer with torchvision's layout: an int `hidden_dim` and a (1, 1, width) class
    token (decided without importing torchvision)."""
    if not any(k.__name__ == "VisionTransformer" for k in type(module).__mro__):
        return False
    width, token = getattr(module, "hidden_dim", None), getattr(module, "class_token", None)
    return isinstance(width, int) and isinstance(token, torch.Tensor) and tuple(token.shape) == (1, 1, width)


class TimmAttentionHandler(LayerHandler):
    """timm's ViT Attention writes its head count and inner width into reshapes —
    `reshape(B, N, 3, self.num_heads, self.head_dim)`, `reshape(B, N, self.attn_dim)` — so both are
    named as counts: whole heads (head_dim channels each) then prune, and compaction sets both."""

    counts = ("num_heads", "attn_dim")

    def attributes(self, m, size):
        heads = size("qkv.weight", 0) // (3 * m.head_dim)
        return {"num_heads": heads, "attn_dim": heads * m.head_dim}


def is_timm_attention(module) -> bool:
    """timm's (ViT-style) Attention: fused qkv Linear, int num_heads / head_dim / attn_dim."""
    cls = type(module)
    if cls.__name__ != "Attention" or cls.__module__.split(".")[0] != "timm":
        return False
    qkv = getattr(module, "qkv", None)
    counts = [getattr(module, a, None) for a in ("num_heads", "head_dim", "attn_dim")]
    return (isinstance(qkv, nn.Linear) and all(isinstance(c, int) for c in counts)
            and counts[0] * counts[1] == counts[2] and qkv.out_features == 3 * counts[2])


class GPT2AttentionHandler(LayerHandler):
    """HuggingFace GPT-2 attention cuts q, k, v with `split(self.split_size)`: named as a count, so
    equal parts stay equal and whole heads prune; compaction sets the sizes that follow the heads."""

    counts = ("split_size",)

    def attributes(self, m, size):
        width = size("c_attn.weight", 1) // 3  # Conv1D weights are (in, out)
        return {"split_size": width, "embed_dim": width, "num_heads": width // m.head_dim}


def is_gpt2_attention(module) -> bool:
    """transformers' GPT2Attention (or a subclass): int split_size / head_dim and a fused c_attn."""
    if not any(k.__name__ == "GPT2Attention" and k.__module__.split(".")[0] == "transformers"
               for k in type(module).__mro__):
        return False
    return (isinstance(getattr(module, "split_size", None), int) and isinstance(getattr(module, "head_dim", None), int)
            and is_transposed_linear(getattr(module, "c_attn", None)))


_FEATURE_NORM = FeatureNormHandler()
BUILTIN: dict[type, LayerHandler] = {
    nn.modules.conv._ConvNd: ConvHandler(),
    nn.Linear: LinearHandler(),
    nn.modules.batchnorm._BatchNorm: ChannelNormHandler(),
    nn.modules.instancenorm._InstanceNorm: ChannelNormHandler(),
    nn.GroupNorm: GroupNormHandler(),
    nn.LayerNorm: _FEATURE_NORM,
    nn.Embedding: EmbeddingHandler(),
    nn.PReLU: PReLUHandler(),
    nn.MultiheadAttention: MultiheadAttentionHandler(),
}
if hasattr(nn, "RMSNorm"):
    BUILTIN[nn.RMSNorm] = _FEATURE_NORM
_CONV1D = TransposedLinearHandler()
_VIT = VisionTransformerHandler()
_TIMM_ATTENTION = TimmAttentionHandler()
_GPT2_ATTENTION = GPT2AttentionHandler()


def builtin_handler(module) -> LayerHandler | None:
    if is_transposed_linear(module):
        return _CONV1D
    if is_torchvision_vit(module):
        return _VIT
    if is_timm_attention(module):
        return _TIMM_ATTENTION
    if is_gpt2_attention(module):
        return _GPT2_ATTENTION
    if not isinstance(module, nn.LayerNorm) and norm_kind(module) is not None:
        return _FEATURE_NORM  # an RMSNorm class of another library (transformers' LlamaRMSNorm …)
    for klass in type(module).__mro__:
        if klass in BUILTIN:
            return BUILTIN[klass]
    return None
