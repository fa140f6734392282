"""Random scores: the control every pruning benchmark needs.

Each element gets an independent U(0, 1) score from a generator seeded with `seed`, drawn in
the order of the parameter names, so the same seed and selection always prune the same weights.
"""

from __future__ import annotations

import torch

from .base import Criterion


class Random(Criterion):
    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def scores(self, model, params, *, batches=None, loss_fn=None):
        generator = torch.Generator().manual_seed(self.seed)
        out = {}
        for name in sorted(params):
            p = params[name]
            out[name] = torch.rand(p.shape, generator=generator).to(device=p.device, dtype=p.dtype)
        return {n: out[n] for n in params}

    def __repr__(self):
        return f"Random(seed={self.seed})"
