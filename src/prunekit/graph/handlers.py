"""How each operation moves channel labels from its inputs to its outputs.

Families (an operation is looked up by its name, with leading/trailing underscores and
in-place suffixes stripped, so `torch.relu_`, `F.relu` and `x.relu()` are one entry):

* elementwise (add, mul, activations, dropout, casts): the output element carries the
  atoms of the input elements it was computed from; two atoms meeting at one element are
  merged (that is how residual adds and squeeze-excitation couple channels).
* movement (view, permute, cat, split, chunk, indexing, pad, flatten …): movement.py.
* reductions and softmax: fine over an axis without channels; over a channel axis the
  result would change if a channel left, so those channels are blocked.
* layers (layers.py): conv, linear, norms, embedding, attention — they also record which
  parameter slices belong to which atom.

Anything else that touches a channel blocks it, with the operation's name as the reason.
A custom layer is described as a whole by a layer handler (registry.py).
"""

from __future__ import annotations

import torch

from ..nested import tensors_in
from . import derived, layers
from .atoms import squeeze_broadcast, varying_dims
from .movement import concat, indexing, movement, pad, pixel_shuffle, roll, sized_reshape, split
from .tracer import Trace

ELEMENTWISE_NARY = {
    "add", "radd", "iadd", "sub", "rsub", "isub", "subtract", "mul", "rmul", "imul", "multiply", "div", "rdiv",
    "idiv", "truediv", "rtruediv", "itruediv", "divide", "true_divide", "pow", "rpow", "ipow", "maximum",
    "minimum", "fmax", "fmin", "where", "masked_fill", "lerp", "addcmul", "addcdiv", "clamp", "clip",
    "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_xor", "and", "or", "xor",
    "hardtanh", "threshold", "copysign", "atan2", "floor_divide", "remainder", "fmod", "hypot",
}
ELEMENTWISE_UNARY = {
    "relu", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "leaky_relu", "elu",
    "selu", "celu", "softplus", "softsign", "mish", "logsigmoid", "tanhshrink", "hardshrink", "softshrink",
    "rrelu", "neg", "negative", "abs", "exp", "exp2", "expm1", "log", "log1p", "log2", "log10", "sqrt",
    "rsqrt", "square", "reciprocal", "sin", "cos", "tan", "erf", "erfc", "erfinv", "sign", "sgn", "floor",
    "ceil", "round", "trunc", "frac", "isnan", "isinf", "isfinite", "nan_to_num", "logical_not", "invert",
    "bitwise_not", "clamp_min", "clamp_max", "pos", "to", "type", "type_as", "float", "double", "half",
    "bfloat16", "contiguous", "clone", "detach", "requires_grad", "cpu", "cuda", "alias", "data", "dropout",
    "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "feature_dropout",
    "sigmoid_", "fill_diagonal", "retain_grad",
}
LIKE_FACTORIES = {"zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like",
                  "randint_like", "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor"}
METADATA = {
    "size", "dim", "shape", "numel", "dtype", "device", "is_floating_point", "is_complex", "is_contiguous",
    "stride", "ndim", "ndimension", "nelement", "element_size", "data_ptr", "get_device", "is_cuda",
    "is_sparse", "is_quantized", "is_meta", "layout", "names", "grad_fn", "version", "len", "hash",
    "storage_offset", "untyped_storage", "output_nr", "base", "is_leaf", "grad", "register_hook",
    "set_grad_enabled", "is_grad_enabled", "is_nested", "is_inference", "is_view", "is_mkldnn",
    "dim_order", "is_signed", "requires_grad_", "has_names", "format", "repr", "str", "is_same_size",
    "is_set_to", "is_shared", "is_pinned", "nbytes", "itemsize", "get_default_dtype", "is_tensor",
    "broadcast_shapes", "result_type", "can_cast", "promote_types", "is_autocast_enabled",
}
REDUCTIONS = {"sum", "mean", "amax", "amin", "max", "min", "prod", "std", "var", "norm", "logsumexp",
              "any", "all", "argmax", "argmin", "median", "nanmean", "nansum", "count_nonzero", "std_mean",
              "var_mean", "aminmax", "mode"}
ALONG_DIM = {"softmax", "log_softmax", "softmin", "cumsum", "cumprod", "cummax", "cummin", "normalize",
             "sort", "argsort", "topk", "logcumsumexp"}
SIZED_RESHAPE = {"view", "reshape", "unflatten", "expand"}
FREE_MOVEMENT = {"permute", "transpose", "t", "T", "mT", "flatten", "squeeze", "unsqueeze", "movedim",
                 "moveaxis", "swapaxes", "swapdims", "flip", "view_as", "reshape_as", "expand_as", "repeat",
                 "repeat_interleave", "pixel_unshuffle", "broadcast_to", "ravel", "atleast_1d", "atleast_2d",
                 "atleast_3d", "fliplr", "flipud", "tile"}
CONCAT = {"cat", "concat", "concatenate", "stack", "hstack", "vstack", "dstack", "column_stack"}
SPLIT = {"split", "chunk", "tensor_split", "unbind", "split_with_sizes", "hsplit", "vsplit", "dsplit"}
INDEXING = {"getitem", "narrow", "select", "index_select"}

def op_name(func) -> str:
    name = getattr(func, "__name__", None) or type(func).__name__
    if name == "__get__":  # a Tensor property such as .T or .data
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    name = name.strip("_")
    return name[:-1] if name.endswith("_") and not name.endswith("__") else name


def dispatch(trace: Trace, func, args, kwargs, out) -> None:
    name = op_name(func)
    if name in METADATA or computed_weight(trace, name, func, args, kwargs, out):
        return
    handler = TABLE.get(name) or next((h for ops, h in FAMILIES if name in ops), unknown)
    handler(trace, name, func, args, kwargs, out)


# ----------------------------------------------------------------------------- computed weights
def computed_weight(trace: Trace, name, func, args, kwargs, out) -> bool:
    """An op on parameters alone (weight standardisation, weight_norm, w.t()): record how its
    result follows the parameters' axes (derived.py) instead of labelling elements. False when
    the op involves activations, or is one the label handlers follow (indexing, cat …)."""
    inputs = list(tensors_in((args, kwargs)))
    if not any(trace.is_source(t) for t in inputs) or any(
            trace.has_activation_labels(t) for t in inputs if not trace.is_source(t)):
        return False
    outputs = [t for t in tensors_in(out)]
    if not outputs:
        return False
    first = args[0] if args and isinstance(args[0], torch.Tensor) else None
    source = trace.source_of(first) if first is not None else None
    if name in ELEMENTWISE_NARY or name in ELEMENTWISE_UNARY:
        if not isinstance(out, torch.Tensor):
            return False
        operands = [(t, trace.source_of(t)) for t in inputs if t is not out or t is first]
        result = derived.elementwise(trace, name, operands, out, args)
    elif (name in REDUCTIONS or name in derived.ZERO_NEUTRAL_REDUCTIONS) and source is not None:
        dims, keepdim = _reduced_dims(name, first, args, kwargs)
        if dims is None:
            return False
        result = derived.reduction(trace, name, source, first.dim(), dims, keepdim)
    elif name in derived.PERMUTATIONS and source is not None and isinstance(out, torch.Tensor):
        order = derived.permutation(func, args, kwargs, first)
        if order is None:
            return False
        result = derived.permuted(source, order)
    elif name in derived.RESHAPES and source is not None and isinstance(out, torch.Tensor):
        result = derived.reshaped(trace, name, source, tuple(first.shape), tuple(out.shape))
    elif name == "getitem" and source is not None and isinstance(out, torch.Tensor):
        result = derived.indexed(trace, source, first.dim(), args[1])
        if result is None:
            return False
    elif name == "batch_norm" and source is not None:
        training = bool(layers._arg(args, kwargs, 5, "training", False))
        has_stats = layers._arg(args, kwargs, 1, "running_mean") is not None
        result = derived.batch_norm(trace, name, source, first.dim(), 1, training or not has_stats)
        vectors = [trace.source_of(t) for t in (layers._arg(args, kwargs, 3, "weight"),
                                                layers._arg(args, kwargs, 4, "bias")) if t is not None]
        result = derived.merge_per_channel(trace, result, [v for v in vectors if v is not None], 1, first.dim())
    elif name == "weight_norm" and source is not None:  # torch._weight_norm(v, g, dim)
        g = trace.source_of(layers._arg(args, kwargs, 1, "g"))
        dim = layers._arg(args, kwargs, 2, "dim", 0)
        result = derived.weight_norm(trace, source, g, first.dim(), dim)
    elif name in TABLE or any(name in ops for ops, _ in FAMILIES):
        return False
    else:  # an op on weights prunekit does not model: the result follows none of their axes
        result = derived.Derived({src: ((),) * out.dim() if isinstance(out, torch.Tensor) else ()
                                  for t in inputs if trace.is_source(t) for src in trace.source_of(t).align})
        for t in inputs:
            if trace.is_source(t):
                for src in trace.source_of(t).align:
                    trace.freeze(src, f"'{name}' in {trace.where()} computes a weight from {src} in a way "
                                      "prunekit does not follow")
    for t in outputs:
        if t.dim() == len(next(iter(result.align.values()), ())) or not result.align:
            trace.set_derived(t, result)
    return True


# where a reduction's positional dim and keepdim sit: norm(x, p, dim, keepdim), var(x, dim, unbiased, keepdim)
_DIM_POSITIONS = {"norm": (2, 3), "linalg_vector_norm": (2, 3), "vector_norm": (2, 3), "var": (1, 3), "std": (1, 3),
                  "var_mean": (1, 3), "std_mean": (1, 3)}


def _reduced_dims(name, x, args, kwargs):
    """(dims, keepdim) of a reduction call; dims None when it is elementwise (max(x, y))."""
    dim_at, keep_at = _DIM_POSITIONS.get(name, (1, 2))
    dims = kwargs.get("dim", args[dim_at] if len(args) > dim_at else None)
    if isinstance(dims, torch.Tensor) or (len(args) > 1 and isinstance(args[1], torch.Tensor)):
        return None, False
    keepdim = kwargs.get("keepdim", args[keep_at] if len(args) > keep_at else False)
    if dims is None or (isinstance(dims, (tuple, list)) and len(dims) == 0):
        dims = list(range(x.dim()))
    dims = [d % max(1, x.dim()) for d in (dims if isinstance(dims, (tuple, list)) else [dims])]
    return dims, bool(keepdim)


# ----------------------------------------------------------------------------- generic families
def unknown(trace: Trace, name, func, args, kwargs, out, why: str | None = None) -> None:
    """Block everything the op touched; its outputs get one blocked atom."""
    inputs = list(tensors_in((args, kwargs)))
    touched = [t for t in inputs if trace.has_channels(t)]
    outputs = [t for t in tensors_in(out) if all(t is not i for i in inputs)]
    if not touched:
        for t in outputs:
            trace.set_labels(t, torch.zeros((), dtype=torch.long))
        return
    reason = f"'{name}' in {trace.where()} " + (why or "is not understood by prunekit (register a handler for its module)")
    if reason not in trace.unsupported:
        trace.unsupported.append(reason)
    for t in touched:
        if trace.is_source(t):  # a parameter or a tensor computed from some: freeze them whole, no atoms
            for src in trace.source_of(t).align:
                trace.freeze(src, reason)
        else:
            trace.block(trace.labels(t), reason)
    opaque = trace.opaque(reason)
    for t in outputs:
        trace.set_labels(t, opaque)
    for t in inputs:  # an in-place op may have changed one of its inputs
        if t is out or (isinstance(out, (tuple, list)) and any(t is o for o in out)):
            trace.set_labels(t, opaque)


def constant(trace, name, func, args, kwargs, out) -> None:
    for t in tensors_in(out):
        trace.set_labels(t, torch.zeros((), dtype=torch.long))


def unary(trace, name, func, args, kwargs, out) -> None:
    if isinstance(out, torch.Tensor) and args and isinstance(args[0], torch.Tensor):
        labels = trace.labels(args[0])
        if labels.shape == out.shape:
            trace.set_labels(out, labels)
            return
    unknown(trace, name, func, args, kwargs, out)


def elementwise(trace, name, func, args, kwargs, out) -> None:
    """Broadcast every operand's labels to the output; merge atoms that meet at one element."""
    if not isinstance(out, torch.Tensor):
        return unknown(trace, name, func, args, kwargs, out)
    # A boolean condition that is the same everywhere (an attention or padding mask) selects
    # values but carries no channel of its own.
    operands = [t for t in tensors_in((args, kwargs))
                if not (t.dtype == torch.bool and t is not out and not _varies(trace.labels(t)))]
    try:
        labels = [torch.broadcast_to(trace.labels(t), out.shape) for t in operands]
    except RuntimeError:
        return unknown(trace, name, func, args, kwargs, out)
    full_shape = out.shape
    labels = squeeze_broadcast(*labels) if labels else labels
    varying = [varying_dims(lab) for lab in labels]
    result = None  # the labels merged so far (the first operand's, at first: nothing to merge)
    for i, (t, lab) in enumerate(zip(operands, labels)):
        offset = out.dim() - t.dim()
        spread = {d for d in range(out.dim()) if full_shape[d] > 1 and (d < offset or t.shape[d - offset] == 1)}
        others = set().union(*(v for j, v in enumerate(varying) if j != i))
        if spread & others:
            # One value shared by every channel (a scalar gate, a 1-channel map): it couples none
            # of them, and its own single position must never be removed.
            trace.block(lab, f"'{name}' in {trace.where()} broadcasts it across a channel axis")
            continue
        if result is None:
            result = lab
            continue
        trace.atoms.union_pairs(result, lab)
        result = torch.where(result != 0, result, lab)
    if result is None:
        result = torch.zeros(labels[0].shape if labels else out.shape, dtype=torch.long)
    channel_dims = sorted(varying_dims(result))
    for t, lab in zip(operands, labels):
        # A fixed-size constant laid along a channel axis would no longer fit once channels go.
        fixed = not trace.is_source(t) and not bool((lab != 0).any()) and t.numel() > 1
        offset = out.dim() - t.dim()
        if fixed and any(d >= offset and t.shape[d - offset] > 1 for d in channel_dims):
            trace.block(result, f"'{name}' in {trace.where()} combines channels with a constant tensor of fixed size")
    trace.set_labels(out, result)


def _varies(labels) -> bool:
    return labels.numel() > 1 and bool((labels != labels.reshape(-1)[0]).any())


def reduction(trace, name, func, args, kwargs, out) -> None:
    x = args[0] if args else kwargs.get("input")
    if not isinstance(x, torch.Tensor):
        return unknown(trace, name, func, args, kwargs, out)
    labels = trace.labels(x)
    dims = kwargs.get("dim", args[1] if len(args) > 1 and not isinstance(args[1], torch.Tensor) else None)
    if isinstance(dims, torch.Tensor):  # max(x, other) is elementwise
        return elementwise(trace, name, func, args, kwargs, out)
    keepdim = bool(kwargs.get("keepdim", args[2] if len(args) > 2 and isinstance(args[2], bool) else False))
    if dims is None or (isinstance(dims, (tuple, list)) and len(dims) == 0):
        dims = list(range(x.dim()))
    dims = [d % max(1, x.dim()) for d in (dims if isinstance(dims, (tuple, list)) else [dims])]
    if any(trace.units_vary(labels, d) for d in dims):
        trace.block(labels, f"'{name}' in {trace.where()} reduces over a channel axis")
    reduced = labels.amax(dim=dims, keepdim=keepdim) if labels.dim() else labels
    for t in tensors_in(out):
        if t.dim() == reduced.dim():
            trace.set_labels(t, reduced.reshape(t.shape) if reduced.numel() == t.numel() else reduced.max())
        else:
            trace.set_labels(t, reduced.max() if reduced.numel() else torch.zeros((), dtype=torch.long))


def along_dim(trace, name, func, args, kwargs, out) -> None:
    """softmax, cumsum, sort …: keep the shape, mix along one dim (fine unless it carries channels)."""
    x = args[0] if args else kwargs.get("input")
    if name == "normalize":  # F.normalize(input, p=2.0, dim=1)
        dim = kwargs.get("dim", args[2] if len(args) > 2 else 1)
    else:
        dim = kwargs.get("dim", args[1] if len(args) > 1 and isinstance(args[1], int) else None)
    if not isinstance(x, torch.Tensor) or not isinstance(dim, int):
        return unknown(trace, name, func, args, kwargs, out)
    labels = trace.labels(x)
    if trace.units_vary(labels, dim):
        trace.block(labels, f"'{name}' in {trace.where()} mixes values along a channel axis")
    for t in tensors_in(out):
        trace.set_labels(t, labels if t.shape == labels.shape else trace.opaque(f"'{name}' output"))


def item(trace, name, func, args, kwargs, out) -> None:
    if isinstance(out, torch.Tensor):  # x.bool(), x.int(): casts
        return unary(trace, name, func, args, kwargs, out)
    x = args[0]
    reason = f"'{name}' in {trace.where()} turns channel values into Python numbers"
    if trace.is_source(x):  # a number computed from weights: they stay whole, no atoms needed
        for src in trace.source_of(x).align:
            trace.freeze(src, reason)
    elif trace.has_channels(x):
        trace.block(trace.labels(x), reason)


TABLE = {
    "pad": pad, "roll": roll,
    "pixel_shuffle": pixel_shuffle,
    "item": item, "tolist": item, "bool": item, "int": item, "long": item, "index": item, "float": item,
    **layers.TABLE,
}

# Op families, checked in this order when an op has no entry of its own in TABLE.
FAMILIES = (
    (ELEMENTWISE_NARY, elementwise), (ELEMENTWISE_UNARY, unary), (LIKE_FACTORIES, constant),
    (REDUCTIONS, reduction), (ALONG_DIM, along_dim), (SIZED_RESHAPE, sized_reshape),
    (FREE_MOVEMENT, movement), (CONCAT, concat), (SPLIT, split), (INDEXING, indexing),
)
