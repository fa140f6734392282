"""Image CNNs for structured-pruning and latency work, written in plain torch (no torchvision).

    resnet18(num_classes=1000)          11,689,512 parameters (the ImageNet ResNet-18 layout)
    resnet18(stem="cifar", num_classes=10)   3×3 stem, no max-pool: for 32×32 inputs
    resnet8()                           a small CIFAR ResNet (16-32-64 channels, one block per stage)
    mobilenetv2(num_classes=1000)       3,504,872 parameters (the ImageNet MobileNetV2 layout)
    vgg_small()                         conv 32-32-pool-64-64-pool, fc 128: for 28×28 MNIST

Every model is a chain of standard layers (Conv/BN/ReLU/Linear, residual adds, depthwise
convolutions) so the dependency graph and compaction work on it without special cases.
"""

from __future__ import annotations

from torch import nn


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act: type | None = nn.ReLU):
    layers = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    if act is not None:
        layers.append(act(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN pairs plus a shortcut (identity, or 1×1 conv-BN when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(c_in, c_out, 3, stride), _conv_bn(c_out, c_out, 3, act=None))
        self.shortcut = (nn.Identity() if stride == 1 and c_in == c_out
                         else _conv_bn(c_in, c_out, 1, stride, act=None))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, blocks_per_stage, widths, num_classes: int, in_channels: int = 3, stem: str = "imagenet"):
        super().__init__()
        if stem == "imagenet":
            self.stem = nn.Sequential(_conv_bn(in_channels, widths[0], 7, 2), nn.MaxPool2d(3, 2, 1))
        elif stem == "cifar":
            self.stem = _conv_bn(in_channels, widths[0], 3)
        else:
            raise ValueError(f"stem must be 'imagenet' or 'cifar', not {stem!r}")
        stages, c_in = [], widths[0]
        for i, (n_blocks, width) in enumerate(zip(blocks_per_stage, widths)):
            for b in range(n_blocks):
                stages.append(BasicBlock(c_in, width, 2 if (b == 0 and i > 0) else 1))
                c_in = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.stages(self.stem(x))).flatten(1))


def resnet18(num_classes: int = 1000, in_channels: int = 3, stem: str = "imagenet") -> nn.Module:
    return ResNet((2, 2, 2, 2), (64, 128, 256, 512), num_classes, in_channels, stem)


def resnet8(num_classes: int = 10, in_channels: int = 3, width: int = 16) -> nn.Module:
    return ResNet((1, 1, 1), (width, 2 * width, 4 * width), num_classes, in_channels, stem="cifar")


class InvertedResidual(nn.Module):
    """1×1 expand → 3×3 depthwise → 1×1 linear projection; identity shortcut when shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        layers = [] if expand == 1 else [_conv_bn(c_in, hidden, 1, act=nn.ReLU6)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                   _conv_bn(hidden, c_out, 1, act=None)]
        self.body = nn.Sequential(*layers)
        self.use_shortcut = stride == 1 and c_in == c_out

    def forward(self, x):
        return x + self.body(x) if self.use_shortcut else self.body(x)


# (expansion, output channels, repeats, first stride) of MobileNetV2.
_MOBILENETV2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1))


def _scaled(channels: int, width: float) -> int:
    """Channels × width, rounded to a multiple of 8 (never down by more than 10 %)."""
    c = max(8, int(channels * width + 4) // 8 * 8)
    return c + 8 if c < 0.9 * channels * width else c


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, width: float = 1.0, in_channels: int = 3, stem_stride: int = 2):
        super().__init__()
        c_in = _scaled(32, width)
        layers = [_conv_bn(in_channels, c_in, 3, stem_stride, act=nn.ReLU6)]
        for expand, c, repeats, stride in _MOBILENETV2_STAGES:
            c_out = _scaled(c, width)
            for r in range(repeats):
                layers.append(InvertedResidual(c_in, c_out, stride if r == 0 else 1, expand))
                c_in = c_out
        last = _scaled(1280, max(1.0, width))
        layers.append(_conv_bn(c_in, last, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def mobilenetv2(num_classes: int = 1000, width: float = 1.0, in_channels: int = 3, stem_stride: int = 2) -> nn.Module:
    return MobileNetV2(num_classes, width, in_channels, stem_stride)


def vgg_small(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return nn.Sequential(
        _conv_bn(in_channels, 32, 3), _conv_bn(32, 32, 3), nn.MaxPool2d(2),
        _conv_bn(32, 64, 3), _conv_bn(64, 64, 3), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(inplace=True), nn.Linear(128, num_classes))
