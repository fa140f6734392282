"""Gradients of the calibration loss with respect to the selected parameters, batch by batch.

Shared by the first-order criteria (SNIP, Taylor) and the gradient half of GraSP.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import nn

from .. import hessian
from .calibration import LossOfParams, dense_values


def per_batch_gradients(model: nn.Module, params: Mapping[str, nn.Parameter], loss_fn,
                        batches: list) -> Iterator[list[torch.Tensor]]:
    """∇θ L_b for every batch b (θ = the selected parameters, in `params` order)."""
    names, values = list(params), dense_values(params)
    for batch in batches:
        yield hessian.gradient(LossOfParams(model, names, loss_fn, batch), values)


def mean_gradient(model: nn.Module, params, loss_fn, batches: list) -> list[torch.Tensor]:
    """ḡ = (1/B) Σ_b ∇θ L_b: the gradient of the mean calibration loss over equal-sized batches."""
    total = None
    for grads in per_batch_gradients(model, params, loss_fn, batches):
        total = grads if total is None else [t + g for t, g in zip(total, grads)]
    return [t / len(batches) for t in total]
