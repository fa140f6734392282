"""What every allocator works on (a pruning problem) and what it returns (an Allocation).

A *pruning problem* is everything an allocator needs to know and nothing more:

  * `layers`: the prunable layers (or groups), each with a number of units (weights,
    channels, heads) of which at most `max_units` may go;
  * `cost(counts)`: the cost of the model when `counts[name]` units of each layer are pruned,
    in one metric (non-zero parameters, FLOPs or predicted latency). It must not increase
    when a count grows, and must be cheap: allocators call it thousands of times;
  * `apply(counts, model=None)`: a pruned copy of the model (the user's model is untouched);
  * `evaluate(model)`: accuracy on validation data.

Allocators are written against this interface only, so one allocator serves unstructured
per-layer sparsity, channel pruning, or any synthetic problem a test builds.

Budgets. A target is either a fraction of the dense cost (0 < f ≤ 1) or an absolute cost
(> 1). Pruning comes in whole units, so a budget is met "to within one unit":
    0 ≤ target − achieved ≤ tolerance,  tolerance = the largest cost one unit saves,
which `fit_to_budget` guarantees by pruning more where over, then giving units back where
a single unit still fits.
"""

from __future__ import annotations

import copy
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from ..errors import PrunekitError
from ..masks import apply_masks
from ..training import TrainConfig, evaluate, train


@dataclass(frozen=True)
class Layer:
    """One prunable layer or group: `units` in all, of which at most `max_units` may be pruned."""

    name: str
    units: int
    max_units: int

    def __post_init__(self):
        if self.units < 1 or not 0 <= self.max_units <= self.units:
            raise PrunekitError(f"layer '{self.name}': need units ≥ 1 and 0 ≤ max_units ≤ units, "
                                f"got units={self.units}, max_units={self.max_units}.")


class PruningProblem(ABC):
    """The interface allocators see. Subclasses set `metric` and `layers`."""

    metric: str = "cost"
    layers: list[Layer]

    @abstractmethod
    def cost(self, counts: Mapping[str, int]) -> float:
        """Cost with counts[name] units pruned per layer (absent names: 0)."""

    @abstractmethod
    def apply(self, counts: Mapping[str, int], model: nn.Module | None = None) -> nn.Module:
        """A pruned copy of `model` (default: the problem's model)."""

    @abstractmethod
    def evaluate(self, model: nn.Module) -> float:
        """Validation accuracy of `model`."""

    # Optional capabilities ----------------------------------------------------------------
    @property
    def has_validation(self) -> bool:
        """Whether `evaluate` can measure accuracy (allocators that search need it)."""
        return True

    def verify(self, masks) -> None:
        """Raise a prunekit error if installing `masks` would not do what the problem promises."""

    def finetune(self, model: nn.Module, steps: int, seed: int = 0) -> nn.Module:
        """Train `model` briefly in place (masks hold); problems without data cannot."""
        raise PrunekitError(f"{type(self).__name__} cannot fine-tune; give it training data.")

    def state(self, model) -> dict:
        """What to checkpoint of a pruned model from `apply` (its state_dict)."""
        return model.state_dict()

    def restore(self, counts: Mapping[str, int], state: dict):
        """Rebuild the model `state` was taken from: apply(counts), then load the weights."""
        model = self.apply(counts)
        model.load_state_dict(state)
        return model

    def measure(self, model) -> dict:
        """Extra measurements of a pruned model (e.g. measured latency); none by default."""
        return {}

    def unit_scores(self, name: str):
        """Scores of a layer's units in pruning order (ascending); needed by the global threshold."""
        raise PrunekitError(f"{type(self).__name__} has no unit scores; the global threshold needs them.")

    def features(self, name: str) -> list[float]:
        """Static description of a layer for AMC's state (default: its unit count)."""
        return [float(self.layer(name).units)]

    # Derived ------------------------------------------------------------------------------
    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise PrunekitError(f"no prunable layer '{name}'; known: {', '.join(l.name for l in self.layers)}.")

    def full(self, counts: Mapping[str, int] | None = None) -> dict[str, int]:
        counts = counts or {}
        unknown = set(counts) - {l.name for l in self.layers}
        if unknown:
            raise PrunekitError(f"counts name unknown layers {sorted(unknown)}.")
        return {l.name: int(counts.get(l.name, 0)) for l in self.layers}

    def dense_cost(self) -> float:
        return self.cost({})

    def min_cost(self) -> float:
        return self.cost(self.max_counts())

    def max_counts(self) -> dict[str, int]:
        return {l.name: l.max_units for l in self.layers}

    def counts_for(self, ratios: Mapping[str, float]) -> dict[str, int]:
        """Ratios → unit counts, rounded and clipped to what each layer allows."""
        out = {}
        for l in self.layers:
            r = float(ratios.get(l.name, 0.0))
            if not 0.0 <= r <= 1.0:
                raise PrunekitError(f"ratio {r} for '{l.name}' is outside [0, 1].")
            out[l.name] = min(l.max_units, int(round(r * l.units)))
        return out

    def ratios_for(self, counts: Mapping[str, int]) -> dict[str, float]:
        return {l.name: counts.get(l.name, 0) / l.units for l in self.layers}

    def unit_saving(self, name: str, counts: Mapping[str, int] | None = None) -> float:
        """Cost saved by pruning one more unit of `name` from `counts` (default: dense)."""
        counts = self.full(counts)
        if counts[name] >= self.layer(name).max_units:
            return 0.0
        return self.cost(counts) - self.cost({**counts, name: counts[name] + 1})

    def tolerance(self, counts: Mapping[str, int] | None = None) -> float:
        """The budget slack allowed: the largest cost one unit saves, at the dense model and, given
        `counts`, at that allocation too (one unit of a measured-latency cost need not save the
        same everywhere, so "within one unit" is judged where the allocation ended)."""
        states = [self.full(None)] + ([self.full(counts)] if counts is not None else [])
        return max((self.unit_saving(l.name, c) for c in states for l in self.layers), default=0.0)

    def accuracy(self, counts: Mapping[str, int]) -> float:
        return self.evaluate(self.apply(counts))


class ModelProblem(PruningProblem):
    """A problem over a real model: accuracy is measured on `self.val`, and fine-tuning (when
    `self.train_data` is given) trains with `self.train_config` at its fine-tuning learning rate."""

    model: nn.Module
    val: object
    train_data: object = None
    train_config: TrainConfig

    @property
    def has_validation(self) -> bool:
        return self.val is not None

    def evaluate(self, model: nn.Module) -> float:
        if self.val is None:
            raise PrunekitError("This allocator measures accuracy while it searches: pass validation data "
                                "(val=, e.g. a DataLoader or TensorDataset of (x, y)).")
        return evaluate(model, self.val)["accuracy"]

    def finetune(self, model: nn.Module, steps: int, seed: int = 0) -> nn.Module:
        if self.train_data is None:
            return super().finetune(model, steps, seed)
        if steps > 0:
            train(model, self.train_data, self.train_config.for_finetuning(steps=steps, seed=seed), progress=False)
        return model


class MaskedModelProblem(ModelProblem):
    """Pruning installs `self.masks(counts)` on a copy of the model. Subclasses define `masks` and costs."""

    @abstractmethod
    def masks(self, counts: Mapping[str, int]) -> dict:
        """Keep-masks (parameter name → bool tensor) for `counts` units pruned per layer."""

    def apply(self, counts: Mapping[str, int], model: nn.Module | None = None) -> nn.Module:
        counts = self.full(counts)
        pruned = copy.deepcopy(model if model is not None else self.model)
        apply_masks(pruned, self.masks(counts))
        return pruned


def resolve_target(problem: PruningProblem, budget: float) -> float:
    """A budget (fraction of the dense cost if ≤ 1, else absolute) → absolute cost, checked."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0:
        raise PrunekitError(f"budget must be a positive number: a fraction of the dense {problem.metric} "
                            f"(e.g. 0.5) or an absolute {problem.metric}; got {budget!r}.")
    dense = problem.dense_cost()
    target = float(budget) * dense if budget <= 1 else float(budget)
    floor = problem.min_cost()
    if target < floor:
        raise PrunekitError(f"budget {budget} ({target:.6g} {problem.metric}) is below what the prunable layers "
                            f"allow: pruning every layer to its maximum still costs {floor:.6g} "
                            f"({floor / dense:.4f} of dense). Raise the budget or make more layers prunable.")
    return target


def smallest_count(problem, counts, name, lo, hi, target) -> int:
    """Smallest k in [lo, hi] with cost(counts | name=k) ≤ target (cost is non-increasing in k)."""
    while lo < hi:
        mid = (lo + hi) // 2
        if problem.cost({**counts, name: mid}) <= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def fit_to_budget(problem: PruningProblem, counts: Mapping[str, int], target: float,
                  prefer: Sequence[str] | None = None) -> dict[str, int]:
    """Adjust counts so that 0 ≤ target − cost ≤ one unit.

    Over budget: prune more, layer by layer in `prefer` order (most prunable first). Then
    give units back in reverse order while they fit: after that, restoring a single unit in
    any pruned layer would exceed the target, so the slack is below one unit's saving.
    """
    counts = problem.full(counts)
    order = list(prefer) if prefer is not None else [l.name for l in problem.layers]
    order += [l.name for l in problem.layers if l.name not in order]
    for name in order:
        if problem.cost(counts) <= target:
            break
        top = problem.layer(name).max_units
        counts[name] = smallest_count(problem, counts, name, counts[name], top, target)
    if problem.cost(counts) > target:
        raise PrunekitError(f"cannot reach {target:.6g} {problem.metric}: the minimum is {problem.min_cost():.6g}.")
    for name in reversed(order):
        if counts[name]:
            counts[name] = smallest_count(problem, counts, name, 0, counts[name], target)
    return counts


@dataclass
class Allocation:
    """Per-layer decision of an allocator, with how well it met its budget and how it decided."""

    method: str
    metric: str
    counts: dict[str, int]
    ratios: dict[str, float]
    dense: float
    achieved: float
    target: float | None = None
    tolerance: float = 0.0
    accuracy: float | None = None  # validation accuracy of the pruned model, before any fine-tuning
    search_seconds: float = 0.0
    decisions: list[dict] = field(default_factory=list)  # the steps that led here
    details: dict = field(default_factory=dict)
    model: object = field(default=None, repr=False, compare=False)  # the searched model, when a search trains one

    @property
    def met(self) -> bool:
        """True when no target was set, or 0 ≤ target − achieved ≤ tolerance."""
        if self.target is None:
            return True
        return 0 <= self.target - self.achieved <= self.tolerance + 1e-9 * max(1.0, abs(self.target))

    def summary(self) -> dict:
        return {"method": self.method, "metric": self.metric, "target": self.target, "achieved": self.achieved,
                "fraction_of_dense": self.achieved / self.dense if self.dense else None,
                "tolerance": self.tolerance, "met": self.met, "accuracy": self.accuracy,
                "search_seconds": round(self.search_seconds, 3)}

    def to_dict(self) -> dict:
        out = {f: getattr(self, f) for f in self.__dataclass_fields__ if f != "model"}
        return {**json.loads(json.dumps(out, default=float)), "met": self.met}

    def save(self, path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2, default=float))
        return path


class Allocator(ABC):
    """Decides how many units each layer loses. Subclasses implement `_allocate`."""

    name: str = "allocator"

    def allocate(self, problem: PruningProblem, **kwargs) -> Allocation:
        start = time.perf_counter()
        result = self._allocate(problem, **kwargs)
        result.search_seconds = time.perf_counter() - start
        return result

    @abstractmethod
    def _allocate(self, problem: PruningProblem, **kwargs) -> Allocation:
        ...

    def _result(self, problem: PruningProblem, counts: Mapping[str, int], target: float | None, *,
                decisions=None, details=None, evaluate: bool = True) -> Allocation:
        return allocation_of(problem, counts, self.name, target, decisions=decisions, details=details,
                             evaluate=evaluate)


def allocation_of(problem: PruningProblem, counts: Mapping[str, int], method: str, target: float | None = None, *,
                  decisions=None, details=None, evaluate: bool = True) -> Allocation:
    """The Allocation record of `counts` on `problem` (accuracy measured when validation data exists)."""
    counts = problem.full(counts)
    return Allocation(method=method, metric=problem.metric, counts=counts,
                      ratios=problem.ratios_for(counts), dense=problem.dense_cost(),
                      achieved=problem.cost(counts), target=target, tolerance=problem.tolerance(counts),
                      accuracy=problem.accuracy(counts) if evaluate and problem.has_validation else None,
                      decisions=list(decisions or []), details=dict(details or {}))
