"""`prunekit export SOURCE --out FOLDER`: a pruned model as a file others can load.

SOURCE is a run folder (its last round; model and data from its recipe.yaml) or a checkpoint
(a state_dict, masked or plain; give --model). Formats:
  compact  channels/heads/blocks that are masked are removed physically (prunekit.compact) — the default
  masked   the dense tensors with their masks
  sparse   the compacted model with every layer whose sparse kernel measured faster here stored and run
           as CSR / BSR (prunekit.surgery.to_sparse): a safetensors file OUT and its compaction record
           OUT.record; read back with load_sparse(OUT, apply_record(factory(), CompactionRecord.load(OUT.record)))
  onnx     the compacted model as ONNX (needs the onnx package)
compact and masked write a prunekit.save folder (safetensors + manifest) that prunekit.load(FOLDER)
rebuilds by itself. Prints parameters, bytes on disk and measured latency beside the source model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..accounting import parameter_counts
from ..allocate.latency import measure_latency
from ..compaction import compact
from ..errors import PrunekitError
from ..recipe import load_recipe
from ..saving import save
from ..surgery import save_sparse, to_sparse
from ..table import format_table
from ..workflows.checkpoints import load_into, read_state_dict
from ..workflows.sources import dataset_from, fresh_model
from .options import add_model_options, model_options

FORMATS = ("compact", "masked", "sparse", "onnx")


def register(sub) -> None:
    parser = sub.add_parser("export", help="write a pruned model (compacted or masked) that loads without pickle")
    parser.add_argument("source", help="a run folder (prunekit run) or a state_dict checkpoint")
    parser.add_argument("--out", required=True, help="folder (compact/masked) or .onnx file to write")
    parser.add_argument("--format", choices=FORMATS, default="compact")
    parser.add_argument("--round", type=int, default=None, help="which round of a run folder (default: the last)")
    add_model_options(parser, required=False)
    parser.add_argument("--input-shape", default=None, help="one example's shape, e.g. 1,28,28 (checkpoints only)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.set_defaults(func=run)


def _from_run(folder: Path, round_: int | None):
    recipe = load_recipe(folder / "recipe.yaml")
    dataset = dataset_from(recipe.data.name)
    rounds = sorted(int(p.stem[5:]) for p in (folder / "checkpoints").glob("round*.pt") if p.stem[5:].isdigit())
    if not rounds:
        raise PrunekitError(f"{folder} has no finished round to export; run the recipe first.")
    tag = f"round{rounds[-1] if round_ is None else round_}"
    model = fresh_model(recipe.model.name, recipe.model.options, dataset.num_classes, recipe.seed)
    options = {"num_classes": dataset.num_classes, **recipe.model.options}
    load_into(model, read_state_dict(folder / "checkpoints" / f"{tag}.pt"), f"{folder.name}/{tag}")
    return model, dataset.example_input(2), recipe.model.name, options


def _from_checkpoint(path: Path, args):
    if not args.model:
        raise PrunekitError("Exporting a checkpoint needs --model (a built-in name or package.module:function).")
    if not args.input_shape:
        raise PrunekitError("Exporting a checkpoint needs --input-shape, one example's shape such as 1,28,28.")
    try:
        shape = tuple(int(v) for v in args.input_shape.split(","))
    except ValueError:
        raise PrunekitError(f"--input-shape {args.input_shape!r} must be integers separated by commas.") from None
    options = model_options(args)
    model = fresh_model(args.model, options, None, 0)
    load_into(model, read_state_dict(path), str(path))
    return model, torch.randn(2, *shape), args.model, options


def run(args) -> int:
    source, out = Path(args.source), Path(args.out)
    if out.exists() and not args.overwrite:
        raise PrunekitError(f"{out} exists; pass --overwrite to replace it, or choose another --out.")
    if source.is_dir() and (source / "recipe.yaml").is_file():
        model, example, factory, options = _from_run(source, args.round)
    elif source.is_dir():
        raise PrunekitError(f"{source} is a folder without recipe.yaml: give a run folder of `prunekit run` "
                            "or a checkpoint file.")
    else:
        model, example, factory, options = _from_checkpoint(source, args)
    if args.format == "masked":
        written, exported = save(model, out, factory=factory, factory_options=options, overwrite=args.overwrite), model
    else:
        exported, record = compact(model, example)
        if args.format == "onnx":
            written = _onnx(exported, example, out)
        elif args.format == "sparse":
            exported, report = to_sparse(exported, example)
            print(report.table())
            written = save_sparse(exported, out, extra={"factory": factory, "factory_options": options,
                                                        "report": report.to_dict()}, overwrite=args.overwrite)
            record.save(out.with_name(out.name + ".record"), overwrite=args.overwrite)
        else:
            written = save(exported, out, record=record, factory=factory, factory_options=options,
                           overwrite=args.overwrite)
    size = sum(f.stat().st_size for f in ([written] if written.is_file() else written.rglob("*")) if f.is_file())
    before, after = parameter_counts(model), parameter_counts(exported)
    rows = [{"": "parameters", "source": before["total"], "exported": after["total"]},
            {"": "non-zero parameters", "source": before["nonzero"], "exported": after["nonzero"]},
            {"": "latency batch 2 (ms)", "source": round(1e3 * measure_latency(model, example), 3),
             "exported": round(1e3 * measure_latency(exported, example), 3)}]
    print(format_table(rows))
    print(f"wrote {written} ({size:,} bytes, format {args.format})")
    return 0


def _onnx(model, example, out: Path) -> Path:
    try:
        import onnx  # noqa: F401  (torch.onnx needs it to write the file)
    except ImportError:
        raise PrunekitError("--format onnx needs the onnx package: pip install onnx onnxscript.") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model.eval(), (example,), str(out))
    return out
