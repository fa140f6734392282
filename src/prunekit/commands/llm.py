"""`prunekit llm`: one-shot pruning of a pretrained causal language model, measured.

    prunekit llm --method wanda --sparsity 0.5
    prunekit llm --method sparsegpt --nm 2:4 --model path/to/hf_model_dir
    prunekit llm --method sparsegpt --sparsity 0.5 --owl --recover-steps 100
    prunekit llm --method sparsegpt --nm 2:4 --recover-steps 50 --distil   # recovery learns from the dense model
    prunekit llm --structure ffn --remove 0.25 --out small-model    # structured, physically smaller

Loads the model (SmolLM2-135M by default, or any local AutoModelForCausalLM directory),
draws the calibration windows from the licence texts, evaluates the dense model, prunes every
decoder Linear layer block by block, evaluates again (perplexity and top-1 agreement with the
dense model on held-out text) and, if asked, fine-tunes briefly with the masks held. Writes a
run folder runs/llm-<method>-<hash>/ with settings.json, metrics.json/.csv, blocks.json (the
sparsity of every block and layer) and report.md. Needs the [llm] extra (`make llm`).

With --structure heads|ffn|width|layers the model is pruned structurally instead: --remove of
the GQA head groups / FFN channels of every block or of the residual width (scored by the norms
of their activations on the calibration tokens), or of the decoder blocks (lowest block
influence), removed physically; the run folder gets dense and pruned rows with parameter counts,
and --out DIR a save_pretrained folder (model + tokenizer) that
AutoModelForCausalLM.from_pretrained reloads.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import PrunekitError
from ..table import format_table


def register(sub) -> None:
    p = sub.add_parser("llm", help="one-shot pruning of a pretrained language model (Wanda, SparseGPT, OWL, N:M)")
    p.add_argument("--model", default="smollm2", help="'smollm2' or a local AutoModelForCausalLM directory")
    p.add_argument("--method", default="wanda", choices=("magnitude", "wanda", "sparsegpt"))
    target = p.add_mutually_exclusive_group()
    target.add_argument("--sparsity", type=float, help="fraction of each layer's weights pruned (default 0.5)")
    target.add_argument("--nm", help="N:M pattern instead, e.g. 2:4 or 4:8")
    p.add_argument("--structure", choices=("heads", "ffn", "width", "layers"),
                   help="structured pruning instead: GQA head groups, FFN channels, the residual width "
                        "(hidden_size, through every RMSNorm) or whole decoder blocks")
    p.add_argument("--remove", type=float, help="with --structure: fraction of the units (per block) or blocks removed")
    p.add_argument("--criterion", choices=("wanda", "wanda-out", "magnitude", "activation"),
                   help="with --structure heads/ffn/width: unit score from the norms of its own activations "
                        "(activation, default), Σ|W|·‖X‖ over all its weights (wanda), over its output-"
                        "projection columns only (wanda-out), or Σ|W| (magnitude)")
    p.add_argument("--out", help="with --structure: write the pruned model (save_pretrained) to this new folder")
    p.add_argument("--owl", action="store_true", help="outlier-weighted block sparsities (OWL) around --sparsity")
    p.add_argument("--calibration-samples", type=int, default=32, help="calibration windows (default 32)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per calibration window (default 256)")
    p.add_argument("--seed", type=int, default=0, help="which calibration windows are drawn")
    p.add_argument("--eval", default="reference", choices=("reference", "long", "devil"),
                   help="held-out text: first 2,048 tokens of GPL-3, GPL-3 + MPL-2.0 (~11k tokens), or 8,192 "
                        "tokens of out-of-domain prose (the Devil's Dictionary, Debian's dict-devil)")
    p.add_argument("--window", type=int, default=512, help="evaluation window in tokens (default 512)")
    p.add_argument("--recover-steps", type=int, default=0,
                   help="recovery fine-tuning steps on the calibration text (masks held; with --structure, the "
                        "compacted decoder's Linear layers)")
    p.add_argument("--recover-lr", type=float, default=1e-4)
    p.add_argument("--distil", action="store_true",
                   help="with --recover-steps: learn the dense model's next-token distributions on the calibration "
                        "text (KL) instead of the text's own tokens — repairs the model instead of adapting it to "
                        "the calibration text's style (the dense model is loaded again as the teacher)")
    p.add_argument("--batch-size", type=int, default=8, help="calibration sequences per forward pass")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (a GPU when present)")
    p.add_argument("--save-model", action="store_true", help="also save the pruned model (save_pretrained)")
    p.add_argument("--output-dir", default="runs", help="root of the run folders (default: runs)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_main)


def _settings(args) -> dict:
    model = args.model if args.model == "smollm2" else str(Path(args.model).resolve())
    return {"model": model, "method": args.method, "sparsity": args.sparsity if args.nm is None else None,
            "nm": args.nm, "owl": args.owl, "calibration_samples": args.calibration_samples,
            "seq_len": args.seq_len, "seed": args.seed, "eval": args.eval, "window": args.window,
            "recover_steps": args.recover_steps, "recover_lr": args.recover_lr,
            "recover_distil": bool(args.distil and args.recover_steps)}


def _teacher(args):
    """The dense model again, for distillation (loaded after pruning: pruning's memory stays its own)."""
    from ..llm import load_causal_lm

    return load_causal_lm(args.model)[0] if args.distil else None


def _check_structured(args) -> None:
    """Structured and unstructured options do not mix; bad values fail before anything is loaded."""
    if args.distil and not args.recover_steps:
        raise PrunekitError("--distil chooses what recovery learns from; give --recover-steps N too.")
    if args.structure is None:
        given = (("--remove", args.remove), ("--out", args.out), ("--criterion", args.criterion))
        used = [flag for flag, value in given if value is not None]
        if used:
            raise PrunekitError(f"{' and '.join(used)} go with --structure heads|ffn|width|layers.")
        return
    unstructured = [flag for flag, value in (("--sparsity", args.sparsity), ("--nm", args.nm), ("--owl", args.owl),
                                             ("--save-model (use --out)", args.save_model)) if value]
    if unstructured or args.method != "wanda":
        raise PrunekitError(f"--structure removes whole units; leave out {', '.join(unstructured or ['--method'])} "
                            "(those are for unstructured pruning).")
    if args.remove is None or not 0 < args.remove < 1:
        raise PrunekitError(f"--structure needs --remove, a fraction in (0, 1) of the units removed; got {args.remove}.")
    if args.out is not None and Path(args.out).exists() and any(Path(args.out).iterdir()):
        raise PrunekitError(f"--out {args.out} exists and is not empty; choose a new folder (nothing is overwritten).")


def _main(args) -> int:
    _check_structured(args)
    if args.structure is not None:
        return _structured(args)
    from ..llm import (PeakRSS, calibration_tokens, evaluate_lm, evaluation_tokens, load_causal_lm, prune_oneshot,
                       recover, require_transformers)
    from ..llm.targets import parse_target
    from ..runs import RunDir

    if args.sparsity is None and args.nm is None:
        args.sparsity = 0.5
    parse_target(args.sparsity, args.nm)  # bad targets fail before anything is loaded or written
    if args.owl and args.nm:
        raise PrunekitError("--owl allocates unstructured sparsities; use it with --sparsity, not --nm.")
    if args.model != "smollm2" and not Path(args.model).is_dir():
        raise PrunekitError(f"--model {args.model!r} is neither 'smollm2' nor a directory.")
    require_transformers()
    settings = _settings(args)
    run = RunDir.open(args.output_dir, f"llm-{args.method}", settings)
    if run.is_done("llm"):
        print(format_table(run.rows()))
        print(f"\nalready done: {run.path}")
        return 0
    progress = False if args.no_progress else None

    model, tokenizer = load_causal_lm(args.model)
    tokens = calibration_tokens(tokenizer, args.calibration_samples, args.seq_len, seed=args.seed)
    stream = evaluation_tokens(tokenizer, args.eval)
    dense = evaluate_lm(model, stream, window=args.window)
    rows = [{"stage": "dense", **dense.row(), "agreement": 1.0, "sparsity": 0.0}]
    with PeakRSS() as peak:
        result = prune_oneshot(model, tokens, args.method, sparsity=args.sparsity, nm=args.nm, owl=args.owl,
                               batch_size=args.batch_size, device=args.device, progress=progress)
    pruned = evaluate_lm(model, stream, window=args.window, reference=dense)
    rows.append({"stage": "pruned", **pruned.row(), "sparsity": result.sparsity, "seconds": result.seconds,
                 "peak_rss_gb": peak.gigabytes})
    if args.recover_steps:
        losses = recover(model, tokens, steps=args.recover_steps, lr=args.recover_lr, teacher=_teacher(args),
                         progress=progress)
        recovered = evaluate_lm(model, stream, window=args.window, reference=dense)
        rows.append({"stage": "recovered", **recovered.row(), "sparsity": result.masks.sparsity(),
                     "train_loss_first": losses[0], "train_loss_last": losses[-1]})
    run.replace_rows(rows)
    run.write_json("blocks.json", {"block_sparsities": result.block_sparsities, "layers": result.rows})
    if args.save_model:
        from ..masks import remove_masks

        remove_masks(model)
        model.save_pretrained(run.path / "model")
        tokenizer.save_pretrained(run.path / "model")
    (run.path / "report.md").write_text(_report(settings, rows, result))
    run.mark_done("llm")
    print(format_table(rows, ["stage", "perplexity", "agreement", "sparsity", "eval_tokens"]))
    print(f"\nrun folder: {run.path}\nreport:     {run.path / 'report.md'}")
    return 0


def _structured(args) -> int:
    from ..llm import calibration_tokens, evaluate_lm, evaluation_tokens, load_causal_lm, prune_structure, recover
    from ..llm.unit_scores import DEFAULT_CRITERION
    from ..runs import RunDir

    if args.model != "smollm2" and not Path(args.model).is_dir():
        raise PrunekitError(f"--model {args.model!r} is neither 'smollm2' nor a directory.")
    settings = {**{k: v for k, v in _settings(args).items() if k not in ("method", "sparsity", "nm", "owl")},
                "structure": args.structure, "remove": args.remove,
                "criterion": "block influence" if args.structure == "layers" else (
                    args.criterion or DEFAULT_CRITERION)}
    run = RunDir.open(args.output_dir, f"llm-{args.structure}", settings)
    if run.is_done("llm") and args.out is None:
        print(format_table(run.rows()))
        print(f"\nalready done: {run.path}")
        return 0
    model, tokenizer = load_causal_lm(args.model)
    tokens = calibration_tokens(tokenizer, args.calibration_samples, args.seq_len, seed=args.seed)
    stream = evaluation_tokens(tokenizer, args.eval)
    dense = evaluate_lm(model, stream, window=args.window)
    result = prune_structure(model, tokens, args.structure, args.remove, criterion=settings["criterion"],
                             batch_size=args.batch_size, device=args.device,
                             progress=False if args.no_progress else None)
    pruned = evaluate_lm(model, stream, window=args.window, reference=dense)
    rows = [{"stage": "dense", **dense.row(), "agreement": 1.0, "params": result.params_before},
            {"stage": "pruned", **pruned.row(), "params": result.params_after,
             "params_removed": result.params_removed, "seconds": result.seconds}]
    if args.recover_steps:  # the compacted model's decoder Linear layers, on the calibration text
        losses = recover(model, tokens, steps=args.recover_steps, lr=args.recover_lr, teacher=_teacher(args),
                         progress=False if args.no_progress else None)
        recovered = evaluate_lm(model, stream, window=args.window, reference=dense)
        rows.append({"stage": "recovered", **recovered.row(), "params": result.params_after,
                     "params_removed": result.params_removed, "train_loss_first": losses[0],
                     "train_loss_last": losses[-1]})
    run.replace_rows(rows)
    run.write_json("structure.json", {"removed_per_block": result.removed_per_block,
                                      "units_per_block": result.units_per_block, "removed": result.removed,
                                      "config_changes": result.config_changes})
    columns = ["stage", "perplexity", "agreement", "params", "params_removed", "eval_tokens"]
    unit = {"layers": "blocks", "width": "channels of the residual width"}.get(args.structure,
                                                                             f"{args.structure} units per block")
    (run.path / "report.md").write_text("\n".join([
        f"# {args.structure} pruning on {settings['model']}", "",
        f"{result.removed_per_block} of {result.units_per_block} {unit} removed ({settings['criterion']}), "
        f"{result.params_removed:.1%} of the parameters; config changes {result.config_changes}.", "",
        format_table(rows, columns), ""]))
    if args.out is not None:
        model.save_pretrained(args.out)
        tokenizer.save_pretrained(args.out)
    run.mark_done("llm")
    print(format_table(rows, columns))
    print(f"\nrun folder: {run.path}" + (f"\nmodel:      {args.out}" if args.out else ""))
    return 0


def _report(settings: dict, rows: list[dict], result) -> str:
    target = settings["nm"] or f"{settings['sparsity']:.0%}"
    lines = [f"# {settings['method']} {target}{' + OWL' if settings['owl'] else ''} on {settings['model']}", "",
             f"Every decoder Linear layer pruned one-shot, block by block, from "
             f"{settings['calibration_samples']} × {settings['seq_len']} calibration tokens of the licence texts "
             f"(seed {settings['seed']}); evaluated on the '{settings['eval']}' held-out text in "
             f"{settings['window']}-token windows. Perplexities compare methods with each other, not with "
             "published WikiText figures.", "",
             format_table(rows, ["stage", "perplexity", "agreement", "sparsity", "eval_tokens"]), "",
             f"Pruning took {result.seconds:.1f} s; overall sparsity of the pruned layers {result.sparsity:.4f}.",
             "", "Block sparsities: " + ", ".join(f"{s:.3f}" for s in result.block_sparsities), ""]
    return "\n".join(lines)
