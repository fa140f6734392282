"""From scores to keep-masks: how many go, and which.

Scores are "higher = more important". Everything here is deterministic: ties are broken by
position (the earlier flat index, and the earlier tensor in a global ranking, is pruned
first), so the same scores always give the same masks.

An *amount* is either a fraction of the candidates (float in [0, 1]) or a count (int).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from .errors import AmountError


def resolve_amount(amount, total: int, what: str = "weights") -> int:
    """The number of units to prune: an int is a count, a float a fraction of `total`."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise AmountError(f"amount must be a float fraction in [0, 1] or an int count, not {amount!r}.")
    if isinstance(amount, int):
        if not 0 <= amount <= total:
            raise AmountError(f"Cannot prune {amount} {what}: there are only {total}. "
                              f"Use a count in [0, {total}] or a fraction in [0, 1].")
        return amount
    if not (math.isfinite(amount) and 0.0 <= amount <= 1.0):
        raise AmountError(f"Sparsity {amount} is outside [0, 1]; pass a fraction such as 0.9 (90 % pruned).")
    return int(round(amount * total))


def check_scores(scores: Mapping[str, torch.Tensor]) -> None:
    for name, s in scores.items():
        if torch.isnan(s).any():
            raise AmountError(f"Scores for '{name}' contain NaN; check the criterion's inputs "
                              "(calibration data, loss) before pruning.")


def prune_lowest(flat_scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask (bool, same shape) that prunes the k lowest scores; stable ties by position."""
    keep = torch.ones(flat_scores.numel(), dtype=torch.bool, device=flat_scores.device)
    if k > 0:
        order = torch.argsort(flat_scores.reshape(-1), stable=True)
        keep[order[:k]] = False
    return keep.reshape(flat_scores.shape)


def local_masks(scores: Mapping[str, torch.Tensor], amount) -> dict[str, torch.Tensor]:
    """The same amount pruned in every tensor independently (layer-wise / uniform)."""
    check_scores(scores)
    return {n: prune_lowest(s, resolve_amount(amount, s.numel(), f"entries of '{n}'")) for n, s in scores.items()}


def global_masks(scores: Mapping[str, torch.Tensor], amount) -> dict[str, torch.Tensor]:
    """One ranking across all tensors: exactly resolve_amount(amount, total) entries pruned."""
    check_scores(scores)
    names = list(scores)
    flat = torch.cat([scores[n].detach().reshape(-1).float().cpu() for n in names]) if names else torch.zeros(0)
    keep = prune_lowest(flat, resolve_amount(amount, flat.numel()))
    out, start = {}, 0
    for n in names:
        size = scores[n].numel()
        out[n] = keep[start:start + size].reshape(scores[n].shape).to(scores[n].device)
        start += size
    return out


def threshold_masks(scores: Mapping[str, torch.Tensor], threshold: float) -> dict[str, torch.Tensor]:
    """Prune every entry whose score is below `threshold` (|w| < τ for magnitude)."""
    if not math.isfinite(threshold):
        raise AmountError(f"threshold must be a finite number, not {threshold!r}.")
    check_scores(scores)
    return {n: s >= threshold for n, s in scores.items()}


def rank_existing_first(scores: Mapping[str, torch.Tensor], existing: Mapping[str, torch.Tensor]):
    """Scores with already-pruned entries set to −inf, so re-pruning never revives them.

    With this, pruning to a higher sparsity always yields a subset of the current mask.
    """
    out = {}
    for name, s in scores.items():
        s = s.detach().float().clone()
        if name in existing:
            s[~existing[name].to(s.device)] = -math.inf
        out[name] = s
    return out
