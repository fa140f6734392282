"""What a structured pruning step of a language model did, and the arithmetic it shares."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..errors import PrunekitError


@dataclass
class StructuredResult:
    structure: str
    criterion: str
    removed_per_block: int           # units removed from every block (layers: blocks removed)
    units_per_block: int             # units each block had (layers: blocks the model had)
    params_before: int
    params_after: int
    config_changes: dict = field(default_factory=dict)
    removed: list = field(default_factory=list)  # per block, the indices removed (layers: the block indices)
    seconds: float = 0.0

    @property
    def params_removed(self) -> float:
        """Fraction of all the model's parameters (embeddings included) removed."""
        return 1.0 - self.params_after / self.params_before


def parameter_count(model: nn.Module) -> int:
    """Every parameter once (tied embeddings count once)."""
    return sum(p.numel() for p in model.parameters())


def units_to_remove(remove: float, units: int, what: str, multiple: int = 1) -> int:
    """round(remove · units), rounded so that the units kept are a multiple of `multiple`;
    refused when it is 0 or all of them."""
    if isinstance(remove, bool) or not isinstance(remove, (int, float)) or not 0 < remove < 1:
        raise PrunekitError(f"remove must be a fraction in (0, 1) of the {what}, got {remove!r}.")
    count = units - round((units - round(remove * units)) / multiple) * multiple
    if count == 0:
        step = f"{multiple} of {units}: the kept number must be a multiple of {multiple}" if multiple > 1 \
            else f"one of {units}"
        raise PrunekitError(f"remove={remove:g} of {units} {what} rounds to none; ask for at least "
                            f"{0.5 * multiple / units:.3g} ({step}).")
    if count >= units:
        raise PrunekitError(f"remove={remove:g} of {units} {what} would remove all of them; keep at least one "
                            f"(remove ≤ {(units - 1) / units:.3g}).")
    return count


__all__ = ["StructuredResult", "parameter_count", "units_to_remove"]
