"""NetAdapt (Yang et al. 2018): shrink a resource step by step, fine-tuning as it goes.

Iteration i sets a goal R_i = max(target, R_{i−1} − ΔR_i), ΔR_i = delta · dense · decay^i.
For every layer l it proposes the least pruning of l alone that brings the cost to R_i
(the smallest count k_l with cost(counts | l = k_l) ≤ R_i, found by bisection — with the
"latency" metric the cost is the per-layer latency lookup table's prediction), fine-tunes
each proposal for `finetune_steps` (short-term fine-tuning) and keeps the most accurate
one. It stops when the cost reaches the target; the last goal is the target itself, so the
budget is met to within one unit. Every iteration's model is a point of the returned
accuracy-vs-cost front (with measured latency when the problem measures it); with a RunDir
each iteration's model is saved as checkpoints/netadapt-iteration<i>.pt.

Proposals of an iteration are independent and go through the executor. With a RunDir the
search checkpoints after each iteration and resumes from there to the same result.
"""

from __future__ import annotations

from ..errors import PrunekitError
from ..plots import line_plot
from .base import Allocation, Allocator, PruningProblem, smallest_count, fit_to_budget, resolve_target
from .executor import get_executor


def netadapt_proposal(problem: PruningProblem, item):
    """Rebuild the current model, prune it to `counts`, fine-tune briefly, evaluate.

    Models travel as (counts, state_dict): masked modules cannot be pickled whole, and
    state dicts are what an executor on other processes or machines can carry.
    Returns (accuracy, state of the fine-tuned model)."""
    current_counts, state, counts, steps, seed = item
    pruned = problem.apply(counts, problem.restore(current_counts, state))
    if steps:
        problem.finetune(pruned, steps, seed)
    return problem.evaluate(pruned), problem.state(pruned)


class NetAdapt(Allocator):
    name = "netadapt"

    def __init__(self, budget: float, *, delta: float = 0.1, decay: float = 0.96, finetune_steps: int = 50,
                 max_iterations: int = 100, seed: int = 0, executor=None, run=None):
        if not 0 < delta <= 1 or not 0 < decay <= 1:
            raise PrunekitError(f"delta (fraction of the dense cost cut per iteration) and decay must be in (0, 1]; "
                                f"got delta={delta}, decay={decay}.")
        self.budget, self.delta, self.decay, self.finetune_steps = budget, delta, decay, finetune_steps
        self.max_iterations, self.seed, self.executor, self.run = max_iterations, seed, executor, run

    def _allocate(self, problem: PruningProblem, stop_after: int | None = None) -> Allocation:
        target = resolve_target(problem, self.budget)
        executor = get_executor(self.executor)
        dense = problem.dense_cost()
        counts, model, history = problem.full(), problem.apply({}), []
        if self.run is not None and self.run.has_checkpoint("netadapt"):
            saved = self.run.load_checkpoint("netadapt")
            counts, history = dict(saved["counts"]), list(saved["history"])
            model = problem.restore(counts, saved["model"])
        else:
            history.append({"iteration": 0, "layer": None, "count": 0, "goal": dense, "cost": dense,
                            "accuracy": problem.evaluate(model), **problem.measure(model)})
        iteration = len(history) - 1
        while problem.cost(counts) > target:
            if iteration >= self.max_iterations:
                raise PrunekitError(f"NetAdapt did not reach {target:.6g} {problem.metric} in {self.max_iterations} "
                                    "iterations; raise max_iterations or delta.")
            if stop_after is not None and iteration >= stop_after:
                return self._partial(problem, counts, target, history, model)
            current = problem.cost(counts)
            goal = max(target, current - self.delta * dense * self.decay ** iteration)
            proposals = {}
            for l in problem.layers:
                top = l.max_units
                if top > counts[l.name] and problem.cost({**counts, l.name: top}) <= goal:
                    proposals[l.name] = {**counts, l.name: smallest_count(problem, counts, l.name, counts[l.name],
                                                                         top, goal)}
            if not proposals:  # no single layer reaches the goal: take the layer that gets closest
                best = min((l for l in problem.layers if l.max_units > counts[l.name]),
                           key=lambda l: problem.cost({**counts, l.name: l.max_units}))
                proposals[best.name] = {**counts, best.name: best.max_units}
            iteration += 1
            state = problem.state(model)
            items = [(counts, state, c, self.finetune_steps, self.seed + iteration) for c in proposals.values()]
            outcomes = dict(zip(proposals, executor.map(netadapt_proposal, problem, items)))
            chosen = max(outcomes, key=lambda n: (outcomes[n][0], -list(proposals).index(n)))
            counts, (accuracy, state) = proposals[chosen], outcomes[chosen]
            model = problem.restore(counts, state)
            history.append({"iteration": iteration, "layer": chosen, "count": counts[chosen], "goal": goal,
                            "cost": problem.cost(counts), "accuracy": accuracy,
                            "proposals": {n: o[0] for n, o in outcomes.items()}, **problem.measure(model)})
            if self.run is not None:  # every iteration's model is kept: the points of the front
                self.run.save_checkpoint(f"netadapt-iteration{iteration}", {"counts": counts,
                                                                            "model": problem.state(model)})
                self.run.save_checkpoint("netadapt", {"counts": counts, "history": history,
                                                      "model": problem.state(model)})
        fitted = fit_to_budget(problem, counts, target, [l.name for l in problem.layers])
        if fitted != counts:
            model = problem.apply(fitted, model)
        result = self._result(problem, fitted, target, decisions=history, evaluate=False,
                              details={"front": [{k: r[k] for k in r if k != "proposals"} for r in history],
                                       "finished": True})
        result.accuracy, result.model = problem.evaluate(model), model
        if self.run is not None:
            self._plot(problem, history)
        return result

    def _partial(self, problem, counts, target, history, model) -> Allocation:
        result = self._result(problem, counts, target, decisions=history, evaluate=False,
                              details={"finished": False})
        result.model = model
        return result

    def _plot(self, problem, history):
        key = "latency_s" if all("latency_s" in r for r in history) else "cost"
        xs, ys = [r[key] for r in history], [r["accuracy"] for r in history]
        line_plot(self.run.plot_path("netadapt_front.png"), "measured latency (s)" if key == "latency_s"
                  else problem.metric, "validation accuracy (after short fine-tuning)", {"NetAdapt": (xs, ys)},
                  title="NetAdapt: one point per iteration")
        self.run.replace_rows([{k: r[k] for k in r if k != "proposals"} for r in history])
