"""`prunekit run RECIPE.yaml`: the prune → fine-tune pipeline from a declarative recipe."""

from __future__ import annotations

from ..workflows.allocation import run_allocation
from ..recipe import load_recipe
from ..table import format_table
from ..workflows.prune_finetune import run_recipe
from .options import add_device_option, add_output_options, show_progress


def add_run_options(parser) -> None:
    add_output_options(parser, default_dir=None)
    add_device_option(parser)


def register(sub) -> None:
    parser = sub.add_parser("run", help="run a YAML recipe (train, prune, fine-tune, report)")
    parser.add_argument("recipe", help="path to the recipe YAML file")
    add_run_options(parser)
    parser.set_defaults(func=_main)


def execute(recipe, args) -> int:
    if recipe.allocator is not None:  # an allocator decides the per-layer ratios
        run, _ = run_allocation(recipe, output_dir=args.output_dir, progress=show_progress(args),
                                device=args.device)
        print(format_table(run.rows()))
        print(f"\nrun folder: {run.path}")
        return 0
    run = run_recipe(recipe, output_dir=args.output_dir, progress=show_progress(args), device=args.device)
    print(f"\nrun folder: {run.path}\nreport:     {run.path / 'report.html'}")
    return 0


def _main(args) -> int:
    return execute(load_recipe(args.recipe), args)
