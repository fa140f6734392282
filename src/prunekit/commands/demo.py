"""`prunekit demo`: the bundled demo recipe (MNIST-1D CNN, iterative global magnitude pruning)."""

from __future__ import annotations

from ..recipe import bundled_recipe, load_recipe
from .run import add_run_options, execute


def register(sub) -> None:
    parser = sub.add_parser("demo", help="train, prune and fine-tune the MNIST-1D CNN; writes a report")
    add_run_options(parser)
    parser.set_defaults(func=lambda args: execute(load_recipe(bundled_recipe("demo")), args))
