"""Context managers that change a model's state for a while and always restore it."""

from __future__ import annotations

from contextlib import contextmanager

from torch import nn


@contextmanager
def evaluation_mode(model: nn.Module):
    """eval() for the duration, then every submodule's own train/eval flag restored exactly."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags.items():
            module.training = training


@contextmanager
def training_mode(model: nn.Module):
    """train() for the duration, then every submodule's own flag restored exactly."""
    flags = {m: m.training for m in model.modules()}
    model.train()
    try:
        yield model
    finally:
        for module, training in flags.items():
            module.training = training
