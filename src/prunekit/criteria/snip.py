"""SNIP (Lee et al. 2019): connection sensitivity at initialisation, before any training.

With the forward pass using w ⊙ m, the saliency of a connection is the size of the loss's
derivative with respect to its mask variable:

    s = |∂L/∂m| = |w ⊙ ∂L/∂(w ⊙ m)| = |w · g|

with g the gradient of the mean loss over the calibration batches (one batch in the paper,
several for a less noisy estimate). `normalize=True` divides by Σ s, as the paper does; this
does not change the ranking.
"""

from __future__ import annotations

from ..masks import effective_weight
from .base import Criterion
from .calibration import batch_list, pure, require_loss
from .gradients import mean_gradient


class SNIP(Criterion):
    name = "snip"
    needs_data = True

    def __init__(self, *, normalize: bool = False, mode: str = "eval", max_batches: int | None = None):
        self.normalize, self.mode, self.max_batches = normalize, mode, max_batches

    def scores(self, model, params, *, batches=None, loss_fn=None):
        batches = batch_list(batches, self.name, self.max_batches)
        require_loss(loss_fn, self.name)
        with pure(model, self.mode):
            grads = mean_gradient(model, params, loss_fn, batches)
        out = {n: (effective_weight(model, n).detach() * g).abs() for n, g in zip(params, grads)}
        if self.normalize:
            total = sum(s.sum() for s in out.values())
            if total > 0:
                out = {n: s / total for n, s in out.items()}
        return out

    def __repr__(self):
        return f"SNIP(normalize={self.normalize}, mode={self.mode!r})"
