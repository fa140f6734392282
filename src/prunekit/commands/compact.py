"""`prunekit compact CHECKPOINT --model NAME --out OUT`: a masked checkpoint in, a smaller one out.

The checkpoint is a state_dict saved from a masked model (what `prunekit run` writes) or a
plain one; `--prune` first removes that fraction of every prunable group's channels; `--data` adds the
test accuracy of both models to the summary (parameters, FLOPs, measured latency). Writes
OUT (the compacted state_dict) and OUT.record (the CompactionRecord, to rebuild the shapes on
a fresh instance with prunekit.compaction.apply_record) and prints parameters and FLOPs before
and after.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..accounting import count_flops, parameter_counts
from ..compaction import compact
from ..errors import PrunekitError
from ..allocate.latency import measure_latency
from ..models import build_model
from ..prune import prune_structured
from ..table import format_table
from ..training import evaluate
from ..workflows.checkpoints import load_into, read_state_dict
from ..workflows.sources import dataset_from
from .options import add_data_option, add_model_options, model_options

INPUT_SHAPES = {"lenet300100": (1, 28, 28), "lenet5": (1, 28, 28), "mnist1d_mlp": (40,), "mnist1d_cnn": (40,)}


def register(sub) -> None:
    parser = sub.add_parser("compact", help="physically remove pruned channels from a checkpoint")
    parser.add_argument("checkpoint", help="state_dict saved with torch.save (masked or plain)")
    add_model_options(parser, required=True)
    parser.add_argument("--out", required=True, help="where the compacted state_dict goes")
    parser.add_argument("--input-shape", default=None,
                        help="one example's shape, comma-separated (default: the model's own, e.g. 1,28,28)")
    parser.add_argument("--prune", type=float, default=None,
                        help="first remove this fraction of every prunable channel group (magnitude, L2)")
    add_data_option(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace OUT and OUT.record if they exist")
    parser.set_defaults(func=run)


def _input_shape(args) -> tuple:
    if args.input_shape:
        try:
            return tuple(int(v) for v in args.input_shape.split(","))
        except ValueError:
            raise PrunekitError(f"--input-shape {args.input_shape!r} must be integers separated by commas, "
                                "e.g. 1,28,28.") from None
    if args.model not in INPUT_SHAPES:
        raise PrunekitError(f"No default input shape for '{args.model}'; pass --input-shape.")
    return INPUT_SHAPES[args.model]


def run(args) -> int:
    source, out = Path(args.checkpoint), Path(args.out)
    record_path = out.with_name(out.name + ".record")
    for path in (out, record_path):
        if path.exists() and not args.overwrite:
            raise PrunekitError(f"{path} exists; pass --overwrite to replace it or choose another --out.")
    for folder in out.parents:
        if folder.exists() and not folder.is_dir():
            raise PrunekitError(f"Cannot write {out}: {folder} is a file, not a folder.")
    x = torch.randn(2, *_input_shape(args))
    model = load_into(build_model(args.model, **model_options(args)), read_state_dict(source), str(source))
    if args.prune is not None:
        prune_structured(model, args.prune, x)
    small, record = compact(model, x)
    before, after = parameter_counts(model)["total"], parameter_counts(small)["total"]
    flops_before, flops_after = count_flops(model, x)["dense_flops"], count_flops(small, x)["dense_flops"]
    latency = [measure_latency(m, x) for m in (model, small)]
    rows = [{"": "parameters", "before": before, "after": after, "ratio": round(before / max(after, 1), 3)},
            {"": "FLOPs (batch 2)", "before": flops_before, "after": flops_after,
             "ratio": round(flops_before / max(flops_after, 1), 3)},
            {"": "latency batch 2 (ms, median)", "before": round(1e3 * latency[0], 3),
             "after": round(1e3 * latency[1], 3), "ratio": round(latency[0] / max(latency[1], 1e-12), 3)}]
    if args.data:
        test = dataset_from(args.data).test
        accuracy = [evaluate(m, test)["accuracy"] for m in (model, small)]
        rows.append({"": f"accuracy on {args.data}", "before": accuracy[0], "after": accuracy[1],
                     "ratio": round(accuracy[1] / max(accuracy[0], 1e-12), 4)})
    print(format_table(rows))
    if not record.kept:
        print("No whole channel or head is masked: nothing was removed (use --prune, or structured pruning).")
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(small.state_dict(), out)
    record.save(record_path, overwrite=True)
    print(f"wrote {out} and {record_path}")
    return 0
