"""GraSP (Wang et al. 2020): Gradient Signal Preservation, scored before training.

Removing weights δ changes the gradient norm by ΔG ≈ 2 δᵀ H g (first order in δ, with
G = ‖g‖², g = ∇L and H = ∇²L). Removing weight i is δ = −w_i e_i, so the paper's score is

    S = −w ⊙ (H g)

and the paper removes the weights with the *largest* S: their removal reduces (or least
increases) the gradient flow. prunekit prunes the *lowest* scores, so `scores` returns the
importance −S = w ⊙ (H g); `paper_scores` returns S itself.

H g is a Hessian-vector product by double backward (prunekit.hessian): with one calibration
batch, g and H g come from a single forward pass; with several, g is the mean gradient over
all of them (first pass) and H g = (1/B) Σ_b H_b g (second pass).
"""

from __future__ import annotations

from .. import hessian
from ..masks import effective_weight
from .attention_sites import eager_attention
from .base import Criterion
from .calibration import LossOfParams, batch_list, dense_values, pure, require_loss
from .gradients import mean_gradient


class GraSP(Criterion):
    name = "grasp"
    needs_data = True

    def __init__(self, *, mode: str = "eval", max_batches: int | None = None):
        self.mode, self.max_batches = mode, max_batches

    def hessian_gradient(self, model, params, *, batches=None, loss_fn=None):
        """(g, H g) for the mean calibration loss, as lists in `params` order."""
        batches = batch_list(batches, self.name, self.max_batches)
        require_loss(loss_fn, self.name)
        names, values = list(params), dense_values(params)
        # second derivatives: HF models switch from fused attention kernels (no double backward) to eager
        with pure(model, self.mode), eager_attention(model):
            if len(batches) == 1:
                return hessian.gradient_and_hvp(LossOfParams(model, names, loss_fn, batches[0]), values)
            g = mean_gradient(model, params, loss_fn, batches)
            hg = None
            for batch in batches:
                part = hessian.hvp(LossOfParams(model, names, loss_fn, batch), values, g)
                hg = part if hg is None else [a + b for a, b in zip(hg, part)]
            return g, [h / len(batches) for h in hg]

    def paper_scores(self, model, params, *, batches=None, loss_fn=None):
        """The paper's S = −w ⊙ (H g): the largest S are removed first."""
        _, hg = self.hessian_gradient(model, params, batches=batches, loss_fn=loss_fn)
        return {n: -effective_weight(model, n).detach() * h for n, h in zip(params, hg)}

    def scores(self, model, params, *, batches=None, loss_fn=None):
        return {n: -s for n, s in self.paper_scores(model, params, batches=batches, loss_fn=loss_fn).items()}

    def __repr__(self):
        return f"GraSP(mode={self.mode!r})"
