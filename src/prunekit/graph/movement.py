"""Movement operations: the op is run on the label tensor itself.

view, permute, cat, split, chunk, indexing, pad, flatten … move elements without computing
new values, so applying the very same call to the labels gives every output element the
atom of the input element it came from: concat offsets, flatten → Linear (channel × spatial
positions) and interleavings come out exactly. What needs care is code that writes a size
or a position (view(B, 64, -1), x[:, :16], split([16, 16])): those would be wrong once
channels go, so the channels are blocked — or merged into whole blocks where an inferred
(-1) axis can absorb the change (unflatten(-1, (-1, head_dim)) makes each head one unit).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .atoms import compress, squeeze_broadcast, varies_along, varying_dims
from .sizes import is_channel_count


def _unknown(trace, name, func, args, kwargs, out):
    from .handlers import unknown  # local: handlers imports this module

    return unknown(trace, name, func, args, kwargs, out)


def _run_on_labels(trace, func, args, kwargs):
    """Call the movement op with every data tensor replaced by its labels."""
    def swap(obj):
        if isinstance(obj, torch.Tensor):
            return trace.labels(obj)
        if isinstance(obj, (tuple, list)) and obj and all(isinstance(o, torch.Tensor) for o in obj):
            return type(obj)(trace.labels(o) for o in obj) if isinstance(obj, list) else tuple(
                trace.labels(o) for o in obj)
        return obj
    # index tensors (integer / bool) go to the CPU with the labels; shape donors stay put
    rest = tuple(a.cpu() if isinstance(a, torch.Tensor) and not a.is_floating_point() else a for a in args[1:])
    try:
        return func(swap(args[0]), *rest, **kwargs)
    except RuntimeError:  # view() of an expanded label view: retry on a contiguous copy
        def dense(obj):
            out = swap(obj)
            if isinstance(out, torch.Tensor):
                return out.contiguous()
            return type(out)(o.contiguous() for o in out) if isinstance(out, (tuple, list)) else out
        return func(dense(args[0]), *rest, **kwargs)


def _assign(trace, out, labels) -> None:
    if isinstance(out, torch.Tensor):
        trace.set_labels(out, labels)
    elif isinstance(out, (tuple, list)):
        for o, lab in zip(out, labels):
            _assign(trace, o, lab)


def movement(trace, name, func, args, kwargs, out) -> None:
    try:
        labels = _run_on_labels(trace, func, args, kwargs)
    except (RuntimeError, TypeError, ValueError, IndexError):
        return _unknown(trace, name, func, args, kwargs, out)
    _assign(trace, out, labels)


def concat(trace, name, func, args, kwargs, out) -> None:
    """cat / stack: every input must keep the same size along the axes it is not joined on, so
    position k of such an axis is one unit across all inputs (stack: unit j of every input)."""
    tensors = args[0] if args else kwargs.get("tensors")
    if name in ("cat", "concat", "concatenate", "stack") and isinstance(tensors, (tuple, list)) and len(tensors) > 1 \
            and all(isinstance(t, torch.Tensor) for t in tensors):
        labels = [trace.labels(t) for t in tensors]
        if name == "stack":
            if all(lab.shape == labels[0].shape for lab in labels):
                for lab in labels[1:]:
                    trace.atoms.union_pairs(labels[0], lab)
        else:
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            ndim = labels[0].dim()
            if isinstance(dim, int) and ndim and all(lab.dim() == ndim for lab in labels):
                dim %= ndim
                for e in range(ndim):
                    if e != dim and any(trace.units_vary(lab, e) for lab in labels):
                        rows = [squeeze_broadcast(lab, keep=e)[0].movedim(e, 0).reshape(lab.shape[e], -1)
                                for lab in labels]
                        trace.atoms.union_rows(torch.cat(rows, 1))
    movement(trace, name, func, args, kwargs, out)


def _requested_sizes(name, x, args, kwargs):
    """(output dim → requested size) for view/reshape/expand/unflatten; -1 means inferred."""
    rest = args[1:]
    if name == "unflatten":
        dim = rest[0] if rest else kwargs["dim"]
        sizes = list(rest[1] if len(rest) > 1 else kwargs["sizes"])
        dim = dim % x.dim()
        return {dim + i: s for i, s in enumerate(sizes)}
    sizes = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list, torch.Size)) else rest
    sizes = list(sizes or kwargs.get("shape", kwargs.get("size", ())))
    return {i: s for i, s in enumerate(sizes)}


def _note_counts(trace, name, x, requested) -> None:
    """Counts read from other tensors: checked once the pass is over (Trace.check_counts), when
    every coupling is known — a count from an axis whose channels `x` never joins ties two groups."""
    for s in requested.values():
        if is_channel_count(s) and getattr(s, "source", None) is not None:
            trace.sized_by.append((s.source, trace.labels(x), f"'{name}' in {trace.where()} sizes a tensor of "
                                                              "other channels by a count read from these"))


def sized_reshape(trace, name, func, args, kwargs, out) -> None:
    """view / reshape / unflatten / expand with sizes written in the code.

    A channel axis whose size is written out would be wrong once channels go: if another
    output axis that carries the same channels is inferred (-1), the channels are merged
    along the written axis, so only whole blocks are removed (heads of size head_dim);
    otherwise they are blocked.
    """
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor):
        return _unknown(trace, name, func, args, kwargs, out)
    if len(args) > 1 and isinstance(args[1], torch.dtype):  # view(dtype)
        return _unknown(trace, name, func, args, kwargs, out)
    try:
        labels = _run_on_labels(trace, func, args, kwargs)
        requested = _requested_sizes(name, x, args, kwargs)
    except (RuntimeError, TypeError, ValueError, KeyError, IndexError):
        return _unknown(trace, name, func, args, kwargs, out)
    if name == "expand":
        in_labels = trace.labels(x)
        offset = out.dim() - x.dim()
        if any(s != -1 and d >= offset and varies_along(in_labels, d - offset) for d, s in requested.items()):
            if not any(is_channel_count(s) for s in requested.values() if s != -1):
                trace.block(labels, f"'expand' in {trace.where()} writes a channel count")
        trace.set_labels(out, labels)
        return
    _note_counts(trace, name, x, requested)
    follows = {d for d, s in requested.items() if s == -1 or is_channel_count(s)}  # sizes that follow x
    written = [d for d, s in requested.items() if d not in follows and varies_along(labels, d)]
    inferred = sorted(d for d in varying_dims(labels) if d in follows or d not in requested)
    if written and not inferred:
        sizes = tuple(out.shape[d] for d in written)
        trace.block(labels, f"'{name}' in {trace.where()} writes the channel count {sizes} into the code "
                            "(held by a module attribute? name it in a LayerHandler's `counts`)")
    elif written:
        for d in written:  # merge along the written axis: whole slices only
            moved = compress(labels, 0, keep=d).movedim(d, -1).reshape(-1, labels.shape[d])
            trace.atoms.union_rows(moved)
    trace.set_labels(out, labels)


def split(trace, name, func, args, kwargs, out) -> None:
    x = args[0] if args else kwargs.get("input")
    if not isinstance(x, torch.Tensor):
        return _unknown(trace, name, func, args, kwargs, out)
    labels = trace.labels(x)
    dim = kwargs.get("dim", args[2] if len(args) > 2 else (0 if name != "unbind" else None))
    if name == "unbind":
        dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
    if name in ("hsplit", "vsplit", "dsplit") or not isinstance(dim, int):
        return movement(trace, name, func, args, kwargs, out) if not varies_along(labels, 0) else _unknown(
            trace, name, func, args, kwargs, out)
    if trace.units_vary(labels, dim):
        pieces = len(out)
        sizes = args[1] if len(args) > 1 else kwargs.get("split_size_or_sections", kwargs.get("split_size"))
        sizes = list(sizes) if isinstance(sizes, (tuple, list)) else [sizes]
        # split(c // 2) with c read from the tensor cuts it in equal parts, like chunk
        follows = name in ("split", "split_with_sizes") and all(is_channel_count(v) for v in sizes) and len(
            {int(v) for v in sizes}) == 1
        if (name == "chunk" or follows) and labels.shape[dim] % pieces == 0:
            # equal chunks stay equal only if every chunk loses the same positions
            parts = labels.movedim(dim, 0).reshape(pieces, labels.shape[dim] // pieces, -1)
            trace.atoms.union_pairs(parts[:1].expand_as(parts), parts)
        else:
            trace.block(labels, f"'{name}' in {trace.where()} cuts a channel axis at fixed positions")
    movement(trace, name, func, args, kwargs, out)


def _index_dims(index, ndim):
    """Which input dims a __getitem__ index restricts (not a full slice)."""
    items = index if isinstance(index, tuple) else (index,)
    consumed = sum(0 if i is None or i is Ellipsis else (i.dim() if isinstance(i, torch.Tensor)
                                                         and i.dtype == torch.bool else 1) for i in items)
    dims, d = [], 0
    for i in items:
        if i is None:
            continue
        if i is Ellipsis:
            d += ndim - consumed
            continue
        width = i.dim() if isinstance(i, torch.Tensor) and i.dtype == torch.bool else 1
        full = isinstance(i, slice) and i == slice(None)
        if not full:
            dims.extend(range(d, d + width))
        d += width
    return dims


def indexing(trace, name, func, args, kwargs, out) -> None:
    x = args[0]
    if not isinstance(x, torch.Tensor):
        return _unknown(trace, name, func, args, kwargs, out)
    labels = trace.labels(x)
    try:
        if name == "getitem":
            dims = _index_dims(args[1], x.dim())
        else:
            dims = [kwargs.get("dim", args[1] if len(args) > 1 else 0) % x.dim()]
    except (TypeError, AttributeError):
        return _unknown(trace, name, func, args, kwargs, out)
    table = trace.name_of(x)
    if table is not None:
        # A parameter table read at fixed positions (relative position biases): fine unless the
        # read axis turns out to carry channels, which groups.py checks once couplings are known.
        trace.indexed.setdefault(table, set()).update(dims)
    elif any(trace.units_vary(labels, d) for d in dims):
        trace.block(labels, f"'{name}' in {trace.where()} picks fixed positions of a channel axis")
    if name == "getitem":
        try:
            index = args[1]  # labels live on the CPU: so must index tensors (a GPU model's masks)
            if isinstance(index, torch.Tensor):
                index = index.cpu()
            elif isinstance(index, tuple):
                index = tuple(i.cpu() if isinstance(i, torch.Tensor) else i for i in index)
            result = labels[index]
        except (IndexError, RuntimeError, TypeError):
            return _unknown(trace, name, func, args, kwargs, out)
        trace.set_labels(out, result)
    else:
        movement(trace, name, func, args, kwargs, out)


def pad(trace, name, func, args, kwargs, out) -> None:
    x = args[0]
    amounts = list(args[1] if len(args) > 1 else kwargs["pad"])
    labels = trace.labels(x)
    padded = [x.dim() - 1 - i // 2 for i, a in enumerate(amounts) if a != 0]
    if any(trace.units_vary(labels, d) for d in padded):
        trace.block(labels, f"'pad' in {trace.where()} adds positions to a channel axis")
    mode = kwargs.get("mode", args[2] if len(args) > 2 else "constant")
    if mode == "constant":
        result = F.pad(labels, amounts, value=0)
    else:
        result = F.pad(labels.double(), amounts, mode=mode).round().long()
    trace.set_labels(out, result)


def pixel_shuffle(trace, name, func, args, kwargs, out) -> None:
    x, r = args[0], args[1] if len(args) > 1 else kwargs["upscale_factor"]
    labels = trace.labels(x)
    c = x.shape[-3]
    block = labels.movedim(-3, 0).reshape(c // (r * r), r * r, -1)
    # the r² channels that become one output channel go together
    trace.atoms.union_pairs(block[:, :1].expand_as(block), block)
    movement(trace, name, func, args, kwargs, out)




def roll(trace, name, func, args, kwargs, out) -> None:
    """Shifted windows (Swin) roll spatial axes: fine unless a rolled axis carries channels."""
    x = args[0]
    dims = kwargs.get("dims", args[2] if len(args) > 2 else None)
    labels = trace.labels(x)
    dims = range(x.dim()) if dims is None else (dims if isinstance(dims, (tuple, list)) else [dims])
    if any(trace.units_vary(labels, d % x.dim()) for d in dims):
        trace.block(labels, f"'roll' in {trace.where()} shifts a channel axis")
    movement(trace, name, func, args, kwargs, out)
