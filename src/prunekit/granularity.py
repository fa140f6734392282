"""Granularities: ways of grouping one weight tensor into prunable units.

A granularity maps every element of a tensor to a unit id; a unit's score aggregates the
element-wise criterion scores of its members; pruning a unit zeroes all of them.

    element      every weight alone                                  any shape
    kernel_row   one 1×k_w row of a kernel (vector level)            conv weight (O, I, k_h, k_w)
    kernel_col   one k_h×1 column of a kernel                         conv weight (O, I, k_h, k_w)
    kernel       the whole k_h×k_w kernel of one (output, input) pair conv weight (O, I, ...)
    in_channel   everything that reads input channel i               weight (O, I, ...)
    out_channel  filter o: everything that writes output channel o   weight (O, ...)
    neuron       a Linear output neuron (a row of the weight)         weight (O, I)
    blockRxC     an R×C tile of the matrix view (O, rest): block4x4,   weight (O, ...)
                 block8x8, block16x16 (torch's square BSR blocks),
                 block1x4 (one row, 4 inputs), block4x1 (4 rows, one
                 input); edge tiles are smaller when R or C does not
                 divide the dimension

Aggregation of scores s over a unit U (`how`):
    l1: Σ|s|     l2: (Σ s²)^½     lp: (Σ|s|^p)^(1/p)     sum: Σ s     mean: Σ s / |U|     max: max s

These units live inside one tensor. Pruning a filter *together with* the BN channel and the
consumer's input channel it feeds is the dependency graph's job (prunekit.graph).

N:M sparsity keeps the N largest of every M consecutive weights along the input dimension
(2:4 — two of every four weights are zero — is what sparse tensor cores accelerate).
"""

from __future__ import annotations

import math

import torch

from .errors import AmountError, PrunekitError, did_you_mean

GRANULARITIES = ("element", "kernel_row", "kernel_col", "kernel", "in_channel", "out_channel", "neuron",
                 "block4x4", "block8x8", "block16x16", "block1x4", "block4x1")
AGGREGATIONS = ("l1", "l2", "lp", "sum", "mean", "max")
NORM_AGGREGATIONS = ("l1", "l2", "lp")  # Σ|s|^p over a unit: the scores' signs do not matter

# The dimensions whose index identifies a unit, and the smallest rank the tensor must have.
_KEY_DIMS = {
    "kernel_row": ((0, 1, 2), 4),
    "kernel_col": ((0, 1, 3), 4),
    "kernel": ((0, 1), 3),
    "in_channel": ((1,), 2),
    "out_channel": ((0,), 1),
    "neuron": ((0,), 2),
}


# (rows, columns) of one block on a weight's matrix view (shape[0], numel / shape[0]): the
# layout a sparse kernel sees (a conv weight as its (O, I·k·k) matrix).
_BLOCK_SHAPES = {"block4x4": (4, 4), "block8x8": (8, 8), "block16x16": (16, 16), "block1x4": (1, 4),
                 "block4x1": (4, 1)}


def check_granularity(granularity: str) -> None:
    if granularity not in GRANULARITIES:
        raise PrunekitError(f"Unknown granularity '{granularity}'.{did_you_mean(granularity, GRANULARITIES)} "
                            f"Known: {', '.join(GRANULARITIES)}.")


def fits(shape, granularity: str) -> bool:
    """Whether a tensor of this shape can be split into units of `granularity`."""
    check_granularity(granularity)
    if granularity == "element":
        return True
    if granularity == "neuron":
        return len(shape) == 2
    if granularity in _BLOCK_SHAPES:
        return len(shape) >= 2
    return len(shape) >= _KEY_DIMS[granularity][1]


def unit_ids(shape, granularity: str, name: str = "tensor") -> tuple[torch.Tensor, int]:
    """(ids, n_units): ids has `shape` and holds each element's unit index in [0, n_units)."""
    check_granularity(granularity)
    shape = tuple(shape)
    numel = math.prod(shape)
    if granularity == "element":
        return torch.arange(numel).reshape(shape), numel
    if granularity in _BLOCK_SHAPES:
        if not fits(shape, granularity):
            raise PrunekitError(f"Granularity '{granularity}' needs a weight of rank ≥ 2, but '{name}' has shape "
                                f"{list(shape)}. Restrict params= to weight matrices and kernels.")
        (bh, bw), rows, cols = _BLOCK_SHAPES[granularity], shape[0], numel // shape[0]
        per_row = -(-cols // bw)  # blocks per block-row, counting a smaller edge block
        ids = (torch.arange(rows) // bh)[:, None] * per_row + (torch.arange(cols) // bw)[None, :]
        return ids.reshape(shape), -(-rows // bh) * per_row
    dims, min_rank = _KEY_DIMS[granularity]
    if not fits(shape, granularity):
        need = "a 2-D Linear weight" if granularity == "neuron" else f"a tensor of rank ≥ {min_rank}"
        raise PrunekitError(f"Granularity '{granularity}' needs {need}, but '{name}' has shape {list(shape)}. "
                            "Choose a granularity that fits, or restrict params= to suitable layers.")
    grids = torch.meshgrid(*[torch.arange(shape[d]) for d in dims], indexing="ij")
    ids = torch.zeros(tuple(shape[d] for d in dims), dtype=torch.long)
    for d, grid in zip(dims, grids):
        ids = ids * shape[d] + grid
    # Broadcast the per-key ids over the remaining dimensions.
    view = [shape[d] if d in dims else 1 for d in range(len(shape))]
    return ids.reshape(view).expand(shape).contiguous(), math.prod(shape[d] for d in dims)


def aggregate(scores: torch.Tensor, ids: torch.Tensor, n_units: int, how: str = "l2", p: float = 2.0) -> torch.Tensor:
    """One score per unit from element scores (see the module docstring for the formulas)."""
    if how not in AGGREGATIONS:
        raise PrunekitError(f"Unknown aggregation '{how}'.{did_you_mean(how, AGGREGATIONS)} "
                            f"Known: {', '.join(AGGREGATIONS)}.")
    s, idx = scores.detach().double().reshape(-1), ids.reshape(-1)
    if how == "max":
        return torch.full((n_units,), -math.inf, dtype=s.dtype).scatter_reduce(0, idx, s, "amax")
    power = {"l1": 1.0, "l2": 2.0, "lp": p}.get(how)
    values = s.abs() ** power if power is not None else s
    total = torch.zeros(n_units, dtype=s.dtype).index_add_(0, idx, values)
    if how == "mean":
        return total / torch.bincount(idx, minlength=n_units).clamp(min=1)
    return total ** (1.0 / power) if power is not None else total


def expand(unit_keep: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Element keep-mask from a per-unit keep vector."""
    return unit_keep[ids]


def unit_scores(scores: torch.Tensor, existing: torch.Tensor | None, granularity: str, how: str = "l2",
                p: float = 2.0, name: str = "tensor") -> tuple[torch.Tensor, torch.Tensor]:
    """(per-unit scores, ids). Pruned elements count as zero; fully pruned units rank lowest (−inf)."""
    ids, n_units = unit_ids(scores.shape, granularity, name)
    s = scores.detach().double()
    if existing is not None:
        s = torch.where(existing.to(s.device), s, torch.zeros((), dtype=s.dtype))
    per_unit = aggregate(s, ids, n_units, how, p)
    if existing is not None:
        alive = torch.zeros(n_units, dtype=torch.long).index_add_(0, ids.reshape(-1), existing.reshape(-1).long().cpu())
        per_unit[alive == 0] = -math.inf
    return per_unit, ids


def check_nm(n, m) -> None:
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
        raise AmountError(f"N:M needs integers 0 < N < M (e.g. 2:4), not {n}:{m}.")


def nm_mask(scores: torch.Tensor, n: int, m: int, dim: int = 1, name: str = "tensor") -> torch.Tensor:
    """Keep-mask keeping the n highest scores of every m consecutive entries along `dim`.

    Exactly m − n zeros per group; ties go to the earlier position (pruned first).
    """
    check_nm(n, m)
    if scores.dim() == 1:
        dim = 0
    size = scores.shape[dim]
    if size % m:
        raise AmountError(f"'{name}' has {size} entries along dim {dim}, not divisible by M={m}; "
                          f"exclude it with params= or choose M dividing {size}.")
    moved = scores.detach().movedim(dim, -1)
    groups = moved.reshape(-1, m)
    order = torch.argsort(groups.double(), dim=1, stable=True)
    keep = torch.ones_like(groups, dtype=torch.bool)
    keep.scatter_(1, order[:, : m - n], False)
    return keep.reshape(moved.shape).movedim(-1, dim)
