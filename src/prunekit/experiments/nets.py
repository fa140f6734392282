"""Small networks the experiments j–l compare, written from standard layers so the dependency
graph, block finder and compaction see them without special cases.

    SmallCNN(widths=(16, 32, 64))    conv-BN-ReLU ×3 (pool after the first two), global pool, linear
    TinyViT(dim=64, heads=8)         7×7 patches → tokens, pre-norm encoder blocks, mean-pooled head
    StackNet(blocks, residual=True)  a CIFAR-style ResNet (3 stages) or, with residual=False, the same
                                     layers without shortcuts: the plain network of the same depth
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn(c_in: int, c_out: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, widths=(16, 32, 64)):
        super().__init__()
        a, b, c = widths
        self.features = nn.Sequential(_conv_bn(in_channels, a), nn.MaxPool2d(2), _conv_bn(a, b), nn.MaxPool2d(2),
                                      _conv_bn(b, c))
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


class Attention(nn.Module):
    """Multi-head self-attention with separate q, k, v projections; the head count follows the
    weights' shapes, so removing heads (rows of q, k, v; columns of out) needs no attribute."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.head_dim = dim // heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        def split(t):  # (B, T, H·d) → (B, H, T, d)
            return t.unflatten(-1, (-1, self.head_dim)).transpose(1, 2)
        y = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)))
        return self.out(y.transpose(1, 2).flatten(2))


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """A vision transformer for 28×28 images: non-overlapping patches (a strided conv), a
    learned position table, `depth` pre-norm encoder blocks, mean pooling, a linear head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image: int = 28, patch: int = 7, dim: int = 64,
                 heads: int = 8, hidden: int = 64, depth: int = 2):
        super().__init__()
        self.embed = nn.Conv2d(in_channels, dim, patch, patch)
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2, dim) * 0.02)
        self.blocks = nn.Sequential(*(EncoderBlock(dim, heads, hidden) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.blocks(tokens)).mean(1))


class StackBlock(nn.Module):
    """conv-BN-ReLU-conv-BN (`body`), plus the input (identity, or a 1×1 projection when the
    shape changes) when residual, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int, residual: bool):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(c_in, c_out, stride), _conv_bn(c_out, c_out, relu=False))
        self.residual = residual
        if residual and (stride != 1 or c_in != c_out):
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        else:
            self.shortcut = nn.Identity()
        self.relu = nn.ReLU()

    @property
    def keeps_shape(self) -> bool:
        """Input and output have the same shape: the block can be replaced by the identity."""
        conv = self.body[0][0]
        return conv.stride == (1, 1) and conv.in_channels == conv.out_channels

    def forward(self, x):
        y = self.body(x)
        return self.relu(y + self.shortcut(x) if self.residual else y)


class StackNet(nn.Module):
    """3×3 stem (stride `stem_stride`), three stages of `blocks_per_stage` StackBlocks (the first of stages 2 and 3
    halves the resolution and doubles the width), global pool, linear."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, widths=(8, 16, 32), blocks_per_stage: int = 3,
                 residual: bool = True, stem_stride: int = 1):
        super().__init__()
        self.stem = _conv_bn(in_channels, widths[0], stem_stride)
        blocks, c_in = [], widths[0]
        for stage, width in enumerate(widths):
            for b in range(blocks_per_stage):
                blocks.append(StackBlock(c_in, width, 2 if (b == 0 and stage > 0) else 1, residual))
                c_in = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))
