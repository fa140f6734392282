"""Declarative recipes: a YAML file → a validated, fully resolved Recipe.

    name: demo
    seed: 0
    data: {name: mnist1d}
    model: {name: mnist1d_cnn}
    train: {optimizer: adam, lr: 0.01, steps: 6000, batch_size: 100}
    prune:
      granularity: element              # … | channel | head | block | "2:4" (see PruneSpec)
      criterion: magnitude
      allocation: global                # uniform | global | sensitivity | greedy | knapsack | netadapt | amc
      schedule: iterative               # iterative (cumulative rounds) | one_shot (each from dense)
      sparsities: [0.5, 0.75, 0.9, 0.95]  # or budgets: [0.5, 0.25] with metric: flops
    finetune: {steps: 1500, lr_factor: 0.1}

The schema is the dataclasses below: their fields are the only keys, their annotations the
types, their defaults the values of omitted keys. A typo gets the closest valid key; a bad
value gets the path of the key and what is allowed. Files are read with yaml.safe_load only.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import PrunekitError, RecipeError, did_you_mean
from .training import TrainConfig

SCHEDULES = ("iterative", "one_shot")


@dataclass(frozen=True)
class DataSpec:
    name: str = "mnist1d"


@dataclass(frozen=True)
class ModelSpec:
    name: str = "mnist1d_cnn"
    options: dict = field(default_factory=dict)


DEFAULT_SPARSITIES = (0.5, 0.75, 0.9, 0.95)
BUDGET_METRICS = ("params", "flops", "latency")


@dataclass(frozen=True)
class PruneSpec:
    """One prunekit.Pruner per round: what a unit is, how it is scored, how many go where.

    Targets, one list (a round each): `sparsities` — the fraction of units removed — or
    `budgets` — the fraction of `metric` (params | flops | latency) kept.
    """
    granularity: str = "element"        # element | kernel_row | kernel_col | kernel | in_channel | out_channel |
                                        # neuron | channel | head | group | block | N:M such as "2:4"
    criterion: str = "magnitude"
    criterion_options: dict = field(default_factory=dict)
    calibration_batches: int = 8        # training batches given to data-aware criteria and block scores
    allocation: str = "global"          # uniform | global | sensitivity | greedy | knapsack | netadapt | amc
    allocation_options: dict = field(default_factory=dict)
    schedule: str = "iterative"         # iterative: rounds build on each other | one_shot: each from dense
    sparsities: tuple[float, ...] | None = None
    budgets: tuple[float, ...] | None = None
    metric: str = "flops"               # what budgets count
    how: str = "l2"                     # how element scores add up over a unit: l1 | l2 | lp | sum | mean | max
    round_to: int = 1                   # graph groups keep a multiple of this many units

    def __post_init__(self):
        from .allocate import ALLOCATORS
        from .criteria import get_criterion
        from .granularity import AGGREGATIONS
        from .pruner import GRANULARITIES, nm_pattern

        if self.granularity not in GRANULARITIES[:-1] and nm_pattern(self.granularity) is None:
            raise PrunekitError(f"unknown granularity '{self.granularity}'."
                                f"{did_you_mean(self.granularity, GRANULARITIES)} Known: "
                                f"{', '.join(GRANULARITIES[:-1])}, or N:M such as '2:4'.")
        get_criterion(self.criterion, **self.criterion_options)  # unknown names and options are refused here
        if self.allocation not in ALLOCATORS:
            raise PrunekitError(f"unknown allocation '{self.allocation}'.{did_you_mean(self.allocation, ALLOCATORS)} "
                                f"Known: {', '.join(ALLOCATORS)}.")
        if self.schedule not in SCHEDULES:
            raise PrunekitError(f"schedule must be one of {SCHEDULES}.{did_you_mean(self.schedule, SCHEDULES)}")
        if self.how not in AGGREGATIONS:
            raise PrunekitError(f"how must be one of {AGGREGATIONS}.{did_you_mean(self.how, AGGREGATIONS)}")
        if self.round_to < 1 or self.calibration_batches < 1:
            raise PrunekitError("round_to and calibration_batches must be ≥ 1.")
        if self.metric not in BUDGET_METRICS:
            raise PrunekitError(f"metric must be one of {BUDGET_METRICS}.{did_you_mean(self.metric, BUDGET_METRICS)}")
        if self.sparsities is not None and self.budgets is not None:
            raise PrunekitError("give either sparsities (fractions of units removed) or budgets (fractions of "
                                "the metric kept), not both.")
        if self.sparsities is None and self.budgets is None:
            object.__setattr__(self, "sparsities", DEFAULT_SPARSITIES)
        targets = self.targets
        if not targets:
            raise PrunekitError("list at least one target, e.g. sparsities: [0.5, 0.9].")
        if self.sparsities is not None and any(not 0 <= s < 1 for s in targets):
            raise PrunekitError(f"every sparsity must be in [0, 1); got {list(targets)}.")
        if self.budgets is not None and any(not 0 < b <= 1 for b in targets):
            raise PrunekitError(f"every budget is a fraction of the dense {self.metric} kept, in (0, 1]; "
                                f"got {list(targets)}.")
        shrinking = sorted(targets) if self.sparsities is not None else sorted(targets, reverse=True)
        if self.schedule == "iterative" and list(targets) != shrinking:
            raise PrunekitError("iterative rounds must prune more each time (masks only shrink): sparsities "
                                f"increase, budgets decrease; got {list(targets)}.")
        nm = nm_pattern(self.granularity)
        if nm is not None and self.sparsities is not None and list(self.sparsities) != [1 - nm[0] / nm[1]]:
            raise PrunekitError(f"granularity {self.granularity} fixes the sparsity at {1 - nm[0] / nm[1]}: "
                                f"write sparsities: [{1 - nm[0] / nm[1]}].")

    @property
    def targets(self) -> tuple[float, ...]:
        return tuple(self.sparsities if self.sparsities is not None else self.budgets)


@dataclass(frozen=True)
class FinetuneSpec:
    steps: int = 1500
    lr_factor: float = 0.1

    def __post_init__(self):
        if self.steps < 0:
            raise PrunekitError("steps must be ≥ 0 (0 = no fine-tuning).")
        if not 0 < self.lr_factor <= 1:
            raise PrunekitError("lr_factor must be in (0, 1]; 0.1 = a tenth of the training learning rate.")


@dataclass(frozen=True)
class AllocatorSpec:
    """How much to prune where (prunekit.allocate): an allocator, its budget and options."""
    name: str = "uniform"
    budget: float | None = 0.5          # fraction of the dense cost (≤ 1) or an absolute cost
    metric: str = "flops"               # params | flops | latency
    threshold: float | None = None      # sensitivity: accepted accuracy drop (instead of a budget)
    executor: str = "inprocess"         # inprocess | ray
    options: dict = field(default_factory=dict)  # keyword arguments of the allocator

    def __post_init__(self):
        from .allocate import ALLOCATORS
        from .allocate.executor import EXECUTORS

        if self.name not in ALLOCATORS:
            raise PrunekitError(f"unknown allocator '{self.name}'.{did_you_mean(self.name, ALLOCATORS)} "
                                f"Known: {', '.join(ALLOCATORS)}.")
        if self.executor not in EXECUTORS:
            raise PrunekitError(f"executor must be one of {EXECUTORS}.{did_you_mean(self.executor, EXECUTORS)}")
        if self.metric not in ("params", "flops", "latency"):
            raise PrunekitError("metric must be params, flops or latency.")
        if self.threshold is not None and (self.name != "sensitivity" or self.budget is not None):
            raise PrunekitError("threshold (an accepted accuracy drop) is for the sensitivity allocator, "
                                "with budget: null.")
        if self.threshold is None and (self.budget is None or self.budget <= 0):
            raise PrunekitError("budget must be a positive fraction of the dense cost (e.g. 0.5) or an absolute cost.")


@dataclass(frozen=True)
class Recipe:
    name: str = "run"
    seed: int = 0
    output_dir: str = "runs"
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneSpec = field(default_factory=PruneSpec)
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec)
    allocator: AllocatorSpec | None = None

    def to_dict(self) -> dict:
        return plain_data(dataclasses.asdict(self))

    def settings(self) -> dict:
        """What determines the results (hashed into the run folder's name): all but output_dir."""
        # allocator left out when unset, so recipes without one keep their run folders' hashes
        return {k: v for k, v in self.to_dict().items()
                if k != "output_dir" and not (k == "allocator" and v is None)}


def plain_data(value):
    """Tuples → lists, recursively: what YAML and JSON write (dataclasses.asdict output in, plain data out)."""
    if isinstance(value, dict):
        return {k: plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v) for v in value]
    return value


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _convert(value, tp, where: str):
    """Check `value` against annotation `tp`; return it converted (lists → tuples etc.)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        if len([o for o in options if o is not type(None)]) == 1:  # X | None: X's own message
            return _convert(value, next(o for o in options if o is not type(None)), where)
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, where)
            except RecipeError:
                continue
        raise RecipeError(f"{where}: expected {' or '.join(_type_name(o) for o in options)}, got {value!r}.")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{where}: expected a list, got {value!r}.")
        item = typing.get_args(tp)[0]
        return tuple(_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a mapping, got {value!r}.")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{where}: expected a number, got {value!r}.")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{where}: expected an integer, got {value!r}.")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{where}: expected true or false, got {value!r}.")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise RecipeError(f"{where}: expected a string, got {value!r}.")
        return value
    raise RecipeError(f"{where}: unsupported schema type {tp!r}.")


def _build(cls, data, where: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{where or 'recipe'}: expected a mapping of keys, got {data!r}.")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise RecipeError(f"{where + '.' if where else ''}{key}: unknown key.{did_you_mean(key, known)} "
                              f"Valid keys here: {', '.join(sorted(known))}.")
    values = {k: _convert(v, hints[k], f"{where + '.' if where else ''}{k}") for k, v in data.items()}
    try:
        return cls(**values)
    except PrunekitError as e:
        if isinstance(e, RecipeError):
            raise
        raise RecipeError(f"{where or 'recipe'}: {e}") from None


def recipe_from_dict(data: dict) -> Recipe:
    return _build(Recipe, data, "")


def load_recipe(path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"Recipe file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(f"{path} is not valid YAML: {e}") from None
    return recipe_from_dict(data or {})


def bundled_recipe(name: str) -> Path:
    """Path of a recipe shipped inside the package (prunekit/recipes/<name>.yaml)."""
    path = Path(__file__).parent / "recipes" / f"{name}.yaml"
    if not path.is_file():
        raise RecipeError(f"No bundled recipe '{name}'.")
    return path
