"""`prunekit export SOURCE --out OUT`: a pruned model as a file others can load.

SOURCE is a run folder (its last round; model, data and training recipe from its recipe.yaml) or a
checkpoint (a state_dict, masked or plain; give --model and --input-shape). Formats:
  compact           channels/heads/blocks that are masked are removed physically (prunekit.compact) —
                    the default
  masked            the dense tensors with their masks
  sparse            the compacted model with every layer whose sparse kernel measured faster here stored
                    and run as CSR / BSR (prunekit.surgery.to_sparse): a safetensors file OUT and its
                    compaction record OUT.record; read back with
                    load_sparse(OUT, apply_record(factory(), CompactionRecord.load(OUT.record)))
  deep-compression  the compacted model with weight sharing (k-means, 2^bits values per layer; 8 bits conv /
                    5 fully connected unless --bits), codebooks fine-tuned on the data's training split
                    (--data, else a run folder's own data; without data the k-means centroids are stored
                    as they are), Huffman-coded with relative positions (prunekit.surgery.write_deep_compressed):
                    OUT and OUT.record; read back with apply_record(factory(), CompactionRecord.load(OUT.record))
                    .load_state_dict(read_deep_compressed(OUT))
  onnx              the compacted model as ONNX (needs the onnx package)
  torch-export      the compacted model, BatchNorm folded, as a torch.export program (torch.export.save),
                    any batch size where the model allows it; read back with torch.export.load(OUT).module()
compact and masked write a prunekit.save folder (safetensors + manifest) that prunekit.load(FOLDER)
rebuilds by itself. The deep-compression and torch-export files are read back and checked against the
model they came from (bit for bit; outputs ≤ 1e-5) before the command returns.
Prints parameters, bytes, measured latency (one thread, medians of alternating runs) and — given
data — test accuracy beside the source model. The source is only read; nothing existing is replaced
without --overwrite.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..accounting import parameter_counts
from ..compaction import CompactionRecord, apply_record, compact, plain_copy, relative_error
from ..errors import PrunekitError
from ..models import build_model
from ..modes import evaluation_mode
from ..recipe import load_recipe
from ..saving import save
from ..surgery import (deep_compress, fold_batchnorm, model_bytes, paired_medians, read_deep_compressed,
                       save_exported, save_sparse, to_sparse, write_deep_compressed)
from ..table import format_table
from ..training import TrainConfig, evaluate
from ..workflows.checkpoints import load_into, read_state_dict
from ..workflows.sources import dataset_from, fresh_model
from .options import add_data_option, add_model_options, model_options

FORMATS = ("compact", "masked", "sparse", "deep-compression", "onnx", "torch-export")
WITH_RECORD = ("sparse", "deep-compression")  # formats that write OUT.record beside OUT
DEFAULT_FINETUNE_STEPS = 300


@dataclass
class Source:
    """The model to export and what is known about where it came from."""

    model: nn.Module
    example: torch.Tensor
    factory: str
    options: dict
    data: str | None = None            # the dataset it was trained on (run folders)
    train: TrainConfig | None = None   # its training recipe (run folders)


def register(sub) -> None:
    parser = sub.add_parser("export", help="write a pruned model as a deployable file (compacted, masked, sparse, "
                                           "Deep Compression, ONNX, torch.export)")
    parser.add_argument("source", help="a run folder (prunekit run) or a state_dict checkpoint")
    parser.add_argument("--out", required=True, help="folder (compact/masked) or file (other formats) to write")
    parser.add_argument("--format", choices=FORMATS, default="compact")
    parser.add_argument("--round", type=int, default=None, help="which round of a run folder (default: the last)")
    add_model_options(parser, required=False)
    parser.add_argument("--input-shape", default=None, help="one example's shape, e.g. 1,28,28 (checkpoints only)")
    add_data_option(parser)
    parser.add_argument("--bits", type=int, default=None,
                        help="deep-compression: bits per shared weight index, 1–12 (default 8 conv / 5 fully "
                             "connected)")
    parser.add_argument("--finetune-steps", type=int, default=DEFAULT_FINETUNE_STEPS,
                        help=f"deep-compression: steps of codebook fine-tuning (default {DEFAULT_FINETUNE_STEPS}; "
                             "0 keeps the k-means centroids)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT (and OUT.record) if they exist")
    parser.set_defaults(func=run)


# ---------------------------------------------------------------------------------------------
# Reading the source
# ---------------------------------------------------------------------------------------------

def _from_run(folder: Path, round_: int | None) -> Source:
    recipe = load_recipe(folder / "recipe.yaml")
    dataset = dataset_from(recipe.data.name)
    rounds = sorted(int(p.stem[5:]) for p in (folder / "checkpoints").glob("round*.pt") if p.stem[5:].isdigit())
    if not rounds:
        raise PrunekitError(f"{folder} has no finished round to export; run the recipe first.")
    tag = f"round{rounds[-1] if round_ is None else round_}"
    model = fresh_model(recipe.model.name, recipe.model.options, dataset.num_classes, recipe.seed)
    options = {"num_classes": dataset.num_classes, **recipe.model.options}
    load_into(model, read_state_dict(folder / "checkpoints" / f"{tag}.pt"), f"{folder.name}/{tag}")
    return Source(model, dataset.example_input(2), recipe.model.name, options, recipe.data.name, recipe.train)


def _from_checkpoint(path: Path, args) -> Source:
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
    return Source(model, torch.randn(2, *shape), args.model, options)


def _read_source(source: Path, args) -> Source:
    if source.is_dir() and (source / "recipe.yaml").is_file():
        return _from_run(source, args.round)
    if source.is_dir():
        raise PrunekitError(f"{source} is a folder without recipe.yaml: give a run folder of `prunekit run` "
                            "or a checkpoint file.")
    if not source.is_file():
        raise PrunekitError(f"{source} does not exist: give a run folder of `prunekit run` or a checkpoint file.")
    return _from_checkpoint(source, args)


# ---------------------------------------------------------------------------------------------
# Checks before anything is read or written
# ---------------------------------------------------------------------------------------------

def _outputs(out: Path, fmt: str) -> list[Path]:
    return [out, out.with_name(out.name + ".record")] if fmt in WITH_RECORD else [out]


def _check_arguments(args, source: Path, outputs: list[Path]) -> None:
    if args.format != "deep-compression" and args.bits is not None:
        raise PrunekitError("--bits applies to --format deep-compression only.")
    if args.bits is not None and not 1 <= args.bits <= 12:
        raise PrunekitError(f"--bits must be an integer in [1, 12], not {args.bits}.")
    if args.format == "torch-export" and outputs[0].suffix != ".pt2":
        raise PrunekitError(f"--format torch-export writes a .pt2 file (torch reads no other name); got --out "
                            f"{outputs[0]}.")
    if args.finetune_steps < 0:
        raise PrunekitError(f"--finetune-steps must be ≥ 0, not {args.finetune_steps}.")
    origin = source.resolve()
    for path in outputs:
        target = path.resolve()
        if target == origin or origin.is_relative_to(target) or (origin.is_dir() and target.is_relative_to(origin)):
            raise PrunekitError(f"--out {path} would write over or inside the source {source}; the source is only "
                                "read. Choose an --out outside it.")
        if path.exists() and not args.overwrite:
            raise PrunekitError(f"{path} exists; pass --overwrite to replace it, or choose another --out.")
        for folder in path.parents:
            if folder.exists() and not folder.is_dir():
                raise PrunekitError(f"Cannot write {path}: {folder} is a file, not a folder.")


# ---------------------------------------------------------------------------------------------
# Formats: each returns (the model as the written files give it back, notes to print)
# ---------------------------------------------------------------------------------------------

class _Program(nn.Module):
    """A loaded torch.export program as an nn.Module, so accuracy, parameters and latency are measured
    on the file itself. The program has no train/eval switch (it was traced in eval mode and calling
    its eval() raises), so switching this module's mode does not reach it."""

    def __init__(self, program_module: nn.Module):
        super().__init__()
        self.program = program_module

    def train(self, mode: bool = True):
        self.training = mode
        return self

    def forward(self, *args):
        return self.program(*args)


def _write_deep_compression(src: Source, data, data_name, args, out: Path,
                            record_path: Path) -> tuple[nn.Module, list[str]]:
    small, record = compact(src.model, src.example)
    steps = args.finetune_steps if data is not None else 0
    if steps:
        config = (src.train or TrainConfig()).for_finetuning(0.1, steps)
        shared = deep_compress(small, data.train, config, bits=args.bits)
        note = f"codebooks fine-tuned for {steps} steps on {data_name} (lr {config.lr:g}, masks hold)"
    else:
        shared = deep_compress(small, bits=args.bits)
        note = ("codebooks are the k-means centroids, not fine-tuned: "
                + ("--finetune-steps 0" if data is not None else "pass --data to fine-tune them on training data"))
    info = write_deep_compressed(shared, out, max_bits=max(8, args.bits or 8), overwrite=args.overwrite,
                                 extra={"factory": src.factory, "factory_options": src.options,
                                        "bits": args.bits or "8 conv / 5 fully connected",
                                        "finetune_steps": steps})
    record.save(record_path, overwrite=args.overwrite)
    rebuilt = apply_record(build_model(src.factory, **src.options), CompactionRecord.load(record_path))
    rebuilt.load_state_dict(read_deep_compressed(out))
    for name, tensor in shared.state_dict().items():
        if not torch.equal(tensor, rebuilt.state_dict()[name]):
            raise PrunekitError(f"{out} does not read back bit-exactly ('{name}' differs). Please report this model.")
    shared_tensors = sum(1 for row in info["tensors"] if "/shared/" in row["encoding"])
    return rebuilt, [note, f"{shared_tensors} tensors stored as shared-value indices; header {info['header_bytes']} "
                           "bytes"]


def _write_torch_export(src: Source, args, out: Path) -> tuple[nn.Module, list[str]]:
    small, _ = compact(src.model, src.example)
    folded, pairs = fold_batchnorm(small, src.example)
    info = save_exported(folded, src.example, out, overwrite=args.overwrite)
    program = _Program(torch.export.load(str(out)).module())
    batch = "any batch size" if info["batch"] == "dynamic" else f"batch {src.example.shape[0]} only"
    return program, [f"{len(pairs)} BatchNorm folded; the program runs {batch}; reloaded output error "
                     f"{info['error']:.1e}"]


def _write_onnx(model: nn.Module, example, out: Path) -> None:
    try:
        import onnx  # noqa: F401  (torch.onnx needs it to write the file)
    except ImportError:
        raise PrunekitError("--format onnx needs the onnx package: pip install onnx onnxscript.") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model.eval(), (example,), str(out))


def _write(src: Source, data, data_name, args, outputs: list[Path]) -> tuple[nn.Module, list[str]]:
    out, fmt = outputs[0], args.format
    if fmt == "masked":
        save(src.model, out, factory=src.factory, factory_options=src.options, overwrite=args.overwrite)
        return src.model, []
    if fmt == "deep-compression":
        return _write_deep_compression(src, data, data_name, args, out, outputs[1])
    if fmt == "torch-export":
        return _write_torch_export(src, args, out)
    small, record = compact(src.model, src.example)
    if fmt == "onnx":
        _write_onnx(small, src.example, out)
        return small, []
    if fmt == "sparse":
        sparse, report = to_sparse(small, src.example)
        print(report.table())
        save_sparse(sparse, out, extra={"factory": src.factory, "factory_options": src.options,
                                        "report": report.to_dict()}, overwrite=args.overwrite)
        record.save(outputs[1], overwrite=args.overwrite)
        return sparse, []
    save(small, out, record=record, factory=src.factory, factory_options=src.options, overwrite=args.overwrite)
    return small, []


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------

def _bytes_written(outputs: list[Path]) -> int:
    files = [f for p in outputs for f in ([p] if p.is_file() else p.rglob("*"))]
    return sum(f.stat().st_size for f in files if f.is_file())


def _latencies(source: nn.Module, exported: nn.Module, example) -> dict[str, float]:
    """Median seconds of one forward pass of each, alternating, one thread."""
    with ExitStack() as stack:
        for m in (source, exported):
            stack.enter_context(evaluation_mode(m))
        return paired_medians({"source": lambda: source(example), "exported": lambda: exported(example)},
                              repeats=30, threads={"source": 1, "exported": 1})


def run(args) -> int:
    source_path, out = Path(args.source), Path(args.out)
    outputs = _outputs(out, args.format)
    _check_arguments(args, source_path, outputs)
    src = _read_source(source_path, args)
    data_name = args.data or src.data
    data = dataset_from(data_name) if data_name else None
    exported, notes = _write(src, data, data_name, args, outputs)
    before, after = parameter_counts(src.model), parameter_counts(exported)
    latency = _latencies(src.model, exported, src.example)
    rows = [{"": "parameters", "source": before["total"], "exported": after["total"]},
            {"": "non-zero parameters", "source": before["nonzero"], "exported": after["nonzero"]},
            {"": "bytes (source: float32 tensors; exported: files)", "source": model_bytes(plain_copy(src.model)),
             "exported": _bytes_written(outputs)},
            {"": f"latency batch {src.example.shape[0]} (ms, 1 thread)", "source": round(1e3 * latency["source"], 3),
             "exported": round(1e3 * latency["exported"], 3)}]
    if data is not None:
        rows.append({"": f"test accuracy ({data_name})", "source": round(evaluate(src.model, data.test)["accuracy"], 4),
                     "exported": round(evaluate(exported, data.test)["accuracy"], 4)})
    print(format_table(rows))
    for note in notes:
        print(note)
    print(f"wrote {', '.join(map(str, outputs))} ({_bytes_written(outputs):,} bytes, format {args.format})")
    return 0
