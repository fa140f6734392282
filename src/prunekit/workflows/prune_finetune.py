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

import copy
import dataclasses
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from ..accounting import count_flops, parameter_counts, sparsity_table
from ..compaction import compact
from ..masks import get_masks, load_masked_state_dict, remove_masks, resolve_parameters
from ..plots import grouped_bars, line_plot
from ..pruner import GRAPH_GRANULARITIES, Pruner
from ..recipe import PruneSpec, Recipe
from ..report import Card, Report, environment
from ..runs import RunDir
from ..surgery import model_latencies
from ..table import RowPrinter
from ..training import evaluate, finetune, resolve_device, train
from .activations_section import activation_rows, add_activation_section
from .allocation import split_validation
from .sources import check_fits, dataset_from, fresh_model

ROUND_COLUMNS = ["round", "target_sparsity", "sparsity", "accuracy_pruned", "accuracy", "test_loss",
                 "nonzero_params", "total_params", "dense_flops", "sparse_flops", "dense_bytes", "compressed_bytes"]
CONSOLE_COLUMNS = ["round", "target_sparsity", "sparsity", "accuracy_pruned", "accuracy", "nonzero_params",
                   "sparse_flops"]  # every column is in metrics.csv and the report
LATENCY_BATCH = 64


def _fresh_model(recipe: Recipe, num_classes: int, device: torch.device):
    return fresh_model(recipe.model.name, recipe.model.options, num_classes, recipe.seed, device)


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
               log=print, device=None) -> RunDir:
    """Run (or resume) `recipe`; returns the RunDir holding metrics, checkpoints, plots and report.

    `device` ('cpu', 'cuda', 'auto', …; default the CPU) is where the model and the data live
    during the run; it is not a setting of the run, so a run started on one device resumes on
    another.

    The run draws dropout and other randomness from torch's generator seeded with recipe.seed, in
    a forked state: the same recipe gives the same results whatever the caller did before, and
    the caller's generator is where it was afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        return _run_rounds(recipe, output_dir, progress, log, resolve_device(device))


def _run_rounds(recipe: Recipe, output_dir, progress: bool, log, device: torch.device) -> RunDir:
    dataset = dataset_from(recipe.data.name)  # everything the recipe names is built before any file is written
    check_fits(recipe, dataset)
    dataset = dataset.to(device)
    example = dataset.example_input(2)
    model = _fresh_model(recipe, dataset.num_classes, device)
    prunable = list(resolve_parameters(model))
    calibration = calibration_batches(dataset, recipe.prune, recipe.train.batch_size)
    make_pruner(model, recipe.prune, recipe.prune.targets[0], example=example, calibration=calibration)  # validates
    run = RunDir.open(output_dir or recipe.output_dir, recipe.name, recipe.settings())
    (run.path / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))

    finished = [r for r in range(len(recipe.prune.targets) + 1) if run.is_done(f"round{r}")]
    if finished:
        log(f"resuming {run.path}: round{'s 0–' if max(finished) else ' '}{max(finished)} finished earlier, "
            "loaded from its checkpoints, not rerun")
    printer = RowPrinter(CONSOLE_COLUMNS)
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
    log(printer.header())
    log(printer.row(run.rows()[0]))

    for r, target in enumerate(recipe.prune.targets, start=1):
        tag = f"round{r}"
        if run.is_done(tag):
            model = _fresh_model(recipe, dataset.num_classes, device)
            load_masked_state_dict(model, run.load_checkpoint(tag, restore_rng=True))
            log(printer.row(next(row for row in run.rows() if row["round"] == r)))
            continue
        run.replace_rows([row for row in run.rows() if row["round"] < r])  # drop a killed round's leftovers
        if recipe.prune.schedule == "one_shot":
            model = _fresh_model(recipe, dataset.num_classes, device)
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
        log(printer.row(row))

    if not (run.path / "latency.json").is_file():  # measured once; a rerun keeps the first measurement
        dense = _fresh_model(recipe, dataset.num_classes, device)
        dense.load_state_dict(dense_state)
        run.write_json("latency.json", measure_latency(dense, model, recipe.prune, dataset.example_input(LATENCY_BATCH)))
    if not (run.path / "activations.json").is_file():
        run.write_json("activations.json", activation_rows(model, dataset.test))
    write_report(run, recipe, prunable)
    masks = get_masks(model)
    log(f"final sparsity of the pruned weights: {masks.sparsity():.4f}" if len(masks) else "no masks")
    log(headline_text(recipe, run.rows(), run.read_json("latency.json")))
    return run


def deployable(model: nn.Module, spec: PruneSpec, example) -> nn.Module:
    """A copy of `model` as it would ship: structured pruning compacted into smaller layers,
    unstructured masks baked into the weights (dense kernels: no faster, the latency shows it)."""
    shipped = copy.deepcopy(model)
    if spec.granularity in GRAPH_GRANULARITIES:
        return compact(shipped, example)[0]
    remove_masks(shipped)
    return shipped


def measure_latency(dense: nn.Module, model: nn.Module, spec: PruneSpec, x: torch.Tensor,
                    repeats: int = 20) -> dict:
    """Median milliseconds per forward pass on `x` of the dense model and the final model as it
    would ship, timed in alternation on this machine."""
    times = model_latencies({"dense": dense, "pruned": deployable(model, spec, x[:2])}, x, repeats=repeats)
    dense_ms, pruned_ms = (1e3 * statistics.median(times[k]) for k in ("dense", "pruned"))
    return {"batch": len(x), "dense_ms": round(dense_ms, 4), "pruned_ms": round(pruned_ms, 4),
            "speedup": round(dense_ms / pruned_ms, 4), "threads": torch.get_num_threads(),
            "device": str(x.device), "form": "compacted" if spec.granularity in GRAPH_GRANULARITIES else "masks baked in"}


def headline(rows: list[dict], latency: dict) -> dict:
    """The run in numbers: dense (round 0) against the last round."""
    dense, final = rows[0], rows[-1]
    return {"nonzero_ratio": round(dense["nonzero_params"] / max(final["nonzero_params"], 1), 4),
            "accuracy_change_pt": round(100 * (final["accuracy"] - dense["accuracy"]), 4),
            "flops_ratio": round(dense["sparse_flops"] / max(final["sparse_flops"], 1), 4),
            "bytes_ratio": round(dense["compressed_bytes"] / max(final["compressed_bytes"], 1), 4),
            "speedup": latency["speedup"]}


def headline_text(recipe: Recipe, rows: list[dict], latency: dict) -> str:
    numbers = headline(rows, latency)
    return (f"{recipe.model.name}: {numbers['nonzero_ratio']:.1f}× fewer non-zeros at {rows[-1]['sparsity']:.1%} "
            f"sparsity, {_points(numbers['accuracy_change_pt'])}; {numbers['speedup']:.2f}× the dense speed at "
            f"batch {latency['batch']} ({latency['form']})")


def _points(pt: float) -> str:
    return f"{pt:+.1f} pt".replace("-", "\u2212")


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
    if pruned:
        latency = run.read_json("latency.json")
        numbers = headline(rows, latency)
        final = pruned[-1]
        report.headline(headline_text(recipe, rows, latency), [
                Card(f"{numbers['nonzero_ratio']:.1f}×", "fewer non-zero parameters",
                     f"{rows[0]['nonzero_params']:,} → {final['nonzero_params']:,}", "nonzero_ratio",
                     numbers["nonzero_ratio"]),
                Card(_points(numbers["accuracy_change_pt"]), "test accuracy, after fine-tuning",
                     f"{dense_accuracy:.1%} → {final['accuracy']:.1%}", "accuracy_change_pt",
                     numbers["accuracy_change_pt"]),
                Card(f"{numbers['bytes_ratio']:.1f}×", "smaller in sparse storage",
                     f"{rows[0]['compressed_bytes']:,} → {final['compressed_bytes']:,} bytes", "bytes_ratio",
                     numbers["bytes_ratio"]),
                Card(f"{numbers['flops_ratio']:.1f}×", "fewer FLOPs (non-zero weights)",
                     f"{rows[0]['sparse_flops']:,} → {final['sparse_flops']:,} per batch of 2", "flops_ratio",
                     numbers["flops_ratio"]),
                Card(f"{numbers['speedup']:.2f}×", f"speed at batch {latency['batch']}, measured",
                     f"{latency['dense_ms']:.3g} → {latency['pruned_ms']:.3g} ms, {latency['form']}, median of "
                     "alternating runs", "speedup", numbers["speedup"]),
            ])
    report.text(f"Run folder: {run.path}")
    report.heading("Rounds").table(rows, ROUND_COLUMNS, table_id="rounds")
    report.image("plots/accuracy_vs_sparsity.png", "Test accuracy vs sparsity")
    report.image("plots/layer_sparsity.png", "Sparsity of each pruned tensor after each round")
    if pruned:
        last = f"round {pruned[-1]['round']}"
        report.heading(f"Per-layer sparsity, {last}").table(layers[last], ["name", "shape", "numel", "nonzero",
                                                                           "sparsity", "dense_bytes",
                                                                           "compressed_bytes", "layout"])
    if (run.path / "activations.json").is_file():  # runs from before it was measured have none
        add_activation_section(report, run.read_json("activations.json"))
    report.heading("Recipe")
    report.code(yaml.safe_dump(recipe.to_dict(), sort_keys=False), "yaml")
    report.footer(environment())
    return report.save(run.path / "report.html")
