"""The `prunekit` command line. Each subcommand lives in prunekit/commands/<name>.py and
exposes `register(subparsers)`; adding one is a new file plus a line in COMMANDS."""

from __future__ import annotations

import argparse
import importlib
import sys

import torch

from . import __version__
from .errors import PrunekitError

COMMANDS = ["demo", "run", "sensitivity", "lottery", "experiment", "compact", "export", "report", "llm"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunekit", description="Prune PyTorch models and measure the result.")
    parser.add_argument("--version", action="version", version=f"prunekit {__version__} (torch {torch.__version__})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"prunekit.commands.{name}").register(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PrunekitError as e:
        print(f"prunekit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prunekit: interrupted; run the same command again to resume where it stopped.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
