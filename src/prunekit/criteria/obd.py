"""Optimal Brain Damage (LeCun et al. 1990): second-order saliency.

Expanding the loss around a trained minimum, removing weight i (δw_i = −w_i) changes it by

    δL ≈ g_i δw_i + ½ h_ii δw_i² + ½ Σ_{j≠i} h_ij δw_i δw_j  ≈  ½ h_ii w_i²

since g ≈ 0 at a minimum and OBD neglects the off-diagonal terms. The score is s_i = ½ h_ii w_i²
(signed: a negative h_ii predicts that removal lowers the loss, so such weights go first).

Where h_ii comes from is an explicit choice (`hessian=`):
    "exact"       the true diagonal, one extra backward pass per weight (small models only)
    "hutchinson"  E[v ⊙ Hv] over Rademacher v, `samples` products per batch (unbiased, noisy)
    "fisher"      the empirical Fisher (1/N) Σ_n (∂ℓ_n/∂w_i)², from per-example gradients; equals
                  the Gauss–Newton diagonal when the model fits the data, and is never negative
Each is averaged over the calibration batches (the Hessian of the mean loss).
"""

from __future__ import annotations

import torch
from torch.func import functional_call, grad, vmap

from .. import hessian as hess
from ..errors import PrunekitError
from ..masks import effective_weight
from .attention_sites import eager_attention
from .base import Criterion
from .calibration import LossOfParams, batch_list, dense_values, pure, raw_names, require_loss

HESSIANS = ("exact", "hutchinson", "fisher")


class OBD(Criterion):
    name = "obd"
    needs_data = True

    def __init__(self, hessian: str = "hutchinson", *, samples: int = 1, seed: int = 0, mode: str = "eval",
                 max_elements: int = hess.EXACT_DIAGONAL_LIMIT, max_batches: int | None = None,
                 fisher_chunk: int = 256):
        if hessian not in HESSIANS:
            raise PrunekitError(f"OBD's hessian must be one of {HESSIANS}, not {hessian!r}.")
        if samples < 1:
            raise PrunekitError(f"samples must be ≥ 1, not {samples}.")
        self.hessian, self.samples, self.seed, self.mode = hessian, samples, seed, mode
        self.max_elements, self.max_batches, self.fisher_chunk = max_elements, max_batches, fisher_chunk

    def diagonal(self, model, params, *, batches=None, loss_fn=None) -> list[torch.Tensor]:
        """The chosen estimate of diag H for the mean calibration loss, in `params` order."""
        batches = batch_list(batches, self.name, self.max_batches)
        require_loss(loss_fn, self.name)
        names, values = list(params), dense_values(params)
        total = sum(v.numel() for v in values)
        if self.hessian == "exact" and total > self.max_elements:
            raise PrunekitError(f"OBD with the exact Hessian diagonal needs one backward pass per weight "
                                f"({total:,} selected, limit {self.max_elements:,}); use OBD('hutchinson') or "
                                "OBD('fisher'), select fewer params, or raise max_elements.")
        generator = torch.Generator().manual_seed(self.seed)
        # second derivatives: HF models switch from fused attention kernels (no double backward) to eager
        with pure(model, self.mode), eager_attention(model):
            if self.hessian == "fisher":
                return self._fisher(model, names, values, loss_fn, batches)
            acc = None
            for batch in batches:
                f = LossOfParams(model, names, loss_fn, batch)
                if self.hessian == "exact":
                    d = hess.exact_diagonal(f, values, max_elements=self.max_elements)
                else:
                    d = hess.hutchinson_diagonal(f, values, samples=self.samples, generator=generator)
                acc = d if acc is None else [a + b for a, b in zip(acc, d)]
            return [a / len(batches) for a in acc]

    def _fisher(self, model, names, values, loss_fn, batches):
        keys = [raw_names(model)[n] for n in names]

        def one_loss(tensors, x, y):
            out = functional_call(model, dict(zip(keys, tensors)), (x.unsqueeze(0),))
            return loss_fn(out, y.unsqueeze(0)).reshape(())

        per_example = vmap(grad(one_loss), in_dims=(None, 0, 0))
        squares, count = [torch.zeros_like(v) for v in values], 0
        for x, y, *_ in batches:
            if not isinstance(x, torch.Tensor):
                raise PrunekitError("OBD('fisher') takes per-example gradients of one input tensor; with dict or "
                                    "ExampleInputs batches use OBD('hutchinson') or OBD('exact').")
            for start in range(0, len(x), self.fisher_chunk):
                gs = per_example(values, x[start:start + self.fisher_chunk], y[start:start + self.fisher_chunk])
                for acc, g in zip(squares, gs):
                    acc.add_((g.detach() ** 2).sum(0))
            count += len(x)
        return [s / count for s in squares]

    def scores(self, model, params, *, batches=None, loss_fn=None):
        diag = self.diagonal(model, params, batches=batches, loss_fn=loss_fn)
        return {n: 0.5 * h * effective_weight(model, n).detach() ** 2 for n, h in zip(params, diag)}

    def __repr__(self):
        return f"OBD(hessian={self.hessian!r}, samples={self.samples}, seed={self.seed})"
