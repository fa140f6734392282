"""Knapsack allocation: which pieces of which layers to remove, within a cost budget.

Each layer l chooses one level k from a grid (0, s, 2s, … of its units); level k keeps a
cost w_l(k) and loses an estimated accuracy d_l(k) (from the sensitivity curves, read off
by linear interpolation; drops of different layers are assumed to add up). The allocation
is the multiple-choice knapsack

    maximise Σ_l v_l(k_l)  with v = −d,   subject to  Σ_l w_l(k_l) ≤ C,

where w_l(k) = saving_l(max) − saving_l(k) is the cost the layer keeps above its minimum,
and C = target − min cost (costs assumed additive across layers; `fit_to_budget` corrects
any coupling afterwards). With two levels per group it is the 0/1 knapsack.

Solvers (all over integer weights; real costs are divided by a quantum q and rounded *up*,
so a solution that fits in integers fits in real cost):
  * knapsack_dp: exact dynamic programming, best[c] = max value within capacity c, O(G·C·K);
  * knapsack_greedy: start from the lightest option everywhere, then repeatedly take the
    upgrade with the largest value gained per weight added that still fits;
  * knapsack_bruteforce: enumerate every combination (tests).
The greedy's optimality gap (DP value − greedy value ≥ 0) is reported in the Allocation.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ..errors import PrunekitError
from .base import Allocation, Allocator, PruningProblem, fit_to_budget, resolve_target
from .sensitivity import DEFAULT_RATIOS, SensitivityCurves, sensitivity_curves


def _check(groups, capacity):
    if capacity < 0:
        raise PrunekitError(f"knapsack capacity must be ≥ 0, got {capacity}.")
    for g, options in enumerate(groups):
        if not options:
            raise PrunekitError(f"knapsack group {g} has no options.")
        for v, w in options:
            if int(w) != w or w < 0 or not math.isfinite(v):
                raise PrunekitError(f"knapsack group {g}: weights must be integers ≥ 0 and values finite, "
                                    f"got ({v}, {w}).")
    if sum(min(w for _, w in options) for options in groups) > capacity:
        raise PrunekitError("knapsack infeasible: even the lightest option of every group exceeds the capacity.")


def knapsack_dp(groups: list[list[tuple[float, int]]], capacity: int) -> tuple[float, list[int]]:
    """Exact multiple-choice knapsack: one option (value, weight) per group, Σ weight ≤ capacity.

    Returns (best total value, chosen option index per group)."""
    _check(groups, capacity)
    best = np.zeros(capacity + 1)  # best[c]: max value of the groups so far within capacity c
    choice = np.zeros((len(groups), capacity + 1), dtype=np.int64)
    for g, options in enumerate(groups):
        new = np.full(capacity + 1, -np.inf)
        for i, (v, w) in enumerate(options):
            w = int(w)
            if w > capacity:
                continue
            cand = np.full(capacity + 1, -np.inf)
            cand[w:] = best[:capacity + 1 - w] + v
            better = cand > new  # strict: ties keep the earlier option (deterministic)
            new[better] = cand[better]
            choice[g][better] = i
        best = new
    chosen, c = [0] * len(groups), capacity
    for g in range(len(groups) - 1, -1, -1):
        chosen[g] = int(choice[g][c])
        c -= int(groups[g][chosen[g]][1])
    return float(best[capacity]), chosen


def knapsack_greedy(groups: list[list[tuple[float, int]]], capacity: int) -> tuple[float, list[int]]:
    """Value-per-weight greedy: lightest option everywhere, then best-ratio upgrades that fit."""
    _check(groups, capacity)
    chosen = [min(range(len(o)), key=lambda i: (o[i][1], -o[i][0])) for o in groups]
    used = sum(groups[g][i][1] for g, i in enumerate(chosen))
    while True:
        best = None
        for g, options in enumerate(groups):
            v0, w0 = options[chosen[g]]
            for i, (v, w) in enumerate(options):
                if v <= v0 or used - w0 + w > capacity:
                    continue
                ratio = (v - v0) / (w - w0) if w > w0 else math.inf
                if best is None or ratio > best[0]:
                    best = (ratio, g, i)
        if best is None:
            break
        _, g, i = best
        used += groups[g][i][1] - groups[g][chosen[g]][1]
        chosen[g] = i
    return float(sum(groups[g][i][0] for g, i in enumerate(chosen))), chosen


def knapsack_bruteforce(groups, capacity) -> tuple[float, list[int]]:
    """Every combination; for checking the others on small instances."""
    best = (-math.inf, None)
    for combo in itertools.product(*(range(len(o)) for o in groups)):
        if sum(groups[g][i][1] for g, i in enumerate(combo)) <= capacity:
            value = sum(groups[g][i][0] for g, i in enumerate(combo))
            if value > best[0]:
                best = (value, list(combo))
    if best[1] is None:
        raise PrunekitError("knapsack infeasible.")
    return float(best[0]), best[1]


class KnapsackAllocator(Allocator):
    name = "knapsack"

    def __init__(self, budget: float, *, levels: float = 0.05, solver: str = "dp", resolution: int = 20000,
                 ratios=DEFAULT_RATIOS, executor=None, curves: SensitivityCurves | None = None):
        if solver not in ("dp", "greedy"):
            raise PrunekitError(f"solver must be 'dp' or 'greedy', not {solver!r}.")
        if not 0 < levels <= 0.5:
            raise PrunekitError(f"levels is the grid step as a fraction of a layer, in (0, 0.5]; got {levels}.")
        self.budget, self.levels, self.solver, self.resolution = budget, levels, solver, resolution
        self.ratios, self.executor, self.curves = ratios, executor, curves
        self.name = "knapsack" if solver == "dp" else "knapsack-greedy"

    def _allocate(self, problem: PruningProblem) -> Allocation:
        target = resolve_target(problem, self.budget)
        curves = self.curves or sensitivity_curves(problem, self.ratios, self.executor)
        dense = problem.dense_cost()
        layers = problem.layers
        grids, savings, drops = [], [], []
        for l in layers:
            steps = sorted({min(l.max_units, round(f * l.units)) for f in np.arange(0, 1 + 1e-9, self.levels)}
                           | {l.max_units})
            grids.append(steps)
            savings.append([dense - problem.cost({l.name: k}) for k in steps])
            xs, ys = zip(*([(0.0, 0.0)] + curves.drop(l.name)))
            drops.append([max(0.0, float(np.interp(k / l.units, xs, ys))) for k in steps])
        capacity_real = target - problem.min_cost()
        span = sum(max(s) for s in savings)
        quantum = max(1e-12, span / self.resolution) if span > self.resolution else 1.0
        groups = [[(-d, math.ceil((max(s) - sv) / quantum - 1e-9)) for d, sv in zip(ds, s)]
                  for ds, s in zip(drops, savings)]
        capacity = int(math.floor(capacity_real / quantum + 1e-9))
        dp_value, dp_choice = knapsack_dp(groups, capacity)
        gr_value, gr_choice = knapsack_greedy(groups, capacity)
        picked = dp_choice if self.solver == "dp" else gr_choice
        counts = {l.name: grids[i][picked[i]] for i, l in enumerate(layers)}
        fitted = fit_to_budget(problem, counts, target, curves.order())
        details = {"dp_value": dp_value, "greedy_value": gr_value, "greedy_gap": dp_value - gr_value,
                   "quantum": quantum, "capacity": capacity, "estimated_drop": -(dp_value if self.solver == "dp"
                                                                                 else gr_value),
                   "baseline": curves.baseline}
        return self._result(problem, fitted, target, details=details,
                            decisions=[{"levels": {l.name: counts[l.name] for l in layers}},
                                       {"fit_to_budget": {n: fitted[n] - counts[n] for n in counts}}])
