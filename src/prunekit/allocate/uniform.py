"""The two allocators without a search: uniform ratio and global threshold.

Uniform: every layer loses the same fraction r of its units. With a budget, r is the
smallest ratio whose cost fits (bisection: cost never increases with r); rounding to whole
units can leave slack, so single units are then given back, always to the layer with the
highest ratio that can take one, until none fits.

Global threshold: rank every unit of every layer by the criterion score in one list and
prune the lowest-scored prefix; with a budget the prefix is the shortest whose cost fits
(cost never increases with the prefix length), which meets it to within one unit directly.
Equivalent to a single threshold τ: a unit goes iff its score is below τ.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import PrunekitError
from ..selection import resolve_amount
from .base import Allocation, Allocator, PruningProblem, resolve_target


class UniformAllocator(Allocator):
    name = "uniform"

    def __init__(self, budget: float | None = None, *, ratio: float | None = None):
        if (budget is None) == (ratio is None):
            raise PrunekitError("UniformAllocator needs exactly one of budget= (cost target) or ratio= (fraction).")
        self.budget, self.ratio = budget, ratio

    def _allocate(self, problem: PruningProblem) -> Allocation:
        if self.ratio is not None:  # a fraction, or a count of units per layer
            counts = {l.name: min(l.max_units, resolve_amount(self.ratio, l.units, f"units of '{l.name}'"))
                      for l in problem.layers}
            return self._result(problem, counts, None, details={"ratio": self.ratio})
        target = resolve_target(problem, self.budget)
        uniform = lambda r: problem.counts_for({l.name: r for l in problem.layers})  # noqa: E731
        lo, hi = 0.0, 1.0
        for _ in range(60):  # bisection on r to float precision
            mid = (lo + hi) / 2
            if problem.cost(uniform(mid)) <= target:
                hi = mid
            else:
                lo = mid
        counts = uniform(hi)
        fitted = self._even_fill(problem, counts, target)
        return self._result(problem, fitted, target, details={"ratio": hi},
                            decisions=[{"ratio": hi, "cost": problem.cost(counts)},
                                       {"fit_to_budget": {n: fitted[n] - counts[n] for n in counts}}])

    @staticmethod
    def _even_fill(problem: PruningProblem, counts: dict, target: float) -> dict:
        """Give units back one at a time, always to the layer with the highest ratio that can take
        one, until none fits: the ratios stay as even as whole units allow, and the slack ends
        below one unit (no layer can take a unit back)."""
        counts = dict(counts)
        while True:
            ranked = sorted((l for l in problem.layers if counts[l.name] > 0),
                            key=lambda l: (-counts[l.name] / l.units, -l.units, l.name))
            for l in ranked:
                trial = {**counts, l.name: counts[l.name] - 1}
                if problem.cost(trial) <= target:
                    counts = trial
                    break
            else:
                return counts


class GlobalThresholdAllocator(Allocator):
    """One ranking of every unit; prunes the lowest-scored prefix. Exactly one of: `budget` (the
    shortest prefix whose cost fits), `count` (exactly that many units), `threshold` (every unit
    scoring below τ)."""

    name = "global"

    def __init__(self, budget: float | None = None, *, count: int | None = None, threshold: float | None = None):
        if sum(v is not None for v in (budget, count, threshold)) != 1:
            raise PrunekitError("GlobalThresholdAllocator needs exactly one of budget=, count= or threshold=.")
        if threshold is not None and not math.isfinite(threshold):
            raise PrunekitError(f"threshold must be a finite number, not {threshold!r}.")
        self.budget, self.count, self.threshold = budget, count, threshold

    def _allocate(self, problem: PruningProblem) -> Allocation:
        names = [l.name for l in problem.layers]
        scores = [np.asarray(problem.unit_scores(n), dtype=np.float64)[:problem.layer(n).max_units] for n in names]
        flat = np.concatenate(scores)
        order = np.argsort(flat, kind="stable")  # ties: the earlier layer, then the earlier unit
        ranked_owner = np.concatenate([np.full(len(s), i) for i, s in enumerate(scores)])[order]

        def counts(prefix: int) -> dict:
            per_layer = np.bincount(ranked_owner[:prefix], minlength=len(names))
            return {n: int(per_layer[i]) for i, n in enumerate(names)}

        target = None
        if self.count is not None:
            lo = hi = resolve_amount(self.count, len(order), "units (within each layer's maximum)")
        elif self.threshold is not None:
            lo = hi = int(np.searchsorted(flat[order], self.threshold, side="left"))
        else:
            target = resolve_target(problem, self.budget)
            lo, hi = 0, len(order)
        while lo < hi:
            mid = (lo + hi) // 2
            if problem.cost(counts(mid)) <= target:
                hi = mid
            else:
                lo = mid + 1
        chosen = counts(lo)
        threshold = float(flat[order[lo - 1]]) if lo else None
        return self._result(problem, chosen, target, details={"threshold": threshold, "units_pruned": lo},
                            decisions=[{"prefix": lo, "threshold": threshold}])
