"""`prunekit sensitivity`: per-layer accuracy-vs-ratio curves and the ratios they allow.

    prunekit sensitivity --model mnist1d_cnn --data mnist1d --threshold 0.02
    prunekit sensitivity --recipe my.yaml --budget 0.5 --metric flops --executor ray

Trains the model (or reuses the dense checkpoint of an earlier run with the same model,
data, training and seed), prunes one layer at a time
to each ratio, evaluates on a validation split held out of the training data, and writes
sensitivity.csv, plots/sensitivity.png and allocation.json to the run folder. With
--threshold every layer gets the largest ratio whose drop stays within it; with --budget
the smallest threshold that meets the budget (then fitted to within one unit).
"""

from __future__ import annotations

import argparse

from ..recipe import load_recipe, recipe_from_dict
from ..runs import RunDir
from ..table import format_table
from ..training import resolve_device
from ..workflows.sources import check_fits, dataset_from
from .options import (add_data_option, add_device_option, add_model_options, add_output_options, model_options,
                      show_progress)


def _ratios(text: str) -> tuple[float, ...]:
    try:
        ratios = tuple(float(v) for v in text.split(","))
    except ValueError:
        ratios = ()
    if not ratios or any(not 0 < r < 1 for r in ratios):
        raise argparse.ArgumentTypeError(f"takes comma-separated fractions in (0, 1), e.g. 0.1,0.5,0.9; got {text!r}")
    return ratios


def register(sub) -> None:
    parser = sub.add_parser("sensitivity", help="per-layer sensitivity curves and the ratios they allow")
    parser.add_argument("--recipe", help="take model, data, training and seed from this recipe")
    add_model_options(parser, default="mnist1d_cnn")
    add_data_option(parser, default="mnist1d")
    parser.add_argument("--train-steps", type=int, default=2000, help="dense training steps (without --recipe)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ratios", type=_ratios, default=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9))
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--threshold", type=float, help="accepted accuracy drop per layer (default 0.01)")
    group.add_argument("--budget", type=float, help="cost target: fraction of the dense cost, or absolute")
    parser.add_argument("--metric", default="flops", choices=["flops", "params"])
    parser.add_argument("--criterion", default="magnitude")
    parser.add_argument("--executor", default="inprocess", choices=["inprocess", "ray"])
    add_output_options(parser)
    add_device_option(parser)
    parser.set_defaults(func=_main)


def _main(args) -> int:
    from ..allocate import SensitivityAllocator
    from ..workflows.allocation import build_problem, dense_model, split_validation

    if args.recipe:
        recipe = load_recipe(args.recipe)
    else:
        recipe = recipe_from_dict({"name": "sensitivity", "seed": args.seed, "data": {"name": args.data},
                                   "model": {"name": args.model, "options": model_options(args)},
                                   "train": {"steps": args.train_steps, "seed": args.seed}})
    threshold = args.threshold if args.threshold is not None or args.budget is not None else 0.01
    device = resolve_device(args.device)  # model, data and device are checked before any folder is made
    dataset = dataset_from(recipe.data.name)
    check_fits(recipe, dataset)
    dataset = dataset.to(device)
    dense_settings = {k: v for k, v in recipe.settings().items() if k in ("seed", "data", "model", "train")}
    # The dense model has its own run folder, so analyses with other thresholds reuse it.
    dense_run = RunDir.open(args.output_dir, f"{recipe.name}-dense", dense_settings)
    run = RunDir.open(args.output_dir, f"{recipe.name}-sensitivity",
                      {**dense_settings, "ratios": list(args.ratios), "threshold": threshold, "budget": args.budget,
                       "metric": args.metric, "criterion": args.criterion})
    train_data, val = split_validation(dataset.train)
    model = dense_model(recipe, dense_run, train_data, dataset.num_classes, progress=show_progress(args),
                        device=device)
    problem = build_problem(model, val, dataset.example_input(1), metric=args.metric, criterion=args.criterion)
    allocation = SensitivityAllocator(threshold=threshold, budget=args.budget, ratios=args.ratios,
                                      executor=args.executor, run=run).allocate(problem)
    allocation.save(run.path / "allocation.json")
    curves = allocation.details["curves"]
    rows = [{"layer": n, **{f"{r:g}": round(a, 4) for r, a in pts}, "chosen ratio": round(allocation.ratios[n], 4)}
            for n, pts in curves.items()]
    print(f"validation accuracy, one layer pruned at a time (dense: {allocation.details['baseline']:.4f})")
    print(format_table(rows))
    s = allocation.summary()
    print(f"\nthreshold {allocation.details['threshold']:.4g}; {problem.metric}: {s['achieved']:.6g} of "
          f"{allocation.dense:.6g} ({s['fraction_of_dense']:.3f})" + (f", target {s['target']:.6g}, met: {s['met']}"
                                                                        if s["target"] is not None else ""))
    print(f"accuracy with these ratios (no fine-tuning): {allocation.accuracy:.4f}")
    print(f"run folder: {run.path}")
    return 0
