"""How much to prune where: allocators over a pruning problem.

    problem = UnstructuredProblem(model, data.test, example, metric="flops")
    result = GreedyAllocator(budget=0.5).allocate(problem)      # 50 % of the dense FLOPs
    result.counts, result.ratios, result.achieved, result.met, result.decisions

Allocators: uniform, global (threshold), sensitivity, greedy, knapsack (DP or greedy),
netadapt, amc. Each meets its budget to within one unit and says so (Allocation.met).
"""

from .amc import AMC
from .base import Allocation, Allocator, Layer, PruningProblem, fit_to_budget, resolve_target
from .channels import ChannelProblem
from .executor import get_executor
from .greedy import GreedyAllocator
from .latency import LatencyTable, layer_widths, measure_latency
from .netadapt import NetAdapt
from .knapsack import KnapsackAllocator, knapsack_bruteforce, knapsack_dp, knapsack_greedy
from .problems import TableProblem, UnstructuredProblem
from .ranks import RankProblem
from .sensitivity import SensitivityAllocator, SensitivityCurves, sensitivity_curves
from .uniform import GlobalThresholdAllocator, UniformAllocator

ALLOCATORS = {
    "uniform": UniformAllocator,
    "global": GlobalThresholdAllocator,
    "sensitivity": SensitivityAllocator,
    "greedy": GreedyAllocator,
    "knapsack": KnapsackAllocator,
    "netadapt": NetAdapt,
    "amc": AMC,
}

__all__ = ["ALLOCATORS", "AMC", "ChannelProblem", "LatencyTable", "NetAdapt", "layer_widths", "measure_latency", "Allocation", "Allocator", "GlobalThresholdAllocator", "GreedyAllocator",
           "KnapsackAllocator", "Layer", "PruningProblem", "RankProblem", "SensitivityAllocator", "SensitivityCurves",
           "TableProblem", "UniformAllocator", "UnstructuredProblem", "fit_to_budget", "get_executor",
           "knapsack_bruteforce", "knapsack_dp", "knapsack_greedy", "resolve_target", "sensitivity_curves"]
