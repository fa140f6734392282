"""Sensitivity analysis: prune one layer at a time, see what it costs in accuracy.

For every layer l and ratio r in the grid (0.1 … 0.9 by default), prune only l to r — the
other layers untouched — and evaluate on validation data: acc_l(r). The drop is
d_l(r) = acc(dense) − acc_l(r). Given an accepted drop T, layer l gets

    r_l(T) = max { r in grid : d_l(r') ≤ T for every grid r' ≤ r }   (0 if none),

the largest ratio up to which the curve stays within T. The set grows with T, so r_l(T)
never decreases as T grows. With a budget, T is the smallest accepted drop whose ratios
fit, and `fit_to_budget` then closes the gap to within one unit — pruning more in the
least sensitive layers first (smallest mean drop over the grid).

Curves are written as CSV and PNG when a RunDir is given; evaluations go through an executor.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass

from ..errors import PrunekitError
from ..plots import line_plot
from .base import Allocation, Allocator, PruningProblem, fit_to_budget, resolve_target
from .executor import evaluate_counts, get_executor

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class SensitivityCurves:
    baseline: float
    curves: dict[str, list[tuple[float, float]]]  # layer → [(ratio, accuracy)]

    def drop(self, name: str) -> list[tuple[float, float]]:
        return [(r, self.baseline - a) for r, a in self.curves[name]]

    def ratios(self, threshold: float) -> dict[str, float]:
        out = {}
        for name in self.curves:
            best = 0.0
            for r, d in sorted(self.drop(name)):
                if d > threshold:
                    break
                best = r
            out[name] = best
        return out

    def order(self) -> list[str]:
        """Layers from least to most sensitive (mean drop over the grid)."""
        return sorted(self.curves, key=lambda n: sum(d for _, d in self.drop(n)) / max(1, len(self.curves[n])))

    def rows(self) -> list[dict]:
        return [{"layer": n, "ratio": r, "accuracy": a, "drop": self.baseline - a}
                for n, pts in self.curves.items() for r, a in pts]

    def save(self, run, name: str = "sensitivity") -> dict:
        """CSV of every point and a PNG of accuracy vs ratio, one line per layer, in the run folder."""
        path = run.path / f"{name}.csv"
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["layer", "ratio", "accuracy", "drop"])
            writer.writeheader()
            writer.writerows(self.rows())
        series = {n: ([0.0] + [r for r, _ in pts], [self.baseline] + [a for _, a in pts])
                  for n, pts in self.curves.items()}
        png = line_plot(run.plot_path(f"{name}.png"), "pruned ratio of the layer", "validation accuracy",
                        series, title="Sensitivity: one layer pruned at a time")
        return {"csv": path, "png": png}


def sensitivity_curves(problem: PruningProblem, ratios=DEFAULT_RATIOS, executor=None) -> SensitivityCurves:
    """Accuracy with each layer alone pruned to each ratio (clipped to the layer's maximum)."""
    if not ratios or any(not 0 < r <= 1 for r in ratios):
        raise PrunekitError(f"sensitivity ratios must be in (0, 1], e.g. 0.1 … 0.9; got {list(ratios)}.")
    ratios = sorted(set(float(r) for r in ratios))
    items = [{}] + [{l.name: min(l.max_units, round(r * l.units))} for l in problem.layers for r in ratios]
    results = get_executor(executor).map(evaluate_counts, problem, items)
    baseline, rest = results[0], iter(results[1:])
    curves = {l.name: [(r, next(rest)) for r in ratios] for l in problem.layers}
    return SensitivityCurves(baseline, curves)


class SensitivityAllocator(Allocator):
    name = "sensitivity"

    def __init__(self, threshold: float | None = None, budget: float | None = None, *, ratios=DEFAULT_RATIOS,
                 executor=None, run=None, curves: SensitivityCurves | None = None):
        if (threshold is None) == (budget is None):
            raise PrunekitError("SensitivityAllocator needs exactly one of threshold= (accepted accuracy drop) "
                                "or budget= (cost target).")
        if threshold is not None and threshold < 0:
            raise PrunekitError(f"threshold is an accepted accuracy drop ≥ 0, e.g. 0.01; got {threshold}.")
        self.threshold, self.budget, self.ratios = threshold, budget, ratios
        self.executor, self.run, self.curves = executor, run, curves

    def _allocate(self, problem: PruningProblem) -> Allocation:
        target = resolve_target(problem, self.budget) if self.budget is not None else None
        curves = self.curves or sensitivity_curves(problem, self.ratios, self.executor)
        files = curves.save(self.run) if self.run is not None else {}
        details = {"baseline": curves.baseline, "curves": curves.curves, "files": {k: str(v) for k, v in files.items()}}
        if target is None:
            chosen = curves.ratios(self.threshold)
            return self._result(problem, problem.counts_for(chosen), None,
                                details={**details, "threshold": self.threshold},
                                decisions=[{"threshold": self.threshold, "ratios": chosen}])
        candidates = sorted({0.0} | {max(0.0, d) for n in curves.curves for _, d in curves.drop(n)})
        threshold = candidates[-1]
        for t in candidates:  # the smallest accepted drop whose ratios fit the budget
            if problem.cost(problem.counts_for(curves.ratios(t))) <= target:
                threshold = t
                break
        counts = problem.counts_for(curves.ratios(threshold))
        fitted = fit_to_budget(problem, counts, target, curves.order())
        return self._result(problem, fitted, target, details={**details, "threshold": threshold},
                            decisions=[{"threshold": threshold, "ratios": curves.ratios(threshold),
                                        "cost": problem.cost(counts)},
                                       {"fit_to_budget": {n: fitted[n] - counts[n] for n in counts}}])
