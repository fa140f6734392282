"""What a layer is pruned to: a fraction of its weights, or an N:M pattern.

A target is a float sparsity s ∈ [0, 1) (the fraction of weights set to zero) or `NM(n, m)`:
in every group of m consecutive weights along an input row, n are kept and m − n pruned
(2:4 is the pattern sparse tensor cores accelerate). The mask helpers below turn a score
matrix (rows = output features, columns = input features; higher = more important) into a
bool mask (True keeps) under either kind of target, comparing scores within each output row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import AmountError, PrunekitError


@dataclass(frozen=True)
class NM:
    """Keep n of every m consecutive weights along each row (n < m)."""

    n: int
    m: int

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m



def parse_nm(text) -> NM:
    """'2:4' → NM(2, 4); an NM passes through. Raises a PrunekitError for anything else."""
    if isinstance(text, NM):
        pattern = text
    else:
        n, sep, m = str(text).partition(":")
        try:
            pattern = NM(int(n), int(m))
        except ValueError:
            raise PrunekitError(f"N:M pattern {text!r} must read like '2:4' (keep 2 of every 4 weights).") from None
        if not sep:
            raise PrunekitError(f"N:M pattern {text!r} must read like '2:4' (keep 2 of every 4 weights).")
    if not 0 < pattern.n < pattern.m:
        raise PrunekitError(f"N:M pattern {pattern} must keep 0 < n < m weights per group, e.g. 2:4 or 4:8.")
    return pattern


def check_sparsity(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AmountError(f"Sparsity must be a number in [0, 1), got {value!r}.")
    if not 0.0 <= float(value) < 1.0:
        raise AmountError(f"Sparsity {value} is outside [0, 1): it is the fraction of weights set to zero, "
                          "e.g. 0.5 for half of them.")
    return float(value)


def parse_target(sparsity=None, nm=None):
    """Exactly one of `sparsity` (a float) or `nm` ('2:4' or NM) → the validated target."""
    if (sparsity is None) == (nm is None):
        raise PrunekitError("Give exactly one of sparsity= (e.g. 0.5) or nm= (e.g. '2:4').")
    return parse_nm(nm) if nm is not None else check_sparsity(sparsity)


def check_fits(target, shape: tuple[int, ...], name: str) -> None:
    """An N:M target needs the input dimension to be a multiple of m."""
    if isinstance(target, NM) and shape[-1] % target.m:
        raise PrunekitError(f"{name} has {shape[-1]} input features, not a multiple of m={target.m}; "
                            f"choose an N:M pattern whose m divides it, or an unstructured sparsity.")


def pruned_per_row(sparsity: float, columns: int) -> int:
    return int(round(sparsity * columns))


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the round(s · columns) lowest-scoring weights of every row (same count per row)."""
    k = pruned_per_row(sparsity, scores.shape[1])
    mask = torch.ones_like(scores, dtype=torch.bool)
    if k:
        mask.scatter_(1, torch.topk(scores, k, dim=1, largest=False).indices, False)
    return mask


def nm_mask(scores: torch.Tensor, pattern: NM) -> torch.Tensor:
    """Prune the m − n lowest-scoring weights of every group of m consecutive columns."""
    rows, columns = scores.shape
    groups = scores.reshape(rows, columns // pattern.m, pattern.m)
    mask = torch.ones_like(groups, dtype=torch.bool)
    mask.scatter_(2, torch.topk(groups, pattern.m - pattern.n, dim=2, largest=False).indices, False)
    return mask.reshape(rows, columns)


def mask_from_scores(scores: torch.Tensor, target) -> torch.Tensor:
    return nm_mask(scores, target) if isinstance(target, NM) else row_mask(scores, target)
