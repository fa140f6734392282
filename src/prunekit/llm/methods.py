"""The one-shot layer methods by name: one registry line each."""

from __future__ import annotations

from ..errors import PrunekitError, did_you_mean
from .base import LayerMethod
from .magnitude import Magnitude
from .sparsegpt import SparseGPT
from .wanda import Wanda

METHODS: dict[str, type[LayerMethod]] = {
    "magnitude": Magnitude,
    "wanda": Wanda,
    "sparsegpt": SparseGPT,
}


def get_method(spec, **options) -> LayerMethod:
    """A LayerMethod from a name in METHODS (with constructor options) or an instance."""
    if isinstance(spec, LayerMethod):
        return spec
    if spec not in METHODS:
        raise PrunekitError(f"Unknown method '{spec}'.{did_you_mean(spec, METHODS)} Known: {', '.join(METHODS)}.")
    return METHODS[spec](**options)
