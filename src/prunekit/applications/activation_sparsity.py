"""Runtime activation sparsity: how many multiplications an EIE-style engine would skip.

An engine like EIE (Han et al. 2016) stores weights sparsely *and* skips zero inputs, so a
multiply-accumulate happens only where both the weight and the activation it meets are
non-zero. For every Linear / Conv layer, summed over the data (N examples) and reported
per example (FLOPs = 2 · MACs):

    dense       Σ over output positions of the MACs the layer's shape implies
    weights     MACs with a non-zero weight                (weight sparsity alone)
    activations MACs with a non-zero input activation      (activation sparsity alone)
    both        MACs with both non-zero                    (what EIE executes)

Linear, input a (rows m, features j), weight W:   both = Σ_m Σ_j [a_mj ≠ 0] · ‖W[:, j]‖₀.
Convolutions: the counts are the convolution of the indicator tensors [a ≠ 0] and [w ≠ 0]
(ones for "dense") with the layer's own stride, padding, dilation and groups, so border
positions that meet padding are not counted. `input zeros` is the fraction of exactly
zero entries in the layer's input over the data.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.utils.parametrize import type_before_parametrizations
from torch.utils.data import TensorDataset

from ..errors import PrunekitError
from ..modes import evaluation_mode

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_COUNTED = (nn.Linear, *_CONVS)
KINDS = ("dense", "weights", "activations", "both")


def _batches(data, batch_size: int) -> Iterable[torch.Tensor]:
    if isinstance(data, torch.Tensor):
        yield data
    elif isinstance(data, TensorDataset):
        x = data.tensors[0]
        for start in range(0, len(x), batch_size):
            yield x[start:start + batch_size]
    else:
        for batch in data:
            yield batch[0] if isinstance(batch, (tuple, list)) else batch


def _macs(module: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """The four MAC counts of one call of `module` on input x (summed over the batch)."""
    w = module.weight.detach()
    active_x, active_w = (x != 0).to(w.dtype), (w != 0).to(w.dtype)
    if isinstance(module, nn.Linear):
        rows = active_x.reshape(-1, w.shape[1])
        per_input_column = active_w.sum(0)           # ‖W[:, j]‖₀
        return {"dense": rows.shape[0] * w.numel(), "weights": rows.shape[0] * float(active_w.sum()),
                "activations": float(rows.sum()) * w.shape[0],
                "both": float((rows @ per_input_column).sum())}
    # _conv_forward applies the layer's own padding mode, stride, dilation and groups
    ones_x, ones_w = torch.ones_like(active_x), torch.ones_like(active_w)
    return {kind: float(module._conv_forward(a, b, None).double().sum())
            for kind, (a, b) in {"dense": (ones_x, ones_w), "weights": (ones_x, active_w),
                                 "activations": (active_x, ones_w), "both": (active_x, active_w)}.items()}


def activation_sparsity(model: nn.Module, data, *, batch_size: int = 500) -> list[dict]:
    """One row per Linear / Conv layer (and a 'total' row): input zeros and the FLOPs per
    example that dense, weight-sparse, activation-sparse and EIE-style execution perform.

    `data`: a tensor (one batch), a TensorDataset (inputs = its first tensor) or an iterable
    of batches (tensors, or tuples whose first element is the input). Run in eval mode; the
    model's mode is restored and every hook removed.
    """
    layers = {name: m for name, m in model.named_modules() if isinstance(m, _COUNTED)}
    if not layers:
        raise PrunekitError("The model has no Linear or Conv layers to report on.")
    stats = {name: {"zeros": 0, "entries": 0, **{k: 0.0 for k in KINDS}} for name in layers}
    examples = 0

    def hook(name):
        def record(module, args, output):
            x = args[0].detach()
            entry = stats[name]
            entry["zeros"] += int((x == 0).sum())
            entry["entries"] += x.numel()
            for kind, value in _macs(module, x).items():
                entry[kind] += value
        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in layers.items()]
    try:
        with evaluation_mode(model), torch.no_grad():
            for x in _batches(data, batch_size):
                model(x)
                examples += len(x)
    finally:
        for handle in handles:
            handle.remove()
    if examples == 0:
        raise PrunekitError("No data: pass a tensor, a TensorDataset or batches with at least one example.")
    rows = []
    for name, module in layers.items():
        entry = stats[name]
        if entry["entries"] == 0:
            continue  # a layer the forward pass never called
        rows.append(_row(name, type_before_parametrizations(module).__name__, entry, examples))
    totals = {"zeros": sum(stats[r["layer"]]["zeros"] for r in rows),
              "entries": sum(stats[r["layer"]]["entries"] for r in rows),
              **{k: sum(stats[r["layer"]][k] for r in rows) for k in KINDS}}
    rows.append(_row("total", "", totals, examples))
    return rows


def _row(name: str, kind: str, entry: dict, examples: int) -> dict:
    flops = {k: 2 * entry[k] / examples for k in KINDS}
    return {"layer": name, "type": kind, "input zeros": entry["zeros"] / entry["entries"],
            "dense FLOPs": flops["dense"], "weight-sparse FLOPs": flops["weights"],
            "activation-sparse FLOPs": flops["activations"], "both (EIE) FLOPs": flops["both"],
            "skipped": 1 - flops["both"] / flops["dense"] if flops["dense"] else 0.0}
