"""The criteria catalogue: one short file per family, one registry line each."""

from __future__ import annotations

from ..errors import PrunekitError, did_you_mean
from .base import Criterion
from .magnitude import Magnitude

CRITERIA: dict[str, type[Criterion]] = {
    "magnitude": Magnitude,
}


def get_criterion(spec, **options) -> Criterion:
    """A Criterion from a name in CRITERIA (with constructor options) or an instance."""
    if isinstance(spec, Criterion):
        return spec
    if spec not in CRITERIA:
        raise PrunekitError(f"Unknown criterion '{spec}'.{did_you_mean(spec, CRITERIA)} "
                            f"Known: {', '.join(sorted(CRITERIA))}.")
    return CRITERIA[spec](**options)


__all__ = ["CRITERIA", "Criterion", "get_criterion", "Magnitude"]
