"""What a pruned model costs: sparsity, parameters, bytes and FLOPs.

Definitions (seed 001): for a tensor with d entries of which s are zero, the sparsity is
s/d, the density ρ = 1 − s/d, and ‖w‖₀ = d − s is its ℓ0 "norm" (non-zero count). Counts
are taken on the tensor the forward pass sees (w ⊙ m), so they hold whether a zero comes
from a mask or from training.

Bytes: dense = d · value_bits/8. Two compressed layouts are priced for every weight:
  * bitmask: the non-zero values plus one bit per entry;
  * CSR over the tensor viewed as (rows = shape[0], cols = d / rows): the values, a column
    index of ⌈log2 cols⌉ bits per value, and rows+1 row pointers of ⌈log2(nnz+1)⌉ bits.
A tensor is stored in whichever of dense / bitmask / CSR is smallest ("compressed").

FLOPs: torch.utils.flop_counter counts the dense model (2 FLOPs per multiply-accumulate).
For Linear and Conv layers (and any layer whose LayerHandler counts MACs) the sparse count
uses only non-zero weights: every output position of a layer multiplies each non-zero weight
of its filter once, so MACs = (output elements / output channels) · ‖W‖₀ — exact for Linear,
and for convolutions up to the zero padding at the borders.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .graph import Handlers, LayerHandler
from .masks import MaskSet, effective_weight, get_masks, named_parameters
from .modes import evaluation_mode
from .nested import ExampleInputs


@dataclass(frozen=True)
class TensorStats:
    name: str
    shape: tuple
    numel: int
    nonzero: int
    dense_bytes: int
    compressed_bytes: int
    layout: str

    @property
    def density(self) -> float:
        return self.nonzero / self.numel if self.numel else 1.0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    def as_row(self) -> dict:
        row = asdict(self)
        row["shape"] = "×".join(map(str, self.shape))
        row["sparsity"] = round(self.sparsity, 6)
        return row


def _bits_for(n: int) -> int:
    """Bits to store an index in [0, n)."""
    return max(1, math.ceil(math.log2(n))) if n > 1 else 1


def storage_bytes(tensor: torch.Tensor, value_bits: int | None = None) -> dict[str, int]:
    """Bytes of `tensor` as dense, bitmask and CSR, and the smallest ('compressed', 'layout')."""
    value_bits = value_bits or tensor.element_size() * 8
    numel = tensor.numel()
    nnz = int(torch.count_nonzero(tensor))
    dense = math.ceil(numel * value_bits / 8)
    sizes = {"dense": dense, "bitmask": math.ceil((nnz * value_bits + numel) / 8)}
    if tensor.dim() >= 2:
        rows = tensor.shape[0]
        cols = numel // rows
        bits = nnz * (value_bits + _bits_for(cols)) + (rows + 1) * _bits_for(nnz + 1)
        sizes["csr"] = math.ceil(bits / 8)
    layout = min(sizes, key=lambda k: (sizes[k], k != "dense"))
    return {**sizes, "compressed": sizes[layout], "layout": layout}


def tensor_stats(model: nn.Module, names=None) -> list[TensorStats]:
    """One row per parameter (default: all), counted on what the forward pass sees."""
    names = list(named_parameters(model)) if names is None else list(names)
    rows = []
    with torch.no_grad():
        for name in names:
            t = effective_weight(model, name)
            size = storage_bytes(t)
            rows.append(TensorStats(name, tuple(t.shape), t.numel(), int(torch.count_nonzero(t)),
                                    size["dense"], size["compressed"], size["layout"]))
    return rows


def sparsity_table(model: nn.Module, names=None) -> dict:
    """Per-tensor rows plus totals. Default rows: the masked tensors (all weights if none)."""
    if names is None:
        masked = list(get_masks(model))
        names = masked or [n for n, p in named_parameters(model).items() if p.dim() >= 2]
    rows = tensor_stats(model, names)
    numel = sum(r.numel for r in rows)
    nonzero = sum(r.nonzero for r in rows)
    return {
        "layers": [r.as_row() for r in rows],
        "total": {"numel": numel, "nonzero": nonzero,
                  "sparsity": 1 - nonzero / numel if numel else 0.0,
                  "dense_bytes": sum(r.dense_bytes for r in rows),
                  "compressed_bytes": sum(r.compressed_bytes for r in rows)},
    }


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Total parameters, non-zero parameters, and model bytes dense vs compressed."""
    rows = tensor_stats(model)
    return {"total": sum(r.numel for r in rows), "nonzero": sum(r.nonzero for r in rows),
            "dense_bytes": sum(r.dense_bytes for r in rows),
            "compressed_bytes": sum(r.compressed_bytes for r in rows)}


def count_flops(model: nn.Module, example_input, *, handlers=None) -> dict:
    """Dense and sparse FLOPs of one forward pass on `example_input` (2 FLOPs per MAC).

    `example_input`: anything prunekit.ExampleInputs.of accepts (a tensor, a tuple of positional
    inputs, a dict of keyword inputs). The dense count is torch's FLOP counter. A layer whose
    handler (built-in for conv / linear, or a registered LayerHandler with `macs`) counts its
    multiply-accumulates is priced sparse: its dense MACs are replaced by its non-zero ones.
    The model's train/eval mode, gradients and buffers are left as they were.
    """
    chain = Handlers.of(handlers)
    example = ExampleInputs.of(example_input)
    layer_macs: dict[str, tuple[int, int]] = {}
    handles = []

    def hook(name, handler):
        def record(module, inputs, output):
            macs = handler.macs(module, inputs, output)
            if macs is not None:
                dense, sparse = layer_macs.get(name, (0, 0))
                layer_macs[name] = (dense + int(macs[0]), sparse + int(macs[1]))
        return record

    try:
        for name, module in model.named_modules():
            handler = chain.lookup(module)
            if handler is not None and type(handler).macs is not LayerHandler.macs:
                handles.append(module.register_forward_hook(hook(name, handler)))
        with evaluation_mode(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
            example(model)
    finally:
        for h in handles:
            h.remove()
    dense_total = int(counter.get_total_flops())
    dense_layers = sum(2 * d for d, _ in layer_macs.values())
    sparse_layers = sum(2 * s for _, s in layer_macs.values())
    return {
        "dense_flops": dense_total,
        "sparse_flops": dense_total - dense_layers + sparse_layers,
        "layers": {n: {"dense_macs": d, "sparse_macs": s} for n, (d, s) in layer_macs.items()},
    }


def summary(model: nn.Module, example_input=None) -> dict:
    """Sparsity, parameter and byte counts, and (given an input) FLOPs, as one dict."""
    out = {"params": parameter_counts(model), "sparsity": sparsity_table(model)}
    if example_input is not None:
        flops = count_flops(model, example_input)
        out["flops"] = {k: flops[k] for k in ("dense_flops", "sparse_flops")}
    masks: MaskSet = get_masks(model)
    out["masked_tensors"] = len(masks)
    return out
