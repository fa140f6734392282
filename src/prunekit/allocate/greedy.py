"""Greedy allocation under a budget: repeatedly take the cheapest accuracy per unit of cost.

At each step every layer proposes pruning `step` more of its units (a fraction of the
layer). Each proposal is evaluated (validation accuracy, no fine-tuning), and the layer with
the smallest estimated loss per unit of cost saved,

    score_l = (acc(current) − acc(current + step_l)) / (cost(current) − cost(current + step_l)),

is pruned. Steps repeat until the cost fits the target; the last step is then trimmed back
unit by unit (`fit_to_budget`) so the budget is met to within one unit. Proposals of a step
are independent evaluations, run through the executor.
"""

from __future__ import annotations

import math

from ..errors import PrunekitError
from .base import Allocation, Allocator, PruningProblem, fit_to_budget, resolve_target
from .executor import evaluate_counts, get_executor


class GreedyAllocator(Allocator):
    name = "greedy"

    def __init__(self, budget: float, *, step: float = 0.05, executor=None):
        if not 0 < step <= 1:
            raise PrunekitError(f"step is the fraction of a layer pruned per move, in (0, 1]; got {step}.")
        self.budget, self.step, self.executor = budget, step, executor

    def _allocate(self, problem: PruningProblem) -> Allocation:
        target = resolve_target(problem, self.budget)
        executor = get_executor(self.executor)
        counts = problem.full()
        accuracy = problem.accuracy(counts)
        decisions, last = [], None
        while problem.cost(counts) > target:
            proposals = {}
            for l in problem.layers:
                k = min(l.max_units, counts[l.name] + max(1, math.ceil(self.step * l.units)))
                if k > counts[l.name]:
                    proposals[l.name] = {**counts, l.name: k}
            saved = {n: problem.cost(counts) - problem.cost(c) for n, c in proposals.items()}
            proposals = {n: c for n, c in proposals.items() if saved[n] > 0}
            if not proposals:  # resolve_target checked feasibility, so this means a non-monotone cost
                raise PrunekitError(f"greedy search stuck above the target {target:.6g} {problem.metric}.")
            accs = dict(zip(proposals, executor.map(evaluate_counts, problem, list(proposals.values()))))
            scores = {n: (accuracy - accs[n]) / saved[n] for n in proposals}
            last = min(scores, key=lambda n: (scores[n], list(proposals).index(n)))
            counts, accuracy = proposals[last], accs[last]
            decisions.append({"layer": last, "count": counts[last], "accuracy": accuracy,
                              "cost": problem.cost(counts), "scores": scores})
        # Trim the overshoot of the last move first (it is restored first), then the rest.
        others = [l.name for l in problem.layers if l.name != last]
        fitted = fit_to_budget(problem, counts, target, others + ([last] if last else []))
        decisions.append({"fit_to_budget": {n: fitted[n] - counts[n] for n in counts}})
        return self._result(problem, fitted, target, decisions=decisions, details={"step": self.step})
