"""Tensors inside nested model inputs and outputs (tuples, lists, dicts, HF ModelOutputs)."""

from __future__ import annotations

import torch


def tensors_in(obj):
    """Every tensor inside nested tuples / lists / dicts, depth first, in order."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from tensors_in(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from tensors_in(item)
