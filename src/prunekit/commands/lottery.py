"""`prunekit lottery`: iterative magnitude pruning with rewinding, ticket vs controls."""

from __future__ import annotations

from ..lottery import CONTROLS, LotteryConfig, run_lottery
from ..lottery.summary import write_summary
from ..models import INITS
from ..training import OPTIMIZERS, TrainConfig
from .options import add_device_option, add_model_options, add_output_options, model_options, show_progress


def register(sub) -> None:
    p = sub.add_parser("lottery", help="find lottery tickets by IMP with rewinding; compare with controls")
    add_model_options(p, default="mnist1d_mlp")
    p.add_argument("--data", "--dataset", dest="data", default="mnist1d", help="mnist1d, mnist5k, digits")
    p.add_argument("--rounds", type=int, default=10, help="pruning rounds (density ≈ (1 − rate)^rounds)")
    p.add_argument("--rate", type=float, default=0.2, help="fraction of surviving weights pruned per round")
    p.add_argument("--scope", choices=("global", "local"), default="global", help="one ranking, or per tensor")
    p.add_argument("--output-rate", type=float, default=None,
                   help="with --scope local: the output layer's rate (Frankle & Carbin: half of --rate)")
    p.add_argument("--init", choices=tuple(INITS), default="default",
                   help="initialisation: torch's layer defaults, or Gaussian Glorot with zero biases (the paper's)")
    p.add_argument("--rewind-step", type=int, default=0, help="rewind surviving weights to this iteration")
    p.add_argument("--controls", nargs="*", default=list(CONTROLS), choices=CONTROLS,
                   help="control runs per round (default: reinit random)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--steps", type=int, default=1000, help="training iterations of every network")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--dropout", type=float, default=0.0, help="dropout after hidden layers (MLPs)")
    p.add_argument("--augment", choices=("shift", "rotate"), default=None)
    p.add_argument("--augment-strength", type=float, default=None, help="max shift (positions) or degrees")
    p.add_argument("--validation", type=int, default=500, help="training samples held out for early stopping")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--keep-steps", type=int, nargs="*", default=[], help="dense iterations to checkpoint")
    p.add_argument("--seed", type=int, default=0)
    add_output_options(p)
    add_device_option(p)
    p.set_defaults(func=_main)


def _model_options(args) -> dict:
    options = model_options(args)
    if args.dropout:
        options["dropout"] = args.dropout
    return options


def _main(args) -> int:
    strength = args.augment_strength
    if args.augment == "shift" and strength is not None:
        strength = int(strength)
    config = LotteryConfig(
        model=args.model, dataset=args.data,
        model_options=_model_options(args),
        train=TrainConfig(optimizer=args.optimizer, lr=args.lr, steps=args.steps, batch_size=args.batch_size),
        init=args.init, rounds=args.rounds, rate=args.rate, scope=args.scope, output_rate=args.output_rate,
        rewind_step=args.rewind_step,
        controls=tuple(args.controls), validation=args.validation, eval_every=args.eval_every,
        augment=args.augment, augment_strength=strength, keep_steps=tuple(args.keep_steps), seed=args.seed)
    run = run_lottery(config, args.output_dir, device=args.device, progress=show_progress(args))
    print(write_summary(run))
    print(f"\nrun folder: {run.path}")
    return 0
