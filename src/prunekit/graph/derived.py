"""Weights computed from parameters: which parameter axis each axis of the result follows.

Weight standardisation (w − mean) / std, `weight_norm` (g · v / ‖v‖), `self.weight.t()`,
`gain.reshape(-1)` … are computed from parameters alone, before a conv or linear layer uses
the result. Instead of labelling every weight element with an atom, a computed tensor keeps
an *alignment* per source parameter: for each of its axes, the source axes laid along it
(`()` where it is broadcast, several where a reshape merged them). Layers then couple the
source's axes with their channels exactly as they would a parameter's own.

A statistic over a source axis (mean, var, batch_norm of a weight) makes that axis *mixed*:
removing one position changes the values of the others, so the channels that axis meets are
blocked, and the reason names the operation. Sums and norms over an axis are exact under
removal when the removed positions are zero (masked) and every op so far kept zeros at zero
(`zero_preserving`), as in `weight_norm`: those axes stay free.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

Alignment = tuple[tuple[int, ...], ...]


@dataclass
class Derived:
    align: dict[str, Alignment]                             # source → source axes per axis of this tensor
    mixed: dict[str, dict[int, str]] = field(default_factory=dict)   # source → {source axis: why}
    zero_preserving: bool = True

    def with_mixed(self, name: str, axes, reason: str) -> None:
        entry = self.mixed.setdefault(name, {})
        for a in axes:
            entry.setdefault(a, reason)


def identity(name: str, ndim: int) -> Derived:
    return Derived({name: tuple((d,) for d in range(ndim))})


ZERO_PRESERVING_UNARY = {
    "neg", "negative", "abs", "square", "sqrt", "sin", "tanh", "relu", "sign", "sgn", "to", "type", "type_as",
    "float", "double", "half", "bfloat16", "contiguous", "clone", "detach", "cpu", "cuda", "alias", "data",
    "requires_grad", "trunc", "round",
}
ZERO_PRESERVING_NARY = {"mul", "rmul", "imul", "multiply", "div", "truediv", "itruediv", "divide", "true_divide"}
ZERO_NEUTRAL_REDUCTIONS = {"sum", "nansum", "norm", "linalg_vector_norm", "vector_norm"}
RESHAPES = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "expand", "expand_as", "view_as",
            "reshape_as", "broadcast_to", "contiguous", "ravel"}
PERMUTATIONS = {"permute", "transpose", "t", "T", "mT", "movedim", "moveaxis", "swapaxes", "swapdims"}


def _source_sizes(shapes, name: str, axes) -> int:
    size = 1
    for a in axes:
        size *= shapes[name][a]
    return size


def elementwise(trace, name, operands, out: torch.Tensor, args=()) -> Derived:
    """Broadcast each operand's alignment to the output; an axis meeting two different source
    axes, or a constant of fixed size, is mixed."""
    result = Derived({}, {}, True)
    where = f"'{name}' in {trace.where()}"
    for t, d in operands:
        if d is None:  # a constant operand
            if isinstance(t, torch.Tensor) and t.numel() > 1:
                fixed = {out.dim() - t.dim() + i for i in range(t.dim()) if t.shape[i] > 1}
                for other_t, other in operands:
                    if other is None:
                        continue
                    other_offset = out.dim() - other_t.dim()
                    for src, align in other.align.items():
                        axes = [a for dim in fixed if dim >= other_offset for a in align[dim - other_offset]
                                if trace.shapes[src][a] > 1]
                        result.with_mixed(src, axes, f"{where} combines {src} with a constant tensor of fixed size")
            continue
        offset = out.dim() - t.dim()
        for src, align in d.align.items():
            full = ((),) * offset + tuple(align)
            if src not in result.align:
                result.align[src] = full
                continue
            merged = []
            for dim, (have, new) in enumerate(zip(result.align[src], full)):
                have_real = tuple(a for a in have if trace.shapes[src][a] > 1)
                new_real = tuple(a for a in new if trace.shapes[src][a] > 1)
                if have_real and new_real and have_real != new_real:
                    result.with_mixed(src, have_real + new_real, f"{where} combines different axes of {src}")
                merged.append(have if have_real else new)
            result.align[src] = tuple(merged)
        for src, axes in d.mixed.items():
            for a, why in axes.items():
                result.mixed.setdefault(src, {}).setdefault(a, why)
    sources = [d for _, d in operands if d is not None]
    if name in ZERO_PRESERVING_NARY:
        first = operands[0][1]
        divides = name in ("div", "truediv", "itruediv", "divide", "true_divide")
        result.zero_preserving = (first is not None and first.zero_preserving) if divides else all(
            d.zero_preserving for d in sources)
    elif name in ZERO_PRESERVING_UNARY or (name == "pow" and len(args) > 1 and isinstance(args[1], (int, float))
                                           and args[1] > 0):  # w ** 2 keeps zeros at zero
        result.zero_preserving = all(d.zero_preserving for d in sources)
    else:
        result.zero_preserving = False
    return result


def reduction(trace, name, d: Derived, ndim: int, dims: list[int], keepdim: bool) -> Derived:
    """Reduce over `dims`: the source axes there are folded in; a count-dependent statistic
    (mean, var, max …) makes them mixed."""
    exact = name in ZERO_NEUTRAL_REDUCTIONS and d.zero_preserving
    result = Derived({}, {k: dict(v) for k, v in d.mixed.items()}, False)
    for src, align in d.align.items():
        folded = [a for dim in dims for a in align[dim] if trace.shapes[src][a] > 1]
        if folded and not exact:
            result.with_mixed(src, folded, f"'{name}' in {trace.where()} computes a statistic over axis "
                                           f"{folded[0]} of {src} (removing a position changes the others)")
        result.align[src] = tuple(() if dim in dims else a for dim, a in enumerate(align)
                                  if keepdim or dim not in dims)
    return result


def permutation(func, args, kwargs, x: torch.Tensor) -> list[int] | None:
    """Which input axis each output axis of a permuting op comes from (from the strides of a
    meta tensor whose strides are distinct)."""
    strides = [1 << i for i in range(x.dim())]
    probe = torch.empty_strided(tuple(x.shape), strides, device="meta")
    try:
        out = func(probe, *args[1:], **kwargs)
    except Exception:  # noqa: BLE001 - a call the probe cannot repeat: not followed
        return None
    order = []
    for s, n in zip(out.stride(), out.shape):
        if s in strides and n == x.shape[strides.index(s)]:
            order.append(strides.index(s))
        else:
            return None
    return order


def permuted(d: Derived, order: list[int]) -> Derived:
    return Derived({src: tuple(align[i] for i in order) for src, align in d.align.items()},
                   {k: dict(v) for k, v in d.mixed.items()}, d.zero_preserving)


def reshaped(trace, name, d: Derived, in_shape, out_shape) -> Derived:
    """Map the alignment through a reshape / view / expand by matching products of sizes."""
    result = Derived({}, {k: dict(v) for k, v in d.mixed.items()}, d.zero_preserving)
    out_shape = tuple(out_shape)
    in_dims = [i for i, n in enumerate(in_shape) if n > 1]
    out_dims = [j for j, n in enumerate(out_shape) if n > 1]
    expanded = len(in_shape) <= len(out_shape) and all(
        a == b or a == 1 for a, b in zip(in_shape, out_shape[len(out_shape) - len(in_shape):]))
    for src, align in d.align.items():
        new: list[tuple[int, ...]] = [()] * len(out_shape)
        if name in ("expand", "expand_as", "broadcast_to") and expanded:
            offset = len(out_shape) - len(in_shape)
            for i, a in enumerate(align):
                if in_shape[i] == out_shape[offset + i]:
                    new[offset + i] = a
            result.align[src] = tuple(new)
            continue
        i = j = 0
        while i < len(in_dims) and j < len(out_dims):
            group_in, group_out = [in_dims[i]], [out_dims[j]]
            p_in, p_out = in_shape[in_dims[i]], out_shape[out_dims[j]]
            i, j = i + 1, j + 1
            while p_in != p_out:
                if p_in < p_out and i < len(in_dims):
                    group_in.append(in_dims[i])
                    p_in *= in_shape[in_dims[i]]
                    i += 1
                elif p_out < p_in and j < len(out_dims):
                    group_out.append(out_dims[j])
                    p_out *= out_shape[out_dims[j]]
                    j += 1
                else:
                    break
            axes = tuple(a for dim in group_in for a in align[dim] if trace.shapes[src][a] > 1)
            if len(group_out) == 1:
                new[group_out[0]] = axes
                continue
            # one axis split into several: hand out the source axes whose sizes multiply to each
            rest = list(axes)
            for dim in group_out:
                take: list[int] = []
                while rest and _source_sizes(trace.shapes, src, take) < out_shape[dim]:
                    take.append(rest.pop(0))
                if _source_sizes(trace.shapes, src, take) != out_shape[dim]:
                    result.with_mixed(src, axes, f"'{name}' in {trace.where()} splits axes of {src} "
                                                 "in a way prunekit does not follow")
                    take = []
                new[dim] = tuple(take)
        result.align[src] = tuple(new)
    return result


def batch_norm(trace, name, d: Derived, ndim: int, channel_dim: int, training: bool) -> Derived:
    """F.batch_norm of a computed weight (scaled weight standardisation): a statistic per
    `channel_dim` over every other axis when it normalises with batch statistics."""
    if not training:
        return Derived(dict(d.align), {k: dict(v) for k, v in d.mixed.items()}, False)
    dims = [i for i in range(ndim) if i != channel_dim]
    reduced = reduction(trace, name, d, ndim, dims, True)
    reduced.align = dict(d.align)
    return reduced


def merge_per_channel(trace, base: Derived, vectors, channel_dim: int, ndim: int) -> Derived:
    """Fold 1-D per-channel sources (a norm's scale and shift) into `base` along `channel_dim`."""
    for vec in vectors:
        for src, align in vec.align.items():
            full = [()] * ndim
            full[channel_dim] = align[0] if align else ()
            prior = base.align.get(src)
            base.align[src] = tuple(full) if prior is None else prior
    return base


def weight_norm(trace, v: Derived, g: Derived | None, ndim: int, dim: int) -> Derived:
    """torch._weight_norm(v, g, dim) = g · v / ‖v‖ (norm over every axis but `dim`).

    The norm is exact under removal of masked (zero) positions of v, so v's other axes stay
    free. Along `dim`, a masked row of v would make 0/0: the unit is silenced through g alone,
    so v's axis there is sliced by compaction but never masked (`trace.unmasked`).
    """
    dim = dim % max(1, ndim) if dim is not None and dim != -1 else dim
    result = Derived(dict(v.align), {k: dict(x) for k, x in v.mixed.items()}, True)
    if not v.zero_preserving:
        for src, align in v.align.items():
            axes = [a for d, axes in enumerate(align) if d != dim for a in axes if trace.shapes[src][a] > 1]
            result.with_mixed(src, axes, f"'weight_norm' in {trace.where()} normalises a computed tensor")
    if dim is None or dim == -1:
        return result
    for src, align in v.align.items():
        for a in align[dim]:
            trace.unmasked.add((src, a))
    if g is not None:
        for src, align in g.align.items():
            full = [()] * ndim
            full[dim] = align[dim] if len(align) == ndim else (align[0] if align else ())
            result.align.setdefault(src, tuple(full))
            for k, x in g.mixed.items():
                result.mixed.setdefault(k, {}).update(x)
    return result


def indexed(trace, d: Derived, ndim: int, index) -> Derived | None:
    """w[0], w[:, :4], w[None]: basic indexing (ints, slices, None, ...) of a computed weight.

    An int drops its axis, a partial slice keeps it; either fixes positions of that source axis,
    which is therefore mixed (a layer cannot shrink along it). None when the index holds
    tensors (gathers are followed element by element, by the label handlers)."""
    items = index if isinstance(index, tuple) else (index,)
    if not all(i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in items) or isinstance(index, bool):
        return None
    consumed = sum(1 for i in items if i is not None and i is not Ellipsis)
    result = Derived({}, {k: dict(v) for k, v in d.mixed.items()}, d.zero_preserving)
    for src, align in d.align.items():
        new, dim = [], 0
        for i in items:
            if i is None:
                new.append(())
            elif i is Ellipsis:
                new.extend(align[dim: dim + ndim - consumed])
                dim += ndim - consumed
            else:
                if not (isinstance(i, slice) and i == slice(None)):
                    result.with_mixed(src, [a for a in align[dim] if trace.shapes[src][a] > 1],
                                      f"indexing in {trace.where()} picks fixed positions of {src}")
                if isinstance(i, slice):
                    new.append(align[dim])
                dim += 1
        new.extend(align[dim:])
        result.align[src] = tuple(new)
    return result
