"""`prunekit report RUN_DIR`: write a run folder's report.html again from its files
(metrics.json, per-layer tables, recipe.yaml) — after an interrupted run, or a newer prunekit."""

from __future__ import annotations

from pathlib import Path

from ..errors import PrunekitError
from ..masks import resolve_parameters
from ..recipe import load_recipe
from ..runs import RunDir
from ..workflows.prune_finetune import write_report
from ..workflows.sources import dataset_from, fresh_model


def register(sub) -> None:
    parser = sub.add_parser("report", help="(re)write report.html of a run folder from its files")
    parser.add_argument("run_dir", help="a run folder written by prunekit run / demo")
    parser.set_defaults(func=run)


def run(args) -> int:
    folder = Path(args.run_dir)
    if not (folder / "recipe.yaml").is_file() or not (folder / "metrics.json").is_file():
        raise PrunekitError(f"{folder} is not a run folder of `prunekit run` (it needs recipe.yaml and metrics.json).")
    recipe = load_recipe(folder / "recipe.yaml")
    dataset = dataset_from(recipe.data.name)
    prunable = list(resolve_parameters(fresh_model(recipe.model.name, recipe.model.options, dataset.num_classes,
                                                   recipe.seed)))
    path = write_report(RunDir(folder, recipe.settings()), recipe, prunable)
    print(f"report: {path}")
    return 0
