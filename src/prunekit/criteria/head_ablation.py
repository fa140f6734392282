"""Head ablation: how much the model's output moves when one attention head is removed alone.

With y_n the output of example n (see prunekit.criteria.head_objective) and y_n^(−h) the
same output with head h's output zeroed (gate ξ_h = 0 on the output projection's input):

    s_h = Σ_n ‖y_n − y_n^(−h)‖² / Σ_n ‖y_n‖²

Exact rather than estimated, at the price of one pass over the calibration batches per head
(72 passes for MiniLM-L6). Scores of different blocks are directly comparable. Works on the
attention blocks prunekit.criteria.attention_sites recognises (BERT-style encoders).
"""

from __future__ import annotations

import torch

from .attention_sites import head_gates, per_head_scores
from .base import Criterion
from .calibration import batch_list, pure
from .head_objective import example_outputs, resolve_output


class HeadAblation(Criterion):
    name = "head_ablation"
    needs_data = True

    def __init__(self, *, output="first", max_batches: int | None = None):
        self.output, self.max_batches = resolve_output(output), max_batches

    def head_scores(self, model, sites, batches) -> dict[str, torch.Tensor]:
        """{site name: (H,) s_h}."""
        with pure(model), torch.no_grad():
            dense = [example_outputs(model, b[0], self.output) for b in batches]
            norm = sum(float((y ** 2).sum()) for y in dense)
            out = {}
            for site in sites:
                values = torch.zeros(site.num_heads, dtype=torch.float64)
                for h in range(site.num_heads):
                    gate = torch.ones(site.num_heads)
                    gate[h] = 0.0
                    with head_gates(model, [site], {site.name: gate}):
                        for b, y in zip(batches, dense):
                            values[h] += float(((example_outputs(model, b[0], self.output) - y) ** 2).sum())
                out[site.name] = values / max(norm, 1e-300)
        return out

    def scores(self, model, params, *, batches=None, loss_fn=None):
        batches = batch_list(batches, self.name, self.max_batches, targets=False)
        return per_head_scores(model, params, self.name, lambda sites: self.head_scores(model, sites, batches))

    def __repr__(self):
        return "HeadAblation()"
