"""Masked layers → sparse layers, each format chosen by measured latency on this machine.

    sparse_model, report = to_sparse(model, example_inputs)   # example batch = deployment batch
    print(report.table())

For every Linear / Conv2d that the example inputs reach, the candidates are

    dense   the layer as it is (masks baked in);
    csr     SparseLinear / SparseConv2d holding the non-zeros in CSR;
    bsrB    the same in B×B blocks, for each B in `block_sizes` that divides both dimensions
            of the weight matrix and whose non-zero blocks are at least `min_fill` (75 %) full
            (otherwise BSR would mostly store zeros: the mask has no block structure).

Each candidate is timed on the very input the layer received (so at the user's batch size),
candidates alternating, and compared by their fastest run (prunekit.surgery.timing: other
processes only add time). A sparse layout is kept only when it beats dense by more than
`margin` (default 5 %), so a tie never makes a layer slower. Layers below `min_sparsity`
(50 %) are not measured at all: on CPUs sparse kernels do not pay there.

The whole choice is repeated for every thread count in `threads`; then the dense and sparse
models of every thread count are timed together, and the count whose sparse model has the
lowest median latency is kept and recorded in the report: small sparse models often lose
to contention on a second thread, and the median sees contention.
"""

from __future__ import annotations

import copy
import math
import statistics
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import PrunekitError
from ..modes import evaluation_mode
from ..nested import tensors_in
from ..table import format_table
from .common import call, matrix_view, plain_copy, relative_error, replace_module
from .sparse_layers import sparse_module, supports_conv
from .timing import fastest, model_latencies, num_threads, paired_times

FORMATS = ("csr", "bsr")


@dataclass
class SparseReport:
    """What to_sparse measured and chose: one row per layer, and the thread count kept."""

    rows: list[dict]
    threads: int
    latency_ms: dict[int, dict[str, float]] = field(default_factory=dict)  # threads → {"dense", "sparse"}
    batch: int | None = None
    max_relative_error: float | None = None

    def table(self) -> str:
        columns = ["layer", "shape", "sparsity", "dense_ms", "csr_ms", "bsr_ms", "chosen", "speedup", "why"]
        rows = [{**r, "sparsity": round(r["sparsity"], 4)} for r in self.rows]
        lines = [format_table(rows, columns)]
        for t, lat in sorted(self.latency_ms.items()):
            mark = "  ← kept" if t == self.threads else ""
            lines.append(f"threads={t}: dense {lat['dense']:.4g} ms, sparse {lat['sparse']:.4g} ms "
                         f"({lat['dense'] / lat['sparse']:.2f}×){mark}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"rows": self.rows, "threads": self.threads, "batch": self.batch,
                "latency_ms": {str(t): v for t, v in self.latency_ms.items()},
                "max_relative_error": self.max_relative_error}


def block_fill(matrix: torch.Tensor, block: int) -> float:
    """Non-zeros ÷ entries of the non-zero block×block blocks (1.0: the mask is made of whole blocks)."""
    rows, cols = matrix.shape
    blocks = matrix.reshape(rows // block, block, cols // block, block).ne(0).any(dim=(1, 3))
    stored = int(blocks.sum()) * block * block
    return int(matrix.count_nonzero()) / stored if stored else 1.0


def candidate_layouts(matrix: torch.Tensor, formats, block_sizes, min_fill: float) -> tuple[dict, str]:
    """({candidate name: (layout, block)}, a note on the BSR block sizes left out and why)."""
    found, undivided, unfilled = {}, [], []
    if "csr" in formats:
        found["csr"] = ("csr", None)
    for b in block_sizes if "bsr" in formats else ():
        if matrix.shape[0] % b or matrix.shape[1] % b:
            undivided.append(str(b))
        elif (fill := block_fill(matrix, b)) < min_fill:
            unfilled.append((str(b), fill))
        else:
            found[f"bsr{b}"] = ("bsr", b)
    notes = []
    if undivided:
        notes.append(f"bsr{'/'.join(undivided)}: shape not divisible")
    if unfilled:
        notes.append(f"bsr{'/'.join(b for b, _ in unfilled)}: blocks ≤ {max(f for _, f in unfilled):.0%} full")
    return found, "; ".join(notes)


def _layer_inputs(model: nn.Module, example_inputs, layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """The first input each layer receives on `example_inputs` (eval mode, no gradients)."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in layers.items():
        def record(mod, args, name=name):
            seen.setdefault(name, args[0].detach())
        handles.append(module.register_forward_pre_hook(record))
    try:
        with evaluation_mode(model), torch.no_grad():
            call(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    return seen


def _why_not(module: nn.Module) -> str | None:
    """Why a layer has no sparse kernel here, or None when it has one."""
    if isinstance(module, nn.Conv2d) and not supports_conv(module):
        return "no sparse kernel (grouped conv or non-zero padding mode)"
    if module.weight.dtype not in (torch.float32, torch.float64):
        return f"no CPU sparse kernel for {module.weight.dtype}"
    return None


@dataclass(frozen=True)
class ChoiceSettings:
    """How to_sparse chooses a layer's format (see its docstring)."""

    formats: tuple = FORMATS
    block_sizes: tuple = (4, 8, 16)
    min_fill: float = 0.75
    min_sparsity: float = 0.5
    margin: float = 0.05
    force: str | None = None
    repeats: int = 20

    def __post_init__(self):
        unknown = set(self.formats) - set(FORMATS)
        if unknown:
            raise PrunekitError(f"Unknown sparse formats {sorted(unknown)}; choose from {FORMATS}.")
        if any(not (isinstance(b, int) and b >= 1) for b in self.block_sizes):
            raise PrunekitError(f"block_sizes must be positive integers (torch's CPU BSR needs square blocks), "
                                f"not {self.block_sizes!r}.")
        if not 0 <= self.margin < 1:
            raise PrunekitError(f"margin is the fraction a sparse layer must beat dense by, in [0, 1); "
                                f"got {self.margin!r}.")
        valid = {"csr"} | {f"bsr{b}" for b in self.block_sizes}
        if self.force is not None and self.force not in valid:
            raise PrunekitError(f"force={self.force!r} is not a candidate; use one of {sorted(valid)} or None to "
                                "measure.")
        if not (isinstance(self.repeats, int) and self.repeats >= 1):
            raise PrunekitError(f"repeats must be a positive integer, not {self.repeats!r}.")


def _row(name: str, module: nn.Module, matrix: torch.Tensor, **fields) -> dict:
    return {"layer": name, "type": type(module).__name__, "shape": "×".join(map(str, module.weight.shape)),
            "sparsity": 1.0 - int(matrix.count_nonzero()) / matrix.numel(), "dense_ms": "", "csr_ms": "",
            "bsr_ms": "", "chosen": "dense", "speedup": 1.0, "why": "", "times_ms": {}, "speedups": {}, **fields}


def _choose(name, module, x, matrix, settings: ChoiceSettings) -> tuple[dict, nn.Module | None]:
    """(report row, the chosen sparse module or None for dense) for one layer at the current thread count."""
    row = _row(name, module, matrix)
    reason = _why_not(module)
    if reason is not None:
        return {**row, "why": reason}, None
    if settings.force is None and row["sparsity"] < settings.min_sparsity:
        return {**row, "why": f"sparsity {row['sparsity']:.0%} < min_sparsity {settings.min_sparsity:.0%}, "
                              "not measured"}, None
    found, note = candidate_layouts(matrix, settings.formats, settings.block_sizes, settings.min_fill)
    if settings.force is not None:
        if settings.force not in found:
            return {**row, "why": f"{settings.force} not possible here ({note or 'format not allowed'})"}, None
        layout, block = found[settings.force]
        return {**row, "chosen": settings.force, "speedup": math.nan, "why": "forced"}, \
            sparse_module(module, layout, block)
    if not found:
        return {**row, "why": note or "no sparse format allowed"}, None
    built = {c: sparse_module(module, layout, block) for c, (layout, block) in found.items()}
    runs = {"dense": lambda: module(x), **{c: (lambda m=m: m(x)) for c, m in built.items()}}
    ms = {c: 1e3 * t for c, t in fastest(paired_times(runs, repeats=settings.repeats)).items()}
    gains = {c: ms["dense"] / ms[c] for c in built}
    best = max(gains, key=gains.get)
    bsr = [c for c in built if c.startswith("bsr")]
    row.update(dense_ms=ms["dense"], csr_ms=ms.get("csr", ""), times_ms=ms, speedups=gains, speedup=gains[best],
               bsr_ms=f"{min(ms[c] for c in bsr):.4g} ({min(bsr, key=ms.get)})" if bsr else "")
    note = f"; {note}" if note else ""
    needed = 1 / (1 - settings.margin)
    if gains[best] > needed:
        return {**row, "chosen": best, "why": f"{best} {gains[best]:.2f}× faster than dense{note}"}, built[best]
    return {**row, "speedup": 1.0, "why": f"fastest sparse ({best}) {gains[best]:.2f}× dense, needs > "
                                          f"{needed:.2f}×{note}"}, None


def to_sparse(model: nn.Module, example_inputs, *, formats=FORMATS, block_sizes=(4, 8, 16), threads=(1, 2),
              margin: float = 0.05, min_fill: float = 0.75, min_sparsity: float = 0.5, force: str | None = None,
              repeats: int = 20, rtol: float = 1e-5) -> tuple[nn.Module, SparseReport]:
    """(sparse copy of `model`, SparseReport): Linear / Conv2d layers replaced where a sparse kernel is faster.

    `example_inputs` (a tensor, tuple or dict) should have the deployment batch size: every
    layer is timed on the input it receives from them. `force="csr"` (or "bsr16" …) converts
    every layer that allows it without measuring, e.g. when deploying to another machine.
    The copy's outputs are checked against the masked model's (relative error ≤ rtol, else
    PrunekitError). `model` itself, masks included, is never changed.
    """
    settings = ChoiceSettings(tuple(formats), tuple(block_sizes), min_fill, min_sparsity, margin, force, repeats)
    threads = tuple(dict.fromkeys(threads))
    if not threads or any(not (isinstance(t, int) and t >= 1) for t in threads):
        raise PrunekitError(f"threads must list positive thread counts to measure, e.g. (1, 2), not {threads!r}.")
    plain = plain_copy(model)
    layers = {n: m for n, m in plain.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    inputs = _layer_inputs(plain, example_inputs, layers)
    matrices = {n: matrix_view(m.weight.detach()) for n, m in layers.items()}
    first = next(iter(tensors_in(example_inputs)), None)
    batch = int(first.shape[0]) if first is not None and first.dim() else None
    candidates, rows_by_threads = {}, {}
    with evaluation_mode(plain):
        for t in threads:
            with num_threads(t):
                rows, sparse = [], copy.deepcopy(plain)
                for name, module in layers.items():
                    if name not in inputs:
                        rows.append(_row(name, module, matrices[name], why="not reached by example_inputs"))
                        continue
                    row, chosen = _choose(name, module, inputs[name], matrices[name], settings)
                    rows.append({**row, "threads": t})
                    if chosen is not None:
                        replace_module(sparse, sparse.get_submodule(name), chosen)
            candidates[t], rows_by_threads[t] = sparse, rows
        # One paired measurement of every thread count, dense and sparse, so the comparison is fair.
        models = {f"{kind}@{t}": (plain if kind == "dense" else candidates[t]) for t in threads
                  for kind in ("dense", "sparse")}
        times = model_latencies(models, example_inputs, repeats=repeats, threads={k: int(k.split("@")[1])
                                                                                    for k in models})
        latency = {t: {kind: 1e3 * statistics.median(times[f"{kind}@{t}"]) for kind in ("dense", "sparse")}
                   for t in threads}
        threads_kept = min(threads, key=lambda t: latency[t]["sparse"])
        sparse, rows = candidates[threads_kept], rows_by_threads[threads_kept]
        with torch.no_grad(), evaluation_mode(sparse):
            error = relative_error(call(plain, example_inputs), call(sparse, example_inputs))
    if not error <= rtol:
        raise PrunekitError(f"The sparse model's outputs differ from the masked model's (relative error {error:.2e} "
                            f"> {rtol:g}); nothing was changed. Please report this model.")
    return sparse, SparseReport(rows, threads_kept, latency, batch, error)
