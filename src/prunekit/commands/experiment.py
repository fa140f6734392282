"""`prunekit experiment NAME`: one of the source documents' experiments (a–l), as a table + plot."""

from __future__ import annotations

from ..experiments import ALIASES, EXPERIMENTS, run_experiment


def register(sub) -> None:
    names = ", ".join(f"{k} ({v})" for v, k in ((v, k) for k, v in ALIASES.items()))
    p = sub.add_parser("experiment", help="run a lottery-ticket / pruning-science experiment: " + names)
    p.add_argument("name", help=f"one of {', '.join(EXPERIMENTS)} or {', '.join(ALIASES)}")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (≥ 3 for mean ± std)")
    p.add_argument("--scale", choices=("full", "quick"), default="full",
                   help="full: the reported sizes; quick: a smoke test in seconds")
    p.add_argument("--output-dir", default="runs/experiments")
    p.set_defaults(func=_main)


def _main(args) -> int:
    print(run_experiment(args.name, args.output_dir, seeds=tuple(args.seeds), scale=args.scale))
    return 0
