"""BN scaling factor |γ| (Liu et al. 2017, Network Slimming).

BatchNorm computes z_out = γ · (z_in − μ)/√(σ² + ε) + β per channel, so a channel whose
|γ| ≈ 0 contributes only the constant β: |γ| measures how much the channel matters. Train
with an L1 (or smooth-L1) penalty on γ to push unneeded channels towards 0 (see
prunekit.slimming), then prune the channels with the smallest |γ|.

Each channel's |γ| is broadcast over every selected parameter that belongs to the channel:
the BatchNorm's own γ and β, and the weight rows / filters and bias of the layer that feeds
it (found as described in prunekit.criteria.channels; pass batches to trace it exactly).
"""

from __future__ import annotations

from ..errors import PrunekitError
from .base import Criterion
from .calibration import batch_list, per_channel
from .channels import NORMS, norms_after, owner_name


class BNScale(Criterion):
    name = "bn_scale"
    unit_dim = 0

    def __init__(self, *, unmatched: str = "error"):
        if unmatched not in ("error", "keep"):
            raise PrunekitError("unmatched must be 'error' or 'keep' (score +inf: never pruned).")
        self.unmatched = unmatched

    def scores(self, model, params, *, batches=None, loss_fn=None):
        example = batch_list(batches, self.name, targets=False)[0][0] if batches is not None else None
        following = norms_after(model, example)
        out = {}
        for name, p in params.items():
            owner = owner_name(name)
            module = model.get_submodule(owner) if owner else model
            norm_name = owner if isinstance(module, NORMS) else following.get(owner)
            if norm_name is None:
                if self.unmatched == "keep":
                    out[name] = p.detach().new_full(p.shape, float("inf"))
                    continue
                raise PrunekitError(f"No BatchNorm normalises the output of '{owner}', so '{name}' has no γ to score. "
                                    "Select only parameters of layers followed by a BatchNorm, or use "
                                    "BNScale(unmatched='keep') to leave the others unpruned.")
            norm = model.get_submodule(norm_name)
            if norm.weight is None:
                raise PrunekitError(f"BatchNorm '{norm_name}' has affine=False: it has no γ to score.")
            out[name] = per_channel(norm.weight.detach().abs(), p.detach(), 0, name)
        return out

    def __repr__(self):
        return f"BNScale(unmatched={self.unmatched!r})"
