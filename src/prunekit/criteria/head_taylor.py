"""First-order (Taylor) head importance through a gate on every head's output (Michel et al. 2019).

Each head's output o_h is multiplied by a gate ξ_h before the output projection (ξ = 1 is the
model itself, ξ_h = 0 removes head h), so ∂/∂ξ_h = Σ_{tokens} ⟨∂(·)/∂o_h, o_h⟩: gradient × head
output. Over calibration batches b = 1…B:

    with loss_fn   s_h = (1/B) Σ_b |∂L_b/∂ξ_h|                       (Michel et al.: the expected
                                                                      first-order loss change)
    without        s_h = Σ_n ‖∂y_n/∂ξ_h‖² / Σ_n ‖y_n‖²               (first-order output change;
                                                                      no labels needed)

y_n is the output of example n (prunekit.criteria.head_objective; output="mean_pooled" for
sentence embeddings).
The second form is the first-order estimate of head_ablation's exact Σ_n ‖y_n − y_n^(−h)‖² / Σ_n ‖y_n‖².
It is estimated with Gaussian probes r_n ~ N(0, I), independent per example: the gradient
g = ∂(Σ_n r_n · y_n)/∂ξ has E[g_h²] = Σ_n ‖∂y_n/∂ξ_h‖² (cross terms vanish), averaged over
`probes` draws per batch from one forward pass. One backward pass per probe scores every head of
every block at once.
"""

from __future__ import annotations

import torch

from ..errors import PrunekitError
from ..nested import model_inputs
from .attention_sites import head_gates, per_head_scores
from .base import Criterion
from .calibration import batch_list, pure, require_loss
from .head_objective import example_outputs, resolve_output


class HeadTaylor(Criterion):
    name = "head_taylor"
    needs_data = True

    def __init__(self, *, output="first", probes: int = 4, seed: int = 0, max_batches: int | None = None):
        if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
            raise PrunekitError(f"probes must be a positive int, not {probes!r}.")
        self.output, self.probes, self.seed, self.max_batches = resolve_output(output), probes, seed, max_batches

    def head_scores(self, model, sites, batches, loss_fn=None) -> dict[str, torch.Tensor]:
        """{site name: (H,) s_h}."""
        totals = [torch.zeros(s.num_heads, dtype=torch.float64) for s in sites]
        gates = {s.name: torch.ones(s.num_heads, requires_grad=True) for s in sites}
        leaves = list(gates.values())
        generator = torch.Generator().manual_seed(self.seed)
        norm = 0.0
        with pure(model), head_gates(model, sites, gates), torch.enable_grad():
            for batch in batches:
                if loss_fn is not None:
                    loss = loss_fn(model_inputs(batch[0])(model), batch[1])
                    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                        raise PrunekitError("loss_fn must return a scalar tensor (use reduction='mean' or 'sum').")
                    grads = torch.autograd.grad(loss.reshape(()), leaves)
                    for t, g in zip(totals, grads):
                        t += g.double().abs() / len(batches)
                    continue
                y = example_outputs(model, batch[0], self.output)
                norm += float((y.detach() ** 2).sum())
                for k in range(self.probes):
                    r = torch.randn(y.shape, generator=generator, dtype=y.dtype)
                    grads = torch.autograd.grad((r * y).sum(), leaves, retain_graph=k + 1 < self.probes)
                    for t, g in zip(totals, grads):
                        t += g.double() ** 2 / self.probes
        if loss_fn is None:
            totals = [t / max(norm, 1e-300) for t in totals]
        return {s.name: t for s, t in zip(sites, totals)}

    def scores(self, model, params, *, batches=None, loss_fn=None):
        batches = batch_list(batches, self.name, self.max_batches, targets=loss_fn is not None)
        if loss_fn is not None:
            require_loss(loss_fn, self.name)
        return per_head_scores(model, params, self.name,
                               lambda sites: self.head_scores(model, sites, batches, loss_fn))

    def __repr__(self):
        return f"HeadTaylor(probes={self.probes}, seed={self.seed})"
