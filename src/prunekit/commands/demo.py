"""`prunekit demo`: unstructured and structured pruning on real MNIST digits, with a headline
and a report (prunekit.workflows.demo)."""

from __future__ import annotations

from ..workflows.demo import DemoSettings, run_demo


def register(sub) -> None:
    parser = sub.add_parser("demo", help="prune LeNet-300-100 and a CNN on real MNIST digits; writes a report "
                                         "(about three minutes on two cores)")
    parser.add_argument("--output-dir", default="runs", help="where the run folder goes (default: runs)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run of a few seconds: every stage runs, the numbers mean nothing")
    parser.set_defaults(func=_main)


def _main(args) -> int:
    settings = DemoSettings().quick() if args.quick else DemoSettings()
    run_demo(settings, output_dir=args.output_dir, progress=not args.no_progress)
    return 0
