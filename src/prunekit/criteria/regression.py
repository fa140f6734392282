"""Regression-based channel importance (He et al. 2017), as an element-wise criterion.

For a layer Z = X Wᵀ with per-input-channel contributions A_c = X_c W_cᵀ, the LASSO
min_β ½‖Z − Σ_c β_c A_c‖² + λ‖β‖₁ switches channels off one by one as λ grows. A channel's
score is the largest λ (relative to λ_max = max_c ⟨Z, A_c⟩, where every β is zero) at which it
is still selected, taken on a geometric grid of `grid` values down to λ_max·`floor`; channels
never selected score 0. So the channels that survive the strongest penalty rank highest,
whatever amount is pruned later. The score is broadcast over the weight's input-channel slice
(dimension 1). To prune *and* refit the kept weights by least squares, use
prunekit.reconstruct.prune_layer_channels.
"""

from __future__ import annotations

import torch

from .. import reconstruct as rc
from ..errors import PrunekitError
from .base import Criterion
from .calibration import batch_list, per_channel
from .channels import owner_name


def entry_scores(gram: torch.Tensor, grid: int = 20, floor: float = 1e-3, iters: int = 300) -> torch.Tensor:
    """λ_enter(c) / λ_max on the path from λ_max down to λ_max·floor (0 if never selected)."""
    lam_max = float(gram.sum(1).abs().max())
    scores = torch.zeros(gram.shape[0], dtype=gram.dtype)
    if lam_max <= 0:
        return scores
    lipschitz = float(torch.linalg.eigvalsh(gram).max())
    beta = None
    for lam in torch.logspace(0, torch.log10(torch.tensor(floor)), grid, dtype=torch.float64):
        # warm-started along the path, so a few hundred proximal steps per λ suffice for the support
        beta = rc.lasso(gram, float(lam) * lam_max, beta=beta, lipschitz=lipschitz, iters=iters, tol=1e-7)
        newly = (beta != 0) & (scores == 0)
        scores[newly] = float(lam)
    return scores


class Regression(Criterion):
    name = "regression"
    needs_data = True
    unit_dim = 1

    def __init__(self, *, grid: int = 20, floor: float = 1e-3, iters: int = 300, max_batches: int | None = None):
        self.grid, self.floor, self.iters, self.max_batches = grid, floor, iters, max_batches

    def scores(self, model, params, *, batches=None, loss_fn=None):
        batches = batch_list(batches, self.name, self.max_batches, targets=False)
        out = {}
        for name, p in params.items():
            layer_name = owner_name(name)
            layer = model.get_submodule(layer_name) if layer_name else model
            if not name.endswith("weight") or p.dim() < 2:
                raise PrunekitError(f"Regression scores the input channels of layer weights; '{name}' is not one. "
                                    "Select weight matrices / kernels only.")
            rc.check_layer(layer, layer_name)
            moments = rc.input_moments(model, layer_name, batches)
            gram = rc.channel_gram(moments, rc.weight_matrix(layer), rc.group_size(layer))
            out[name] = per_channel(entry_scores(gram, self.grid, self.floor, self.iters), p.detach(), 1, name)
        return out

    def __repr__(self):
        return f"Regression(grid={self.grid}, floor={self.floor})"
