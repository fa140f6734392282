"""First-order Taylor importance (Molchanov et al. 2017, 2019).

Removing a weight changes the loss by δL ≈ −g·w (the first term of the Taylor expansion
L(w − δw) ≈ L(w) − g·δw with δw = w). Over calibration batches b = 1…B:

    accumulate="mean"     s = |w · ḡ|,  ḡ = (1/B) Σ_b g_b            (first-order change of the mean loss)
    accumulate="squared"  s = (1/B) Σ_b (w · g_b)²                   (Molchanov 2019: squared per batch)

For a unit U (a channel, a kernel …) the estimate is |Σ_{i∈U} g_i w_i|: set `signed=True` to get
the signed contributions w · ḡ and aggregate them with how="sum" before taking the absolute
value, e.g. `granularity.aggregate(s, ids, n, how="sum").abs()`.
"""

from __future__ import annotations

from ..errors import PrunekitError
from ..masks import effective_weight
from .base import Criterion
from .calibration import batch_list, pure, require_loss
from .gradients import mean_gradient, per_batch_gradients

ACCUMULATE = ("mean", "squared")


class Taylor(Criterion):
    name = "taylor"
    needs_data = True

    def __init__(self, *, accumulate: str = "mean", signed: bool = False, mode: str = "eval",
                 max_batches: int | None = None):
        if accumulate not in ACCUMULATE:
            raise PrunekitError(f"accumulate must be one of {ACCUMULATE}, not {accumulate!r}.")
        if signed and accumulate != "mean":
            raise PrunekitError("signed=True gives w·ḡ, which only the 'mean' accumulation defines.")
        self.accumulate, self.signed, self.mode, self.max_batches = accumulate, signed, mode, max_batches

    def scores(self, model, params, *, batches=None, loss_fn=None):
        batches = batch_list(batches, self.name, self.max_batches)
        require_loss(loss_fn, self.name)
        weights = {n: effective_weight(model, n).detach() for n in params}
        with pure(model, self.mode):
            if self.accumulate == "mean":
                grads = mean_gradient(model, params, loss_fn, batches)
                out = {n: weights[n] * g for n, g in zip(params, grads)}
                return out if self.signed else {n: s.abs() for n, s in out.items()}
            total = {n: 0.0 for n in params}
            for grads in per_batch_gradients(model, params, loss_fn, batches):
                for n, g in zip(params, grads):
                    total[n] = total[n] + (weights[n] * g) ** 2
            return {n: t / len(batches) for n, t in total.items()}

    def __repr__(self):
        return f"Taylor(accumulate={self.accumulate!r}, signed={self.signed}, mode={self.mode!r})"
