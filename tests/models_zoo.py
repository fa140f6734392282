"""Small hand-written architectures that exercise every coupling the graph must find.

Each builder returns (model, example_input). Sizes are tiny so tests stay fast on 2 cores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


# ------------------------------------------------------------------ ResNet with bottlenecks
class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, width, stride=1):
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class BottleneckResNet(nn.Module):
    def __init__(self, num_classes=10, widths=(8, 16), blocks=(2, 2)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        layers, cin = [], 16
        for i, (w, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                layers.append(Bottleneck(cin, w, stride=2 if (i > 0 and j == 0) else 1))
                cin = w * Bottleneck.expansion
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet_bottleneck():
    return BottleneckResNet(), torch.randn(2, 3, 16, 16)


# ------------------------------------------------------------------ DenseNet-style concat
class DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.bn, self.conv = nn.BatchNorm2d(cin), nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, features):
        return self.conv(F.relu(self.bn(torch.cat(features, 1))))


class TinyDenseNet(nn.Module):
    def __init__(self, num_classes=10, growth=6, layers=3):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.ModuleList(DenseLayer(8 + i * growth, growth) for i in range(layers))
        cout = 8 + layers * growth
        self.transition = nn.Sequential(nn.BatchNorm2d(cout), nn.ReLU(), nn.Conv2d(cout, 12, 1), nn.AvgPool2d(2))
        self.head = nn.Linear(12 * 4 * 4, num_classes)

    def forward(self, x):
        features = [self.stem(x)]
        for layer in self.block:
            features.append(layer(features))
        x = self.transition(torch.cat(features, 1))
        return self.head(x.flatten(1))


def densenet():
    return TinyDenseNet(), torch.randn(2, 3, 8, 8)


# ------------------------------------------------------------------ MobileNetV2 with SE
class SqueezeExcite(nn.Module):
    def __init__(self, channels, reduced):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(channels, reduced, 1), nn.Conv2d(reduced, channels, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            SqueezeExcite(hidden, max(2, hidden // 4)),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return x + self.block(x) if self.use_residual else self.block(x)


class TinyMobileNetV2(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(inplace=True))
        self.blocks = nn.Sequential(InvertedResidual(8, 8, 1, 3), InvertedResidual(8, 12, 2, 4),
                                    InvertedResidual(12, 12, 1, 4))
        self.head = nn.Sequential(nn.Conv2d(12, 32, 1), nn.BatchNorm2d(32), nn.Hardswish())
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, num_classes))

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(x.mean((2, 3)))


def mobilenet_v2():
    return TinyMobileNetV2(), torch.randn(2, 3, 16, 16)


# ------------------------------------------------------------------ transformer encoder
class SelfAttention(nn.Module):
    """Hand-written multi-head attention: the head count follows the weights' shapes."""

    def __init__(self, dim, heads, eager=False):
        super().__init__()
        self.head_dim, self.eager = dim // heads, eager
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        def split(t):  # (B, T, H·d) → (B, H, T, d); H is inferred
            return t.unflatten(-1, (-1, self.head_dim)).transpose(1, 2)
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        if self.eager == "einsum":
            scores = torch.einsum("bhid,bhjd->bhij", q, k) * self.head_dim ** -0.5
            y = torch.einsum("bhij,bhjd->bhid", scores.softmax(-1), v)
        elif self.eager:  # the same attention written out with matmul
            y = torch.softmax(q @ k.transpose(-2, -1) * self.head_dim ** -0.5, dim=-1) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).flatten(2))


class EncoderBlock(nn.Module):
    def __init__(self, dim, heads, hidden, eager=False):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), SelfAttention(dim, heads, eager)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyTransformer(nn.Module):
    def __init__(self, vocab=50, dim=16, heads=4, hidden=32, depth=2, length=6, num_classes=5, eager=False):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, length, dim) * 0.02)
        self.blocks = nn.ModuleList(EncoderBlock(dim, heads, hidden, eager) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens):
        x = self.embed(tokens) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(1))


def transformer():
    return TinyTransformer(), torch.randint(0, 50, (2, 6))


def transformer_eager():
    return TinyTransformer(eager=True), torch.randint(0, 50, (2, 6))


def transformer_einsum():
    return TinyTransformer(eager="einsum"), torch.randint(0, 50, (2, 6))


class FusedQKV(nn.Module):
    """One Linear makes q, k and v; heads inferred: (B, T, 3·H·d) → (3, B, H, T, d)."""

    def __init__(self, dim=16, heads=4, num_classes=3):
        super().__init__()
        self.head_dim = dim // heads
        self.proj, self.qkv, self.out = nn.Linear(8, dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        h = self.proj(x)
        qkv = self.qkv(h).unflatten(-1, (3, -1, self.head_dim)).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return self.head((h + self.out(y)).mean(1))


def fused_qkv():
    return FusedQKV(), torch.randn(2, 5, 8)


class MHAModel(nn.Module):
    """nn.MultiheadAttention fed by a projection (no norm), so its heads can go."""

    def __init__(self, dim=16, heads=4, num_classes=3):
        super().__init__()
        self.proj = nn.Linear(8, dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        h = self.proj(x)
        a, _ = self.attn(h, h, h)
        return self.head((h + a).mean(1))


def mha_model():
    return MHAModel(), torch.randn(2, 5, 8)


def torch_encoder():
    model = nn.Sequential(nn.Linear(8, 16), nn.TransformerEncoder(
        nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True), 2, enable_nested_tensor=False))
    return model, torch.randn(2, 5, 8)


# ------------------------------------------------------------------ assorted couplings
class Assorted(nn.Module):
    """Grouped conv, GroupNorm, chunk, channel-multiplier depthwise, layer scale, transposed conv."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.gn = nn.GroupNorm(8, 16)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=2)
        self.dw = nn.Conv2d(8, 16, 3, padding=1, groups=8)      # multiplier 2
        self.scale = nn.Parameter(torch.rand(16, 1, 1) + 0.5)
        self.up = nn.ConvTranspose2d(16, 6, 2, stride=2)
        self.prelu = nn.PReLU(6)
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        x = F.silu(self.gn(self.conv1(x)))
        x = self.grouped(x)
        a, b = x.chunk(2, dim=1)
        x = self.dw(a * torch.sigmoid(b)) * self.scale
        x = self.prelu(self.up(F.max_pool2d(x, 2)))
        return self.head(x.mean((2, 3)))


def assorted():
    return Assorted(), torch.randn(2, 3, 8, 8)


class Untraceable(nn.Module):
    """Mixes its channels with an FFT along the channel axis, which prunekit does not model."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = torch.fft.rfft(self.conv1(x), dim=1).abs()[:, :8]
        x = F.pad(x, (0, 0, 0, 0, 0, 8 - x.shape[1]))
        return self.fc(self.conv2(x).mean((2, 3)))


def untraceable():
    return Untraceable(), torch.randn(2, 3, 8, 8)


# ------------------------------------------------------------------ computed weights
class StdConv2d(nn.Conv2d):
    """Weight standardisation written in the forward: each filter normalised over its inputs."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ScaledStdConv2d(nn.Conv2d):
    """NF-Net's scaled weight standardisation through F.batch_norm on the reshaped weight."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.rand(self.out_channels, 1, 1, 1) + 0.5)

    def forward(self, x):
        fan_in = self.weight[0].numel()
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                         weight=(self.gain * fan_in ** -0.5).reshape(-1), training=True, momentum=0.0,
                         eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class NormalisedConv2d(nn.Conv2d):
    """Each filter divided by its norm: zeros (removed inputs) do not change a norm, so the input
    channels stay prunable, unlike standardisation."""

    def forward(self, x):
        w = self.weight / self.weight.pow(2).sum((1, 2, 3), keepdim=True).sqrt().clamp_min(1e-6)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class StandardisedNet(nn.Module):
    """Standardised convs (one depthwise) and a plain conv before the head."""

    def __init__(self, conv=StdConv2d):
        super().__init__()
        self.stem, self.dw = conv(3, 8, 3, padding=1), conv(8, 8, 3, padding=1, groups=8)
        self.expand, self.head = nn.Conv2d(8, 12, 1), nn.Linear(12, 3)

    def forward(self, x):
        x = F.relu(self.dw(F.relu(self.stem(x))))
        return self.head(F.relu(self.expand(x)).mean((2, 3)))


def standardised():
    return StandardisedNet(), torch.randn(2, 3, 8, 8)


def scaled_standardised():
    return StandardisedNet(ScaledStdConv2d), torch.randn(2, 3, 8, 8)


def normalised():
    return StandardisedNet(NormalisedConv2d), torch.randn(2, 3, 8, 8)


class StackedBranches(nn.Module):
    """Two branches joined on a new axis (stack, or unsqueeze + cat), then flattened."""

    def __init__(self, how="stack"):
        super().__init__()
        self.how = how
        self.a, self.b, self.fc = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(12, 2)

    def forward(self, x):
        a, b = F.relu(self.a(x)), F.relu(self.b(x))
        y = torch.stack([a, b], 1) if self.how == "stack" else torch.cat([a.unsqueeze(1), b.unsqueeze(1)], 1)
        return self.fc(y.flatten(1))


def stacked():
    return StackedBranches("stack"), torch.randn(3, 4)


def unsqueeze_cat():
    return StackedBranches("cat"), torch.randn(3, 4)


ZOO = {"resnet_bottleneck": resnet_bottleneck, "densenet": densenet, "mobilenet_v2": mobilenet_v2,
       "transformer": transformer, "transformer_eager": transformer_eager,
       "transformer_einsum": transformer_einsum, "mha_model": mha_model,
       "fused_qkv": fused_qkv, "torch_encoder": torch_encoder, "assorted": assorted,
       "standardised": standardised, "scaled_standardised": scaled_standardised, "normalised": normalised,
       "stacked": stacked,
       "unsqueeze_cat": unsqueeze_cat}
