"""Sparsity-inducing penalties added to the training loss.

For the selected weight tensors W (their effective, masked values w ⊙ m):

    L1           λ · Σ |w|
    L2           λ/2 · Σ w²
    elastic net  λ · (α Σ |w| + (1 − α)/2 · Σ w²)
    group lasso  λ · Σ_g √|g| · ‖w_g‖₂

A group lasso *unit* is the slice of a tensor that shares the indices along `unit_dims`:
unit_dims=(0,) groups a Linear's rows (output neurons) or a Conv's filters (output
channels), (1,) the columns (input neurons / input channels), (0, 1) a conv's kernels. The
√|g| factor keeps groups of different sizes comparable (Yuan & Lin 2006).

Use with any training loop:

    reg = GroupLasso(1e-4, unit_dims=(0,))
    train(model, data.train, config, loss_fn=with_penalty(F.cross_entropy, model, reg))

Dropout, the other regulariser the source documents pair with pruning, is a model option
(`build_model("mnist1d_mlp", dropout=0.2)`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from .errors import PrunekitError
from .masks import effective_weight, resolve_parameters


def _check_strength(value, what="strength") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise PrunekitError(f"{what} must be a finite number ≥ 0, not {value!r}.")
    return float(value)


class Regularizer(ABC):
    """penalty(model) → scalar tensor, differentiable in the model's parameters.
    Subclasses define `term`, the per-tensor penalty without λ."""

    def __init__(self, strength: float, params=None):
        self.strength = _check_strength(strength)
        self.params = params

    def tensors(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {name: effective_weight(model, name) for name in resolve_parameters(model, self.params)}

    @abstractmethod
    def term(self, w: torch.Tensor) -> torch.Tensor:
        """The penalty of one tensor, without the strength λ."""

    def penalty(self, model: nn.Module) -> torch.Tensor:
        terms = [self.term(w) for w in self.tensors(model).values()]
        return self.strength * torch.stack(terms).sum()

    __call__ = penalty


class L1(Regularizer):
    def term(self, w):
        return w.abs().sum()


class L2(Regularizer):
    def term(self, w):
        return 0.5 * w.pow(2).sum()


class ElasticNet(Regularizer):
    def __init__(self, strength: float, l1_ratio: float = 0.5, params=None):
        super().__init__(strength, params)
        if not 0.0 <= _check_strength(l1_ratio, "l1_ratio") <= 1.0:
            raise PrunekitError(f"l1_ratio (α) must be in [0, 1], not {l1_ratio!r}.")
        self.l1_ratio = float(l1_ratio)

    def term(self, w):
        return self.l1_ratio * w.abs().sum() + (1.0 - self.l1_ratio) * 0.5 * w.pow(2).sum()


class GroupLasso(Regularizer):
    def __init__(self, strength: float, unit_dims: tuple[int, ...] = (0,), params=None):
        super().__init__(strength, params)
        if not unit_dims or any(not isinstance(d, int) or d < 0 for d in unit_dims):
            raise PrunekitError(f"unit_dims must be a non-empty tuple of non-negative dims, not {unit_dims!r}.")
        self.unit_dims = tuple(sorted(set(unit_dims)))

    def group_norms(self, w: torch.Tensor) -> torch.Tensor:
        """‖w_g‖₂ for every unit g (a tensor shaped like the unit_dims of w)."""
        if max(self.unit_dims) >= w.dim():
            raise PrunekitError(f"unit_dims {self.unit_dims} do not fit a tensor of shape {tuple(w.shape)}.")
        reduce = [d for d in range(w.dim()) if d not in self.unit_dims]
        if not reduce:
            return w.abs()
        # sqrt(sum + 0) has an infinite derivative at an all-zero (pruned) group; the
        # clamp inside keeps its (sub)gradient at 0 instead of NaN.
        return w.pow(2).sum(dim=reduce).clamp_min(1e-30).sqrt() * (w.pow(2).sum(dim=reduce) > 0)

    def term(self, w):
        norms = self.group_norms(w)  # validates unit_dims against the shape first
        size = w.numel() // math.prod(w.shape[d] for d in self.unit_dims)
        return math.sqrt(size) * norms.sum()


REGULARIZERS = {"l1": L1, "l2": L2, "elastic_net": ElasticNet, "group_lasso": GroupLasso}


def with_penalty(loss_fn, model: nn.Module, regularizer: Regularizer | None):
    """loss_fn(out, y) + penalty(model), usable as `loss_fn` of prunekit.training.train."""
    if regularizer is None:
        return loss_fn
    regularizer.tensors(model)  # validate the selection now, not at the first step

    def regularized(out, target, **kwargs):
        loss = loss_fn(out, target, **kwargs)
        return loss + regularizer.penalty(model) if kwargs.get("reduction", "mean") == "mean" else loss

    return regularized


def cross_entropy_with(model: nn.Module, regularizer: Regularizer | None):
    return with_penalty(F.cross_entropy, model, regularizer)
