"""`prunekit demo`: unstructured and structured pruning on real MNIST digits, with a headline
and a report (prunekit.workflows.demo)."""

from __future__ import annotations

from ..workflows.demo import DemoSettings, run_demo
from .options import add_output_options, show_progress


def register(sub) -> None:
    parser = sub.add_parser("demo", help="prune LeNet-300-100 and a CNN on real MNIST digits; writes a report "
                                         "(about three minutes on two cores)")
    add_output_options(parser)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run of a few seconds: every stage runs, the numbers mean nothing")
    parser.set_defaults(func=_main)


def _main(args) -> int:
    settings = DemoSettings().quick() if args.quick else DemoSettings()
    run_demo(settings, output_dir=args.output_dir, progress=show_progress(args))
    return 0
