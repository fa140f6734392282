"""One-call pruning: thin wrappers over prunekit.Pruner for the common cases.

    prune(model, 0.9)                              # global magnitude, 90 % of the weights
    prune(model, 0.5, scope="local")               # 50 % of every tensor (masks only shrink)
    prune(model, 1000, params=["fc1.weight"])      # an int is a count
    prune_threshold(model, 1e-2)                   # |w| < τ
    prune_granular(model, 0.3, "kernel")           # whole kernels, 30 % of every conv weight
    prune_nm(model, 2, 4)                          # 2:4
    prune_structured(model, 0.5, x)                # half the channels / heads of every graph group
    prune_blocks(model, 0.5, x)                    # half the residual branches

Each is `Pruner(model, ..., allocation="global" | "uniform", sparsity=amount).step()` and
returns the masks now on the model (prune_blocks: the names of the removed branches). Anything
these do not cover — FLOPs or latency budgets, search allocators, a plan to inspect first —
is a Pruner argument.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from .blocks import find_residual_blocks, is_removed
from .errors import PrunekitError
from .masks import MaskSet, get_masks
from .pruner import Pruner

SCOPES = ("global", "local")


def _allocation(scope: str) -> str:
    if scope not in SCOPES:
        raise PrunekitError(f"scope must be one of {SCOPES}, not {scope!r}.")
    return "global" if scope == "global" else "uniform"


def prune(model: nn.Module, amount, *, scope: str = "global", criterion="magnitude", params=None,
          batches=None, loss_fn=None) -> MaskSet:
    """Prune `amount` of the selected weights (fraction or count): scope="global" ranks them all
    together and removes exactly that many; "local" removes it from every tensor."""
    Pruner(model, granularity="element", criterion=criterion, allocation=_allocation(scope), sparsity=amount,
           params=params, batches=batches, loss_fn=loss_fn).step()
    return get_masks(model)


def prune_threshold(model: nn.Module, threshold: float, *, criterion="magnitude", params=None,
                    batches=None, loss_fn=None) -> MaskSet:
    """Prune every selected weight whose score is below `threshold` (|w| < τ by default)."""
    Pruner(model, granularity="element", criterion=criterion, threshold=threshold, params=params,
           batches=batches, loss_fn=loss_fn).step()
    return get_masks(model)


def prune_granular(model: nn.Module, amount, granularity: str = "element", *, criterion="magnitude", how: str = "l2",
                   p: float = 2.0, scope: str = "local", params=None, batches=None, loss_fn=None) -> MaskSet:
    """Prune `amount` of the units of `granularity` (prunekit.granularity) per tensor (local) or across
    tensors (global). With params=None every weight whose shape fits the granularity is pruned."""
    Pruner(model, granularity=granularity, criterion=criterion, allocation=_allocation(scope), sparsity=amount,
           how=how, p=p, params=params, batches=batches, loss_fn=loss_fn).step()
    return get_masks(model)


def prune_nm(model: nn.Module, n: int = 2, m: int = 4, *, criterion="magnitude", params=None,
             batches=None, loss_fn=None) -> MaskSet:
    """N:M sparsity along the input dimension of every weight whose input dimension M divides
    (named params must all divide)."""
    if not (isinstance(n, int) and isinstance(m, int)):
        raise PrunekitError(f"N:M needs integers 0 < N < M (e.g. 2:4), not {n}:{m}.")
    Pruner(model, granularity=f"{n}:{m}", criterion=criterion, params=params, batches=batches,
           loss_fn=loss_fn).step()
    return get_masks(model)


def prune_structured(model: nn.Module, amount, example_inputs, *, criterion="magnitude", how: str = "l2",
                     p: float = 2.0, scope: str = "local", round_to: int = 1, batches=None, loss_fn=None,
                     graph=None) -> MaskSet:
    """Remove `amount` of the units of every prunable graph group (local) or of all of them (global);
    `amount` may be {group name: fraction}. Coupled slices are masked together, so compact() can
    delete them without changing any output."""
    allocation = "uniform" if isinstance(amount, Mapping) else _allocation(scope)
    Pruner(model, example_inputs, granularity="group", criterion=criterion, allocation=allocation, sparsity=amount,
           how=how, p=p, round_to=round_to, batches=batches, loss_fn=loss_fn, graph=graph).step()
    return get_masks(model)


def prune_blocks(model: nn.Module, amount, example_inputs, *, batches=None, blocks=None) -> list[str]:
    """Mask every parameter of the `amount` lowest-scoring residual branches (relative branch norm
    on `batches`, default example_inputs); returns the names of all removed branches."""
    blocks = blocks if blocks is not None else find_residual_blocks(model, example_inputs)
    Pruner(model, example_inputs, granularity="block", sparsity=amount, batches=batches, blocks=blocks).step()
    masks = get_masks(model)
    return [b.name for b in blocks if b.prunable and is_removed(b, masks)]


__all__ = ["SCOPES", "prune", "prune_blocks", "prune_granular", "prune_nm", "prune_structured", "prune_threshold"]
