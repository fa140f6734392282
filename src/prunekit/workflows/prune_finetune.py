"""Train → prune → fine-tune, round by round, from a Recipe; writes a run folder.

Round 0 is the dense model. Each later round runs one prunekit.Pruner step to the recipe's
next target (granularity, criterion, allocation — see prunekit.recipe.PruneSpec) and
fine-tunes at lr × lr_factor:
  * schedule "iterative": round r starts from round r−1's pruned model (masks only shrink);
  * schedule "one_shot":  every round starts from the dense model.
Every round is checkpointed with the RNG states and marked done, so re-running the same recipe
resumes where a killed run stopped and ends with bit-identical results (dropout included).
Everything the recipe names — data, model, options, criterion — is built before the run folder
is created: a bad value writes nothing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from ..accounting import count_flops, parameter_counts, sparsity_table
from ..masks import get_masks, load_masked_state_dict, resolve_parameters
from ..plots import grouped_bars, line_plot
from ..pruner import Pruner
from ..recipe import PruneSpec, Recipe
from ..report import Report
from ..runs import RunDir
from ..table import format_table
from ..training import evaluate, finetune, train
from .allocation import split_validation
from .sources import check_fits, dataset_from, fresh_model

ROUND_COLUMNS = ["round", "target_sparsity", "sparsity", "accuracy_pruned", "accuracy", "test_loss",
                 "nonzero_params", "total_params", "dense_flops", "sparse_flops", "dense_bytes", "compressed_bytes"]


def _fresh_model(recipe: Recipe, num_classes: int):
    return fresh_model(recipe.model.name, recipe.model.options, num_classes, recipe.seed)


def make_pruner(model, spec: PruneSpec, target: float, *, example, calibration, val=None, train_data=None,
                train_config=None, run=None) -> Pruner:
    """The Pruner of one round of `spec`: prune to `target` (a sparsity, or a budget of spec.metric)."""
    from ..criteria import get_criterion

    options = dict(spec.allocation_options)
    if run is not None and spec.allocation in ("sensitivity", "netadapt", "amc"):
        options.setdefault("run", run)  # their searches checkpoint and plot into the run folder
    nm = spec.granularity if ":" in spec.granularity else None
    target_kwargs = {} if nm else ({"sparsity": target} if spec.sparsities is not None
                                   else {"budget": {spec.metric: target}})
    return Pruner(model, example, granularity=spec.granularity,
                  criterion=get_criterion(spec.criterion, **spec.criterion_options),
                  allocation=spec.allocation, allocation_options=options, how=spec.how, round_to=spec.round_to,
                  batches=calibration, loss_fn=F.cross_entropy, val=val, train_data=train_data,
                  train_config=train_config, **target_kwargs)


def calibration_batches(dataset, spec: PruneSpec, batch_size: int) -> list:
    x, y = dataset.train.tensors
    return list(zip(x.split(batch_size), y.split(batch_size)))[:spec.calibration_batches]


def _measure(model, dataset, example, prunable: list[str]) -> dict:
    metrics = evaluate(model, dataset.test)
    params = parameter_counts(model)
    flops = count_flops(model, example)
    selected = sparsity_table(model, prunable)["total"]
    return {"sparsity": round(selected["sparsity"], 6), "accuracy": metrics["accuracy"],
            "test_loss": round(metrics["loss"], 6), "nonzero_params": params["nonzero"],
            "total_params": params["total"], "dense_flops": flops["dense_flops"], "sparse_flops": flops["sparse_flops"],
            "dense_bytes": params["dense_bytes"], "compressed_bytes": params["compressed_bytes"]}


def run_recipe(recipe: Recipe, *, output_dir: str | Path | None = None, progress: bool = True,
               log=print) -> RunDir:
    """Run (or resume) `recipe`; returns the RunDir holding metrics, checkpoints, plots and report.

    The run draws dropout and other randomness from torch's generator seeded with recipe.seed, in
    a forked state: the same recipe gives the same results whatever the caller did before, and
    the caller's generator is where it was afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        return _run_rounds(recipe, output_dir, progress, log)


def _run_rounds(recipe: Recipe, output_dir, progress: bool, log) -> RunDir:
    dataset = dataset_from(recipe.data.name)  # everything the recipe names is built before any file is written
    check_fits(recipe, dataset)
    example = dataset.example_input(2)
    model = _fresh_model(recipe, dataset.num_classes)
    prunable = list(resolve_parameters(model))
    calibration = calibration_batches(dataset, recipe.prune, recipe.train.batch_size)
    make_pruner(model, recipe.prune, recipe.prune.targets[0], example=example, calibration=calibration)  # validates
    run = RunDir.open(output_dir or recipe.output_dir, recipe.name, recipe.settings())
    (run.path / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))

    if run.is_done("round0"):
        model.load_state_dict(run.load_checkpoint("round0", restore_rng=True))
    else:
        log(f"Training {recipe.model.name} on {recipe.data.name} for {recipe.train.steps} steps")
        train(model, dataset.train, recipe.train, progress="dense training" if progress else False)
        run.save_checkpoint("round0", model.state_dict())
        run.replace_rows([{"round": 0, "target_sparsity": 0.0, "accuracy_pruned": None,
                           **_measure(model, dataset, example, prunable)}])
        run.mark_done("round0")
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    log(format_table(run.rows()[:1], ROUND_COLUMNS))

    for r, target in enumerate(recipe.prune.targets, start=1):
        tag = f"round{r}"
        if run.is_done(tag):
            model = _fresh_model(recipe, dataset.num_classes)
            load_masked_state_dict(model, run.load_checkpoint(tag, restore_rng=True))
            log(f"round {r}: finished earlier, loaded from {run.checkpoint_path(tag)}")
            continue
        run.replace_rows([row for row in run.rows() if row["round"] < r])  # drop a killed round's leftovers
        if recipe.prune.schedule == "one_shot":
            model = _fresh_model(recipe, dataset.num_classes)
            model.load_state_dict(dense_state)
        make_pruner(model, recipe.prune, target, example=example, calibration=calibration, val=split_validation(dataset.train)[1],
                    train_data=dataset.train, train_config=recipe.train, run=run).step()
        pruned_accuracy = evaluate(model, dataset.test)["accuracy"]
        if recipe.finetune.steps:
            config = dataclasses.replace(recipe.train, seed=recipe.train.seed + r)
            finetune(model, dataset.train, config, lr_factor=recipe.finetune.lr_factor, steps=recipe.finetune.steps,
                     progress=f"fine-tune @ {target:.0%}" if progress else False)
        row = {"round": r, "target_sparsity": target, "accuracy_pruned": pruned_accuracy,
               **_measure(model, dataset, example, prunable)}
        run.save_checkpoint(tag, model.state_dict())
        run.write_json(f"layers_{tag}.json", sparsity_table(model, prunable)["layers"])
        run.record(row)
        run.mark_done(tag)
        log(format_table([row], ROUND_COLUMNS))

    write_report(run, recipe, prunable)
    masks = get_masks(model)
    log(f"final sparsity of the pruned weights: {masks.sparsity():.4f}" if len(masks) else "no masks")
    return run


def write_report(run: RunDir, recipe: Recipe, prunable: list[str]) -> Path:
    """Plots (accuracy vs sparsity, per-layer sparsity) and report.html from the run's files."""
    rows = run.rows()
    pruned = [r for r in rows if r["round"] > 0]
    dense_accuracy = rows[0]["accuracy"]
    xs = [100 * r["sparsity"] for r in pruned]
    line_plot(run.plot_path("accuracy_vs_sparsity.png"), "sparsity of pruned weights (%)", "test accuracy",
              {"after fine-tuning": (xs, [r["accuracy"] for r in pruned]),
               "after pruning, before fine-tuning": (xs, [r["accuracy_pruned"] for r in pruned]),
               "dense": (xs, [dense_accuracy] * len(xs))},
              title=f"{recipe.model.name} on {recipe.data.name}")
    layers = {f"round {r['round']}": run.read_json(f"layers_round{r['round']}.json") for r in pruned}
    grouped_bars(run.plot_path("layer_sparsity.png"), prunable,
                 {name: [row["sparsity"] for row in rows_] for name, rows_ in layers.items()},
                 y_label="sparsity", title="per-layer sparsity")
    report = Report(f"prunekit — {recipe.name}")
    report.text(f"Run folder: {run.path}")
    report.heading("Rounds").table(rows, ROUND_COLUMNS, table_id="rounds")
    report.image("plots/accuracy_vs_sparsity.png", "Test accuracy vs sparsity")
    report.image("plots/layer_sparsity.png", "Sparsity of each pruned tensor after each round")
    if pruned:
        last = f"round {pruned[-1]['round']}"
        report.heading(f"Per-layer sparsity, {last}").table(layers[last], ["name", "shape", "numel", "nonzero",
                                                                           "sparsity", "dense_bytes",
                                                                           "compressed_bytes", "layout"])
    report.heading("Recipe")
    report.text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    return report.save(run.path / "report.html")
