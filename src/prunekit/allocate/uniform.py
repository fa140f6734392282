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

import numpy as np

from ..errors import PrunekitError
from .base import Allocation, Allocator, PruningProblem, resolve_target


class UniformAllocator(Allocator):
    name = "uniform"

    def __init__(self, budget: float | None = None, *, ratio: float | None = None):
        if (budget is None) == (ratio is None):
            raise PrunekitError("UniformAllocator needs exactly one of budget= (cost target) or ratio= (fraction).")
        self.budget, self.ratio = budget, ratio

    def _allocate(self, problem: PruningProblem) -> Allocation:
        if self.ratio is not None:
            return self._result(problem, problem.counts_for({l.name: self.ratio for l in problem.layers}), None,
                                details={"ratio": self.ratio})
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
    name = "global"

    def __init__(self, budget: float):
        self.budget = budget

    def _allocate(self, problem: PruningProblem) -> Allocation:
        target = resolve_target(problem, self.budget)
        names = [l.name for l in problem.layers]
        scores = [np.asarray(problem.unit_scores(n), dtype=np.float64)[:problem.layer(n).max_units] for n in names]
        owner = np.concatenate([np.full(len(s), i) for i, s in enumerate(scores)])
        order = np.argsort(np.concatenate(scores), kind="stable")
        # positions (in the global order) of each layer's units, so a prefix length → counts
        positions = [np.flatnonzero(owner[order] == i) for i in range(len(names))]

        def counts(prefix: int) -> dict:
            return {n: int(np.searchsorted(positions[i], prefix)) for i, n in enumerate(names)}

        lo, hi = 0, len(order)
        while lo < hi:
            mid = (lo + hi) // 2
            if problem.cost(counts(mid)) <= target:
                hi = mid
            else:
                lo = mid + 1
        chosen = counts(lo)
        threshold = float(np.concatenate(scores)[order[lo - 1]]) if lo else None
        return self._result(problem, chosen, target, details={"threshold": threshold, "units_pruned": lo},
                            decisions=[{"prefix": lo, "threshold": threshold}])
