"""Flags every command spells the same way: --model, --model-option, --data, --output-dir,
--no-progress, --device. One parser per concept, so `lottery` and `sensitivity` agree."""

from __future__ import annotations

import sys

import yaml

from ..errors import PrunekitError

MODEL_HELP = "a built-in model (prunekit.models), or your own factory as package.module:function"
DATA_HELP = "a bundled dataset (mnist1d, mnist5k, digits), or your own loader as package.module:function"


def parse_option(text: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE read as YAML (64 → int, 0.5 → float, true → bool, else a string)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise PrunekitError(f"--model-option takes KEY=VALUE, e.g. hidden=64; got {text!r}.")
    try:
        return key, yaml.safe_load(value) if value else value
    except yaml.YAMLError:
        return key, value


def add_model_options(parser, *, default: str | None = None, required: bool = False) -> None:
    parser.add_argument("--model", default=default, required=required, help=MODEL_HELP)
    parser.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                        help="argument of the model factory, e.g. hidden=64 (repeatable)")


def model_options(args) -> dict:
    return dict(parse_option(item) for item in args.model_option)


def add_data_option(parser, *, default: str | None = None) -> None:
    parser.add_argument("--data", default=default, help=DATA_HELP)


def add_output_options(parser, *, default_dir: str | None = "runs") -> None:
    parser.add_argument("--output-dir", default=default_dir, help="root of the run folders (default: runs)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars (automatic when the "
                                                                   "output is not a terminal)")


def add_device_option(parser) -> None:
    parser.add_argument("--device", default="cpu",
                        help="where to train and prune: cpu (default), cuda, cuda:N, mps, or auto (a GPU when "
                             "there is one)")


def show_progress(args) -> bool:
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()
