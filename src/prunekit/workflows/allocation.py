"""A recipe's allocator, end to end: train → allocate → prune → fine-tune → measure.

    recipe.allocator = {name: greedy, budget: 0.5, metric: flops, executor: inprocess,
                        options: {step: 0.05, granularity: channel}}   # granularity: element | channel
    run, allocation = run_allocation(recipe)

Allocation decisions are made on a validation split held out of the training data (the
last `VALIDATION_SHARE` of it, fixed), never on the test set; the dense model trains on
the rest. The run folder gets the dense checkpoint (reused when the same settings run
again), allocation.json, the sensitivity curves / NetAdapt front / AMC learning curve
when the allocator draws them, and one metrics row of the pruned, fine-tuned model.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import TensorDataset

from ..accounting import count_flops, parameter_counts
from ..errors import PrunekitError
from ..recipe import AllocatorSpec, Recipe
from ..runs import RunDir
from ..training import evaluate, resolve_device, train
from .sources import check_fits, dataset_from, fresh_model
from ..allocate.base import Allocator, PruningProblem
from ..allocate.channels import ChannelProblem
from ..allocate.problems import UnstructuredProblem

VALIDATION_SHARE = 0.1


def split_validation(dataset: TensorDataset, share: float = VALIDATION_SHARE) -> tuple[TensorDataset, TensorDataset]:
    """(train, validation): the last `share` of the (already shuffled) training split is validation."""
    x, y = dataset.tensors
    cut = len(x) - max(1, int(round(share * len(x))))
    return TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y[cut:])


def make_allocator(spec: AllocatorSpec, run: RunDir | None = None) -> Allocator:
    """The allocator a recipe's `allocator:` section describes."""
    from ..allocate import ALLOCATORS

    cls = ALLOCATORS[spec.name]
    kwargs = {k: v for k, v in spec.options.items() if k != "granularity"}  # granularity is the problem's
    if spec.name in ("sensitivity", "greedy", "knapsack", "netadapt", "amc"):
        kwargs["executor"] = spec.executor
    if spec.name in ("sensitivity", "netadapt", "amc"):
        kwargs["run"] = run
    try:
        if spec.name == "sensitivity":
            return cls(threshold=spec.threshold, budget=spec.budget, **kwargs)
        return cls(spec.budget, **kwargs)
    except TypeError as e:
        raise PrunekitError(f"allocator '{spec.name}' options {sorted(spec.options)}: {e}") from None


GRANULARITIES = ("element", "channel")


def build_problem(model, val, example, *, metric: str, granularity: str = "element", train_data=None,
                  train_config=None, criterion: str = "magnitude") -> PruningProblem:
    """Unstructured per-layer sparsity ("element") or channel pruning ("channel")."""
    if granularity not in GRANULARITIES:
        raise PrunekitError(f"granularity must be one of {GRANULARITIES}, not {granularity!r}.")
    if granularity == "channel":
        return ChannelProblem(model, val, example, metric=metric, criterion=criterion, train_data=train_data,
                              train_config=train_config)
    if metric == "latency":
        raise PrunekitError("metric 'latency' needs granularity 'channel': unstructured sparsity does not change "
                            "dense latency. Use options: {granularity: channel}, or metric 'flops' / 'params'.")
    return UnstructuredProblem(model, val, example, metric=metric, criterion=criterion,
                               train_data=train_data, train_config=train_config)


def dense_model(recipe: Recipe, run: RunDir, train_data, num_classes: int, progress: bool = True, device=None):
    """The recipe's trained dense model (on `device`), from the run folder when it is already there."""
    model = fresh_model(recipe.model.name, recipe.model.options, num_classes, recipe.seed, device)
    if run.is_done("dense"):
        model.load_state_dict(run.load_checkpoint("dense"))
    else:
        train(model, train_data, recipe.train, progress="dense training" if progress else False)
        run.save_checkpoint("dense", model.state_dict())
        run.mark_done("dense")
    return model


def run_allocation(recipe: Recipe, *, output_dir: str | Path | None = None, progress: bool = True, log=print,
                   device=None):
    """Run (or resume) the recipe's allocator on `device` (default the CPU); returns (RunDir, Allocation)."""
    if recipe.allocator is None:
        raise PrunekitError("the recipe has no allocator section; add e.g. allocator: {name: greedy, budget: 0.5}.")
    device = resolve_device(device)
    dataset = dataset_from(recipe.data.name)  # model and data are checked before the run folder exists
    check_fits(recipe, dataset)
    dataset = dataset.to(device)
    run = RunDir.open(output_dir or recipe.output_dir, recipe.name, recipe.settings())
    train_data, val = split_validation(dataset.train)
    model = dense_model(recipe, run, train_data, dataset.num_classes, progress, device)
    example = dataset.example_input(1)
    spec = recipe.allocator
    problem = build_problem(model, val, example, metric=spec.metric,
                            granularity=spec.options.get("granularity", "element"), train_data=train_data,
                            train_config=recipe.train, criterion=recipe.prune.criterion)
    log(f"Allocating with {spec.name} ({spec.metric} budget {spec.budget}, threshold {spec.threshold})")
    allocation = make_allocator(spec, run).allocate(problem)
    allocation.save(run.path / "allocation.json")
    pruned = allocation.model if allocation.model is not None else problem.apply(allocation.counts)
    if recipe.finetune.steps:
        train(pruned, train_data, recipe.train.for_finetuning(recipe.finetune.lr_factor, recipe.finetune.steps),
              progress="fine-tuning" if progress else False)
    flops = count_flops(pruned, example)
    run.replace_rows([{"allocator": spec.name, "metric": spec.metric, "target": allocation.target,
                       "achieved": allocation.achieved, "met": allocation.met,
                       "val_accuracy_pruned": allocation.accuracy, "test_accuracy": evaluate(pruned, dataset.test)["accuracy"],
                       "sparse_flops": flops["sparse_flops"], "dense_flops": flops["dense_flops"],
                       "nonzero_params": parameter_counts(pruned)["nonzero"],
                       "search_seconds": round(allocation.search_seconds, 3)}])
    run.save_checkpoint("pruned", pruned.state_dict())
    return run, allocation
