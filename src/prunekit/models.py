"""Reference models of the pruning literature, with their parameter counts.

| name         | architecture                                              | input      | parameters |
|--------------|-----------------------------------------------------------|------------|------------|
| lenet300100  | 784-300-100-10 MLP, ReLU (LeCun et al. 1998; the lottery  | (1,28,28)  | 266,610    |
|              | ticket paper's MNIST network)                             |            |            |
| lenet5       | conv5×5(6, pad 2)-pool-conv5×5(16)-pool-120-84-10, ReLU   | (1,28,28)  | 61,706     |
| mnist1d_mlp  | 40-100-100-10 MLP, ReLU (MNIST-1D baseline)               | (40,)      | 15,210     |
| mnist1d_cnn  | three Conv1d(25 ch, k5/k3/k3, stride 2) + Linear(125, 10) | (40,)      | 5,210      |
|              | (MNIST-1D's ConvBase)                                     |            |            |
| vgg_small    | conv3×3 32-32-pool-64-64-pool (BN, ReLU), fc 128-10       | (1,28,28)  | 468,010    |

Larger image CNNs (ResNet-8/18, MobileNetV2) are in prunekit.cnn_models.

The counts are asserted in the tests. Every model takes `num_classes`; the two MLPs also take
`dropout` (probability after each hidden ReLU, default 0: no Dropout layers at all).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

from torch import nn

from .cnn_models import vgg_small
from .errors import PrunekitError, did_you_mean


def _dropout(p: float) -> list[nn.Module]:
    """[Dropout(p)] after a hidden layer when p > 0; nothing otherwise, so that models built
    without the option keep their layer indices (and checkpoint keys)."""
    if not 0.0 <= p < 1.0:
        raise PrunekitError(f"dropout must be a probability in [0, 1), not {p!r}.")
    return [nn.Dropout(p)] if p > 0 else []


def lenet300100(num_classes: int = 10, in_features: int = 784, dropout: float = 0.0) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, 300), nn.ReLU(), *_dropout(dropout),
        nn.Linear(300, 100), nn.ReLU(), *_dropout(dropout),
        nn.Linear(100, num_classes),
    )


def lenet5(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, num_classes),
    )


def mnist1d_mlp(num_classes: int = 10, in_features: int = 40, hidden: int = 100, dropout: float = 0.0) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, hidden), nn.ReLU(), *_dropout(dropout),
        nn.Linear(hidden, hidden), nn.ReLU(), *_dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


class MNIST1DCNN(nn.Module):
    """MNIST-1D's convolutional baseline: 40 samples → 19 → 10 → 5 positions × 25 channels."""

    def __init__(self, num_classes: int = 10, channels: int = 25, length: int = 40):
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        for conv in (self.conv1, self.conv2, self.conv3):
            length = (length + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
        self.linear = nn.Linear(channels * length, num_classes)

    def forward(self, x):
        x = x.unsqueeze(1)  # (batch, 40) → (batch, 1, 40)
        x = self.conv1(x).relu()
        x = self.conv2(x).relu()
        x = self.conv3(x).relu()
        return self.linear(x.flatten(1))


def mnist1d_cnn(num_classes: int = 10, channels: int = 25) -> nn.Module:
    return MNIST1DCNN(num_classes, channels)


def glorot_normal_init(model: nn.Module) -> nn.Module:
    """Gaussian Glorot weights, w ~ N(0, 2 / (fan_in + fan_out)), for every Linear and Conv, and
    zero biases: the initialisation of Frankle & Carbin's MNIST networks (their Figure 2).
    In place, from the global RNG; returns the model."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            nn.init.xavier_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


# name → initialiser applied after construction; "default" keeps torch's own per-layer defaults
INITS: dict[str, Callable[[nn.Module], nn.Module] | None] = {"default": None, "glorot_normal": glorot_normal_init}


def check_init(scheme: str) -> None:
    if scheme not in INITS:
        raise PrunekitError(f"Unknown initialisation '{scheme}'.{did_you_mean(scheme, INITS)} "
                            f"Known: {', '.join(INITS)}.")


def initialise(model: nn.Module, scheme: str) -> nn.Module:
    check_init(scheme)
    return INITS[scheme](model) if INITS[scheme] is not None else model


MODELS = {"lenet300100": lenet300100, "lenet5": lenet5, "mnist1d_mlp": mnist1d_mlp, "mnist1d_cnn": mnist1d_cnn,
          "vgg_small": vgg_small}


def resolve_factory(spec) -> Callable[..., nn.Module]:
    """A model factory: a callable, a name in MODELS, or your own 'package.module:function' (imported)."""
    if callable(spec):
        return spec
    if isinstance(spec, str) and spec in MODELS:
        return MODELS[spec]
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise PrunekitError(f"Unknown model {spec!r}.{did_you_mean(str(spec), MODELS)} Use a built-in name "
                            f"({', '.join(MODELS)}) or your own factory as 'package.module:function'.")
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise PrunekitError(f"Cannot import '{module_name}' for model '{spec}' ({e}); is it on PYTHONPATH "
                            "(run from its folder, or pip install it)?") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise PrunekitError(f"'{module_name}' has no callable '{attr}' (model '{spec}').")
    return factory


def build_model(name, *, num_classes: int | None = None, **options) -> nn.Module:
    """The model `name` (see resolve_factory) built with `options`; `num_classes` is passed only to
    factories that take it. A misspelt option is refused with the options the factory takes."""
    factory = resolve_factory(name)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    if num_classes is not None and signature is not None and "num_classes" in signature.parameters:
        options = {"num_classes": num_classes, **options}
    if signature is not None:
        try:
            signature.bind(**options)
        except TypeError as e:
            takes = ", ".join(p for p in signature.parameters) or "no options"
            raise PrunekitError(f"Model '{name}' does not accept these options ({e}); it takes: {takes}.") from None
    model = factory(**options)
    if not isinstance(model, nn.Module):
        raise PrunekitError(f"Model factory '{name}' returned a {type(model).__name__}, not a torch.nn.Module.")
    return model
