"""Allocators meet their budgets to within one unit, on a table problem and a real model."""

import copy
import random

import pytest
import torch

from prunekit.accounting import count_flops, parameter_counts
from prunekit.allocate import (GlobalThresholdAllocator, GreedyAllocator, KnapsackAllocator, SensitivityAllocator,
                               TableProblem, UniformAllocator, UnstructuredProblem, knapsack_bruteforce,
                               knapsack_dp, knapsack_greedy, sensitivity_curves)
from prunekit.errors import PrunekitError
from prunekit.masks import get_masks
from prunekit.prune import prune
from prunekit.training import evaluate


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(digits_mlp):
    model, data, _ = digits_mlp
    return model, data


def table_problem():
    units = {"a": 40, "b": 25, "c": 60}
    cost = {"a": 3.0, "b": 7.0, "c": 1.0}
    curves = {"a": [(0.5, 0.01), (0.9, 0.3)], "b": [(0.5, 0.05), (0.9, 0.2)], "c": [(0.5, 0.0), (0.9, 0.02)]}
    return TableProblem(units, cost, curves, fixed=10.0, max_ratio=0.9)


def budget_allocators(budget):
    return [UniformAllocator(budget), SensitivityAllocator(budget=budget), GreedyAllocator(budget),
            KnapsackAllocator(budget), KnapsackAllocator(budget, solver="greedy")]


@pytest.mark.parametrize("budget", [0.3, 0.5, 0.77, 201.0])
def test_table_problem_budgets_met_within_one_unit(budget):
    problem = table_problem()
    for allocator in budget_allocators(budget):
        result = allocator.allocate(problem)
        target = budget * problem.dense_cost() if budget <= 1 else budget
        assert result.target == pytest.approx(target)
        assert result.achieved == problem.cost(result.counts)
        assert 0 <= target - result.achieved <= problem.tolerance() == 7.0, allocator.name
        assert result.met


@pytest.mark.parametrize("metric,budget", [("flops", 0.5), ("params", 0.35)])
def test_real_model_budgets_met_and_costs_match_accounting(trained, metric, budget):
    model, data = trained
    before = copy.deepcopy(model.state_dict())
    example = data.example_input(1)
    problem = UnstructuredProblem(model, data.test, example, metric=metric)
    for allocator in [UniformAllocator(budget), GlobalThresholdAllocator(budget), GreedyAllocator(budget, step=0.1),
                      SensitivityAllocator(budget=budget, ratios=(0.3, 0.6, 0.9)),
                      KnapsackAllocator(budget, ratios=(0.3, 0.6, 0.9))]:
        result = allocator.allocate(problem)
        assert result.met, (allocator.name, result.summary())
        pruned = problem.apply(result.counts)
        # independent count of the pruned model's cost
        truth = (count_flops(pruned, example)["sparse_flops"] if metric == "flops"
                 else parameter_counts(pruned)["nonzero"])
        assert result.achieved == truth
        assert 0 <= result.target - truth <= problem.tolerance()
        assert result.accuracy == evaluate(pruned, data.test)["accuracy"]
    # the user's model is untouched
    assert not get_masks(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_global_threshold_equals_global_magnitude_pruning(trained):
    model, data = trained
    problem = UnstructuredProblem(model, data.test, data.example_input(1), metric="params")
    result = GlobalThresholdAllocator(0.4).allocate(problem)
    reference = copy.deepcopy(model)
    masks = prune(reference, result.details["units_pruned"], scope="global")
    for name, mask in masks.items():
        assert int((~mask).sum()) == result.counts[name]


def test_impossible_budgets_raise(trained):
    model, data = trained
    problem = UnstructuredProblem(model, data.test, data.example_input(1), metric="flops")
    for allocator in budget_allocators(0.001) + [GlobalThresholdAllocator(0.001)]:
        with pytest.raises(PrunekitError, match="below what the prunable layers allow"):
            allocator.allocate(problem)
    with pytest.raises(PrunekitError):
        UniformAllocator(-0.5).allocate(problem)
    with pytest.raises(PrunekitError):
        UnstructuredProblem(model, data.test, data.example_input(1), metric="latency")


def _random_instance(rng, n_groups, n_options):
    groups = [[(round(rng.uniform(-5, 5), 3), rng.randint(0, 9)) for _ in range(rng.randint(1, n_options))]
              for _ in range(n_groups)]
    capacity = sum(min(w for _, w in g) for g in groups) + rng.randint(0, 15)
    return groups, capacity


def test_knapsack_dp_equals_bruteforce_and_greedy_never_beats_it():
    rng = random.Random(0)
    for trial in range(200):
        groups, capacity = _random_instance(rng, rng.randint(1, 5), 4)
        if trial % 2:  # 0/1 knapsack: take an item or not
            groups = [[(0.0, 0), (abs(v), w)] for v, w in (g[0] for g in groups)]
        dp_value, dp_choice = knapsack_dp(groups, capacity)
        bf_value, _ = knapsack_bruteforce(groups, capacity)
        assert dp_value == pytest.approx(bf_value)
        assert sum(groups[g][i][1] for g, i in enumerate(dp_choice)) <= capacity
        assert sum(groups[g][i][0] for g, i in enumerate(dp_choice)) == pytest.approx(dp_value)
        gr_value, gr_choice = knapsack_greedy(groups, capacity)
        assert sum(groups[g][i][1] for g, i in enumerate(gr_choice)) <= capacity
        assert gr_value <= dp_value + 1e-9


def test_knapsack_greedy_gap_is_reported_and_real():
    # value/weight greedy takes the dense small item and then cannot fit the big one
    groups = [[(0.0, 0), (3.0, 2)], [(0.0, 0), (5.0, 5)]]
    dp, _ = knapsack_dp(groups, 5)
    gr, _ = knapsack_greedy(groups, 5)
    assert (dp, gr) == (5.0, 3.0)
    result = KnapsackAllocator(0.5).allocate(table_problem())
    assert result.details["greedy_gap"] == pytest.approx(result.details["dp_value"] - result.details["greedy_value"])
    assert result.details["greedy_gap"] >= 0


def test_sensitivity_curves_equal_direct_evaluation(trained):
    model, data = trained
    problem = UnstructuredProblem(model, data.test, data.example_input(1), metric="flops")
    curves = sensitivity_curves(problem, (0.25, 0.5, 0.9))
    assert curves.baseline == evaluate(model, data.test)["accuracy"]
    for name, points in curves.curves.items():
        for ratio, accuracy in points:
            direct = copy.deepcopy(model)
            prune(direct, ratio, scope="local", params=[name])  # only this layer, by prunekit.prune itself
            assert accuracy == evaluate(direct, data.test)["accuracy"]


def test_sensitivity_ratios_never_decrease_with_threshold(trained):
    model, data = trained
    problem = UnstructuredProblem(model, data.test, data.example_input(1), metric="flops")
    curves = sensitivity_curves(problem)
    previous = None
    for t in [i / 200 for i in range(0, 101)]:
        ratios = curves.ratios(t)
        if previous:
            assert all(ratios[n] >= previous[n] for n in ratios)
        for n, r in ratios.items():  # every grid point up to r is within the accepted drop
            assert all(d <= t for rr, d in curves.drop(n) if rr <= r)
        previous = ratios
    result = SensitivityAllocator(threshold=0.02, curves=curves).allocate(problem)
    assert result.ratios == pytest.approx({n: problem.counts_for(curves.ratios(0.02))[n] / problem.layer(n).units
                                           for n in curves.curves})


def test_same_inputs_same_allocation(trained):
    model, data = trained
    problem = UnstructuredProblem(model, data.test, data.example_input(1), metric="flops")
    a = GreedyAllocator(0.5, step=0.1).allocate(problem)
    b = GreedyAllocator(0.5, step=0.1).allocate(problem)
    assert a.counts == b.counts and a.accuracy == b.accuracy
