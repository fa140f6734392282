"""The criteria catalogue: one short file per family, one registry line each."""

from __future__ import annotations

from ..errors import PrunekitError, did_you_mean
from .base import Criterion
from .apoz import APoZ
from .bn_scale import BNScale
from .grasp import GraSP
from .head_ablation import HeadAblation
from .head_taylor import HeadTaylor
from .heads import HeadImportance
from .magnitude import Magnitude
from .obd import OBD
from .random_scores import Random
from .regression import Regression
from .snip import SNIP
from .taylor import Taylor

CRITERIA: dict[str, type[Criterion]] = {
    "magnitude": Magnitude,
    "random": Random,
    "snip": SNIP,
    "taylor": Taylor,
    "grasp": GraSP,
    "obd": OBD,
    "bn_scale": BNScale,
    "apoz": APoZ,
    "regression": Regression,
    "heads": HeadImportance,
    "head_taylor": HeadTaylor,
    "head_ablation": HeadAblation,
}


def get_criterion(spec, **options) -> Criterion:
    """A Criterion from a name in CRITERIA (with constructor options) or an instance."""
    if isinstance(spec, Criterion):
        return spec
    if spec not in CRITERIA:
        raise PrunekitError(f"Unknown criterion '{spec}'.{did_you_mean(spec, CRITERIA)} "
                            f"Known: {', '.join(sorted(CRITERIA))}.")
    return CRITERIA[spec](**options)


__all__ = ["CRITERIA", "Criterion", "get_criterion", "Magnitude", "Random", "SNIP", "Taylor", "GraSP", "OBD",
           "BNScale", "APoZ", "Regression", "HeadImportance",
           "HeadTaylor", "HeadAblation"]
