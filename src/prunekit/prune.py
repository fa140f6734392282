"""Unstructured pruning of any nn.Module: score elements, choose the lowest, install masks.

    prune(model, 0.9)                              # global magnitude, 90 % of weights
    prune(model, 0.5, scope="local")               # 50 % of every tensor
    prune(model, 1000, params=["fc1.weight"])      # an int is a count
    prune_threshold(model, 1e-2)                   # |w| < τ

Weights that are already pruned rank below every live weight, so pruning again to a higher
sparsity only removes more: masks never grow back.
"""

from __future__ import annotations

from torch import nn

from . import selection
from .criteria import get_criterion
from .errors import PrunekitError
from .masks import MaskSet, apply_masks, get_masks, resolve_parameters

SCOPES = ("global", "local")


def score(model: nn.Module, criterion="magnitude", params=None, *, batches=None, loss_fn=None):
    """Element-wise scores for the selected parameters, with pruned entries ranked lowest."""
    chosen = resolve_parameters(model, params)
    crit = get_criterion(criterion)
    raw = crit.scores(model, chosen, batches=batches, loss_fn=loss_fn)
    return selection.rank_existing_first(raw, get_masks(model))


def prune(model: nn.Module, amount, *, scope: str = "global", criterion="magnitude", params=None,
          batches=None, loss_fn=None) -> MaskSet:
    """Prune `amount` of the selected weights (fraction or count) and install the masks.

    scope="global" ranks all selected weights together and removes exactly the requested
    number; scope="local" removes that fraction (or count) from every tensor.
    Returns the MaskSet now on the model. On any error the model is left unchanged.
    """
    if scope not in SCOPES:
        raise PrunekitError(f"scope must be one of {SCOPES}, not {scope!r}.")
    scores = score(model, criterion, params, batches=batches, loss_fn=loss_fn)
    chooser = selection.global_masks if scope == "global" else selection.local_masks
    return apply_masks(model, chooser(scores, amount))


def prune_threshold(model: nn.Module, threshold: float, *, criterion="magnitude", params=None,
                    batches=None, loss_fn=None) -> MaskSet:
    """Prune every selected weight whose score is below `threshold` (|w| < τ by default)."""
    scores = score(model, criterion, params, batches=batches, loss_fn=loss_fn)
    return apply_masks(model, selection.threshold_masks(scores, threshold))
