"""A map from live tensors to what the trace knows about them, that keeps no tensor alive.

The trace keys its bookkeeping by tensor identity. Holding the tensors themselves (so that a
freed tensor's id cannot be reused by a new one) kept every activation of the forward pass
alive until the pass ended: for a CNN at 224 px about the model's size again in memory. Weak
references give the same safety — a dead tensor's entry is dropped when it is freed, and an id
reused later finds nothing — while activations are freed as the model's forward drops them.
"""

from __future__ import annotations

import weakref
from typing import Generic, TypeVar

import torch

Value = TypeVar("Value")


class LiveTensorMap(Generic[Value]):
    """tensor → value for tensors that are still alive, by identity (not by equality)."""

    def __init__(self):
        self._entries: dict[int, tuple[weakref.ref, Value]] = {}

    def __setitem__(self, tensor: torch.Tensor, value: Value) -> None:
        key = id(tensor)

        def forget(ref, key=key, entries=self._entries):
            entry = entries.get(key)
            if entry is not None and entry[0] is ref:
                del entries[key]

        self._entries[key] = (weakref.ref(tensor, forget), value)

    def get(self, tensor, default: Value | None = None) -> Value | None:
        entry = self._entries.get(id(tensor))
        return entry[1] if entry is not None and entry[0]() is tensor else default

    def __contains__(self, tensor) -> bool:
        entry = self._entries.get(id(tensor))
        return entry is not None and entry[0]() is tensor

    def pop(self, tensor) -> None:
        if tensor in self:
            del self._entries[id(tensor)]

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


__all__ = ["LiveTensorMap"]
