"""Handlers for the operations that own parameters: they tie parameter slices to atoms.

Coupling rules (C = channels, atoms are per channel unless stated):

* conv (groups=1): weight[:, c] and the module's input count follow input channel c;
  weight[o], bias[o] get a fresh atom per output channel o.
* depthwise conv (in/groups = 1, multiplier m): output channels c·m … c·m+m−1 *are*
  input channel c — one unit, so `groups` shrinks with the channels.
* grouped conv (1 < in/groups): position j of every group goes together (input j of each
  group, output j of each group), so every group loses the same positions and `groups` stays.
* linear / matmul with a parameter: weight[:, i] follows input feature i; rows are fresh.
* batch/instance norm, PReLU: per-channel vectors (and running statistics) follow channel c.
* group norm: its statistics are per group, so a whole norm group is one unit.
* layer norm / RMS norm: the mean and variance are over the features, so removing one would
  change every output: those channels are blocked.
* embedding: column e of the table is a fresh atom (feeds the residual stream).
* nn.MultiheadAttention (F.multi_head_attention_forward): its inner width must equal
  embed_dim, so head h is one unit together with embedding channels h·d … h·d+d−1.
* scaled_dot_product_attention: query/key/value positions of one (batch, head) index form
  one unit — whole heads go, and the head size (and the default 1/√d scale) is unchanged.
* pooling / interpolation: per channel over space; labels pass through.
"""

from __future__ import annotations

import torch
from torch import nn

from .atoms import varies_along
from .sizes import is_channel_count


def _arg(args, kwargs, i, name, default=None):
    if name in kwargs:
        return kwargs[name]
    return args[i] if len(args) > i else default


def _weighted_unknown(trace, name, func, args, kwargs, out, why: str):
    from .handlers import unknown  # local: handlers imports this module

    reason = f"'{name}' in {trace.where()}: {why}"
    for t in list(args) + list(kwargs.values()):
        derived = trace.source_of(t)
        for src in (derived.align if derived is not None else ()):
            trace.freeze(src, reason)
    unknown(trace, name, func, args, kwargs, out)


def _channel_labels(out: torch.Tensor, atoms: torch.Tensor, dim: int) -> torch.Tensor:
    shape = [1] * out.dim()
    shape[dim] = atoms.numel()
    return atoms.reshape(shape).expand(out.shape)


def owner_module(name: str | None) -> str | None:
    """The module a parameter belongs to ('conv' for 'conv.weight' and for the originals of a
    parametrized 'conv.weight')."""
    if name is None:
        return None
    if ".parametrizations." in "." + name:
        return ("." + name).split(".parametrizations.", 1)[0][1:]
    return name.rpartition(".")[0]


def couple_source(trace, tensor, dim: int, atoms: torch.Tensor, op: str) -> bool:
    """Tie axis `dim` of a parameter, or of a weight computed from parameters, to `atoms`.

    Returns False (and blocks the atoms) when the tensor could not shrink along `dim` with them:
    no source axis lies along it, several are merged there, or a statistic mixed it.
    """
    derived = trace.source_of(tensor)
    if derived is None:
        return False
    dim = dim % max(1, tensor.dim())
    followed = False
    for src, align in derived.align.items():
        axes = [a for a in align[dim] if trace.shapes[src][a] > 1]
        if len(axes) > 1:
            reason = f"'{op}' in {trace.where()} uses {src} with several of its axes merged into one"
            trace.freeze(src, reason)
            trace.block(atoms, reason)
            continue
        if not axes:
            continue
        trace.couple(src, axes[0], atoms)
        followed = True
        why = derived.mixed.get(src, {}).get(axes[0])
        if why:
            trace.block(atoms, why)
    if tensor.shape[dim] > 1 and not followed:
        trace.block(atoms, f"'{op}' in {trace.where()}: its weight, computed from "
                           f"{', '.join(derived.align) or 'constants'}, cannot shrink along axis {dim}")
        return False
    return True


def _input_atoms(trace, x, dim: int, op: str) -> torch.Tensor:
    """One atom per input feature of a layer; a parameter or buffer fed in as the input (a fixed
    coordinate table) is a constant input: its features get atoms that are blocked, not one
    atom per element."""
    if trace.is_source(x):
        atoms = trace.new(x.shape[dim])
        trace.block(atoms, f"'{op}' in {trace.where()} reads the fixed tensor "
                           f"{', '.join(trace.source_of(x).align) or 'computed from parameters'}")
        return atoms
    return trace.axis_atoms(trace.labels(x), dim, op)


def _first_source(trace, tensor) -> str | None:
    derived = trace.source_of(tensor)
    return next(iter(derived.align), None) if derived is not None else None


def _fixed_groups(trace, module: str | None, groups) -> str | None:
    """Why `groups` cannot follow the channels, or None: it is a conv module's attribute that
    compaction updates, or a count read from the tensor."""
    if groups == 1 or is_channel_count(groups):
        return None
    owner = _get_module(trace, module)
    if isinstance(owner, nn.modules.conv._ConvNd) and owner.groups == groups:
        return None
    return f"groups={groups} is written in the code of {trace.where()} (not a conv module's attribute)"


def _get_module(trace, name):
    if name is None or trace.model is None:
        return None
    try:
        return trace.model.get_submodule(name)
    except AttributeError:
        return None


def conv(trace, name, func, args, kwargs, out):
    x, w, b = args[0], _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
    groups = _arg(args, kwargs, 6, "groups", 1)
    if not trace.is_source(w) or (b is not None and not trace.is_source(b)):
        return _weighted_unknown(trace, name, func, args, kwargs, out, "its weight depends on the input")
    module = owner_module(_first_source(trace, w))
    cdim = 1 if x.dim() == w.dim() else 0
    x_atoms = _input_atoms(trace, x, cdim, name)
    c_out, per_group = w.shape[0], w.shape[1]
    trace.couple_size(module, x_atoms)
    fixed = _fixed_groups(trace, module, groups)
    if groups == 1:
        couple_source(trace, w, 1, x_atoms, name)
        out_atoms = trace.new(c_out, producer=(_first_source(trace, w), 0))
    elif per_group == 1:  # depthwise, possibly with a channel multiplier
        out_atoms = x_atoms.repeat_interleave(c_out // groups)
    else:
        by_group = x_atoms.reshape(groups, per_group)
        trace.atoms.union_pairs(by_group[:1].expand_as(by_group), by_group)
        couple_source(trace, w, 1, by_group[0], name)
        out_atoms = trace.new(c_out // groups, producer=(_first_source(trace, w), 0)).repeat(groups)
    if fixed:
        trace.block(x_atoms, f"'{name}': {fixed}")
        trace.block(out_atoms, f"'{name}': {fixed}")
    couple_source(trace, w, 0, out_atoms, name)
    if b is not None:
        couple_source(trace, b, 0, out_atoms, name)
    trace.set_labels(out, _channel_labels(out, out_atoms, cdim))


def conv_transpose(trace, name, func, args, kwargs, out):
    x, w, b = args[0], _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
    groups = _arg(args, kwargs, 6, "groups", 1)
    if not trace.is_source(w) or groups != 1 or (b is not None and not trace.is_source(b)):
        return _weighted_unknown(trace, name, func, args, kwargs, out, "its weight depends on the input, or groups > 1")
    cdim = 1 if x.dim() == w.dim() else 0
    x_atoms = _input_atoms(trace, x, cdim, name)
    couple_source(trace, w, 0, x_atoms, name)
    out_atoms = trace.new(w.shape[1], producer=(_first_source(trace, w), 1))
    couple_source(trace, w, 1, out_atoms, name)
    if b is not None:
        couple_source(trace, b, 0, out_atoms, name)
    trace.set_labels(out, _channel_labels(out, out_atoms, cdim))


def _dense(trace, name, x, w, in_dim, out_dim, n_out, bias, out):
    """y = x·W (+ b): W's `in_dim` follows x's features, its `out_dim` makes fresh atoms."""
    x_atoms = _input_atoms(trace, x, -1, name)
    couple_source(trace, w, in_dim, x_atoms, name)
    out_atoms = trace.new(n_out, producer=(_first_source(trace, w), out_dim % w.dim()))
    couple_source(trace, w, out_dim, out_atoms, name)
    if bias is not None:
        couple_source(trace, bias, -1, out_atoms, name)
    trace.set_labels(out, _channel_labels(out, out_atoms, out.dim() - 1))


def linear(trace, name, func, args, kwargs, out):
    x, w, b = args[0], _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
    if not trace.is_source(w) or (b is not None and not trace.is_source(b)) or w.dim() != 2:
        return _weighted_unknown(trace, name, func, args, kwargs, out, "its weight depends on the input")
    _dense(trace, name, x, w, 1, 0, w.shape[0], b, out)


def matmul(trace, name, func, args, kwargs, out):
    """x @ W with W a 2-D parameter (GPT-2's Conv1D); addmm(bias, x, W) too."""
    if name == "addmm":
        bias, a, w = args[0], args[1], args[2]
    else:
        bias, a, w = None, args[0], args[1]
    if (isinstance(w, torch.Tensor) and trace.is_source(w) and w.dim() == 2
            and (bias is None or trace.is_source(bias)) and not trace.is_source(a)):
        return _dense(trace, name, a, w, 0, 1, w.shape[1], bias, out)
    if (name in ("matmul", "bmm") and isinstance(a, torch.Tensor) and isinstance(w, torch.Tensor)
            and not trace.is_source(a) and not trace.is_source(w) and a.dim() >= 2 and w.dim() >= 2):
        return _activation_product(trace, name, a, w, out)
    return _weighted_unknown(trace, name, func, args, kwargs, out,
                             "a product with a parameter on the left, or of vectors, is not understood")


def _merge_per_index(trace, rows: torch.Tensor) -> torch.Tensor:
    """rows[i]: every label that meets at batch/head index i of a product. Each index becomes
    one unit (its atoms merged); several distinct units are tagged as heads. The unit per index."""
    trace.atoms.union_rows(rows)
    per_index = trace.atoms.roots(rows).amax(-1)
    if len(torch.unique(per_index)) > 1:
        trace.atoms.tag(per_index, "head")
    return per_index


def _activation_product(trace, name, a, b, out):
    """a @ b of two activations (hand-written attention: q @ kᵀ, softmax(s) @ v).

    Every output entry of one batch index (one head) mixes all of that index's entries of a
    and b, so they form one unit: whole heads go, the contracted size never changes alone.
    """
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    rows = []
    for t in (a, b):
        labels = trace.labels(t).expand(*batch, *t.shape[-2:])
        for d in (-2, -1):  # an axis the labels do not vary along needs one position only
            if labels.shape[d] > 1 and not varies_along(labels, labels.dim() + d):
                labels = labels.narrow(d, 0, 1)
        rows.append(labels.reshape(-1, labels.shape[-2] * labels.shape[-1]))
    per_index = _merge_per_index(trace, torch.cat(rows, 1))
    trace.set_labels(out, per_index.reshape(*batch, 1, 1).expand(out.shape))


def einsum(trace, name, func, args, kwargs, out):
    """torch.einsum of activations: each index of the letters shared by every operand and the
    output (batch, head) is one unit, as for a @ b; one operand: a permutation or reduction."""
    equation = args[0] if args else kwargs.get("equation")
    operands = list(args[1]) if len(args) == 2 and isinstance(args[1], (tuple, list)) else list(args[1:])
    reason = "an einsum with '...', repeated letters, no '->' or a parameter operand"
    if (not isinstance(equation, str) or "->" not in equation or "." in equation
            or not all(isinstance(t, torch.Tensor) and trace.name_of(t) is None for t in operands)):
        return _weighted_unknown(trace, name, func, args, kwargs, out, reason)
    lhs, target = equation.replace(" ", "").split("->")
    specs = lhs.split(",")
    if len(specs) != len(operands) or any(len(set(sp)) != len(sp) or len(sp) != t.dim()
                                          for sp, t in zip(specs, operands)):
        return _weighted_unknown(trace, name, func, args, kwargs, out, reason)
    sizes = {}
    for sp, t in zip(specs, operands):
        for letter, n in zip(sp, t.shape):
            sizes[letter] = max(sizes.get(letter, 1), n)
    shared = [c for c in target if all(c in sp for sp in specs)]
    if len(operands) == 1:  # a permutation, possibly summing some letters out
        labels = trace.labels(operands[0])
        gone = [i for i, c in enumerate(specs[0]) if c not in target]
        if any(trace.units_vary(labels, d) for d in gone):
            trace.block(labels, f"'einsum' in {trace.where()} sums over a channel axis")
        kept = labels.amax(dim=gone) if gone else labels
        order = [c for c in specs[0] if c in target]
        trace.set_labels(out, kept.permute([order.index(c) for c in target]))
        return
    rows = []
    for sp, t in zip(specs, operands):
        labels = trace.labels(t).expand(*(sizes[c] for c in sp))
        perm = [sp.index(c) for c in shared] + [i for i, c in enumerate(sp) if c not in shared]
        rows.append(labels.permute(perm).reshape(max(1, _prod(sizes[c] for c in shared)), -1))
    per_index = _merge_per_index(trace, torch.cat(rows, 1))
    labels = per_index.reshape([sizes[c] for c in shared])
    labels = labels.reshape([sizes[c] if c in shared else 1 for c in target]) if shared else labels.reshape(
        [1] * len(target))
    trace.set_labels(out, labels.expand(out.shape))


def _prod(values) -> int:
    total = 1
    for v in values:
        total *= v
    return total


def is_transposed_linear(module) -> bool:
    """GPT-2's Conv1D: y = x @ W + b with W of shape (in, out) and the width in `nf`."""
    if not any(k.__name__ == "Conv1D" for k in type(module).__mro__) or not hasattr(module, "nf"):
        return False  # decided before reading `weight`: a parametrized weight is computed on access
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.Tensor) and weight.dim() == 2 and weight.shape[1] == module.nf


def transposed_linear(trace, module, name, args, kwargs, output):
    """Its forward writes `nf` into a view, so it is described as a whole: a Linear with W.T."""
    x = args[0] if args else next(iter(kwargs.values()))
    bias = module.bias if isinstance(getattr(module, "bias", None), torch.Tensor) else None
    _dense(trace, "Conv1D", x, module.weight, 0, 1, module.weight.shape[1], bias, output)


def batch_norm(trace, name, func, args, kwargs, out):
    x = args[0]
    tensors = [_arg(args, kwargs, i, n) for i, n in
               ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias"))]
    _per_channel(trace, name, func, args, kwargs, out, x, tensors)


def instance_norm(trace, name, func, args, kwargs, out):
    x = args[0]
    tensors = [_arg(args, kwargs, i, n) for i, n in
               ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias"))]
    _per_channel(trace, name, func, args, kwargs, out, x, tensors)


def prelu(trace, name, func, args, kwargs, out):
    x, w = args[0], _arg(args, kwargs, 1, "weight")
    tensors = [w] if w.numel() > 1 else []
    _per_channel(trace, name, func, args, kwargs, out, x, tensors)


def _per_channel(trace, name, func, args, kwargs, out, x, tensors, groups: int | None = None):
    """Tensors indexed by x's channel (norm scales, biases) go with that channel; with
    `groups`, the channels of one normalisation group form one unit (its statistics are shared)."""
    tensors = [t for t in tensors if t is not None]
    if any(not trace.is_source(t) for t in tensors):
        return _weighted_unknown(trace, name, func, args, kwargs, out, "per-channel tensors depend on the input")
    labels = trace.labels(x)
    atoms = trace.axis_atoms(labels, 1 if x.dim() > 1 else 0, name)
    if groups is not None:
        trace.atoms.union_rows(atoms.reshape(groups, -1))
    for t in tensors:
        couple_source(trace, t, 0, atoms, name)
    if tensors:
        trace.couple_size(owner_module(_first_source(trace, tensors[0])), atoms)
    trace.set_labels(out, labels)


def group_norm(trace, name, func, args, kwargs, out):
    x, groups = args[0], _arg(args, kwargs, 1, "num_groups")
    w, b = _arg(args, kwargs, 2, "weight"), _arg(args, kwargs, 3, "bias")
    return _per_channel(trace, name, func, args, kwargs, out, x, (w, b), groups=groups)


def layer_norm(trace, name, func, args, kwargs, out):
    x = args[0]
    shape = _arg(args, kwargs, 1, "normalized_shape")
    n = len(shape) if isinstance(shape, (tuple, list, torch.Size)) else 1
    w = _arg(args, kwargs, 2, "weight")
    b = _arg(args, kwargs, 3, "bias")
    labels = trace.labels(x)
    if any(trace.units_vary(labels, x.dim() - 1 - i) for i in range(n)):
        trace.block(labels, f"'{name}' in {trace.where()} normalises over these features "
                            "(removing one changes the mean and variance of all)")
    for t in (w, b):
        if isinstance(t, torch.Tensor) and trace.is_source(t):
            if t.dim() == 1:
                couple_source(trace, t, 0, trace.axis_atoms(labels, -1, name), name)
            else:
                for src in trace.source_of(t).align:
                    trace.freeze(src, f"'{name}' in {trace.where()} normalises over several axes")
    trace.set_labels(out, labels)


def feature_norm(trace, module, name, axis, args, kwargs, output):
    """A LayerNorm / RMSNorm module over one feature axis, described whole: its scale and shift
    follow the features, which stay prunable (a masked norm normalises over the kept ones only,
    prunekit.feature_norms)."""
    x = args[0] if args else next(iter(kwargs.values()))
    labels = trace.labels(x)
    atoms = trace.axis_atoms(labels, axis, name)
    for t in (module.weight, getattr(module, "bias", None)):
        if isinstance(t, torch.Tensor) and trace.is_source(t):
            couple_source(trace, t, 0, atoms, name)
    trace.set_labels(output, labels)


def embedding(trace, name, func, args, kwargs, out):
    w = _arg(args, kwargs, 1, "weight")
    if not trace.is_source(w):
        return _weighted_unknown(trace, name, func, args, kwargs, out, "its table depends on the input")
    atoms = trace.new(w.shape[1], producer=(_first_source(trace, w), 1))
    couple_source(trace, w, 1, atoms, name)
    trace.set_labels(out, _channel_labels(out, atoms, out.dim() - 1))


def multi_head_attention(trace, name, func, args, kwargs, out):
    q, k, v = args[0], args[1], args[2]
    heads = _arg(args, kwargs, 4, "num_heads")
    w_in, b_in = _arg(args, kwargs, 5, "in_proj_weight"), _arg(args, kwargs, 6, "in_proj_bias")
    w_out, b_out = _arg(args, kwargs, 11, "out_proj_weight"), _arg(args, kwargs, 12, "out_proj_bias")
    unsupported = (_arg(args, kwargs, 17, "use_separate_proj_weight", False) or w_in is None
                   or _arg(args, kwargs, 7, "bias_k") is not None or _arg(args, kwargs, 21, "static_k") is not None
                   or any(t is not None and trace.name_of(t) is None for t in (w_in, b_in, w_out, b_out)))
    if unsupported:
        return _weighted_unknown(trace, name, func, args, kwargs, out,
                                 "separate q/k/v projections, bias_k/bias_v or static keys are not supported")
    embed = w_in.shape[1]
    head_dim = embed // heads
    q_atoms = trace.axis_atoms(trace.labels(q), -1, name)
    for other in (k, v):
        if other is not q:
            trace.atoms.union_pairs(q_atoms, trace.axis_atoms(trace.labels(other), -1, name))
    trace.atoms.union_rows(q_atoms.reshape(heads, head_dim))  # inner width == embed_dim: head h owns its slot
    trace.atoms.tag(q_atoms, "head")
    emb = q_atoms
    trace.couple(trace.name_of(w_in), 1, emb)
    trace.couple(trace.name_of(w_in), 0, emb.repeat(3))
    trace.couple(trace.name_of(b_in), 0, emb.repeat(3))
    trace.couple(trace.name_of(w_out), 1, emb)
    trace.couple(trace.name_of(w_out), 0, emb)
    trace.couple(trace.name_of(b_out), 0, emb)
    trace.couple_size(owner_module(trace.name_of(w_in)), emb)
    attn, weights = out
    trace.set_labels(attn, _channel_labels(attn, emb, attn.dim() - 1))
    if isinstance(weights, torch.Tensor):
        poison = trace.new(1)
        trace.heads.append((poison, emb))
        trace.set_labels(weights, poison.reshape(()))


def sdpa(trace, name, func, args, kwargs, out):
    """scaled_dot_product_attention: the query, key and value dims of one (batch, head) index
    form one unit. With grouped-query attention (fewer key/value heads, `enable_gqa`), key/value
    head j serves query heads j·G … j·G+G−1: those and it are one unit. A per-head attn_mask
    (T5's relative position bias, Swin's) follows its head."""
    q, k, v = args[0], _arg(args, kwargs, 1, "key"), _arg(args, kwargs, 2, "value")
    mask = _arg(args, kwargs, 3, "attn_mask")
    reduced = []
    for t in (q, k, v):
        labels = trace.labels(t)
        if t.dim() >= 2 and trace.units_vary(labels, t.dim() - 2):
            trace.block(labels, f"'{name}' in {trace.where()} gets channels that vary along the sequence")
        reduced.append(labels.amax(dim=-2) if t.dim() >= 2 else labels)
    if q.dim() >= 3 and k.dim() >= 3 and q.shape[-3] != k.shape[-3] and q.shape[-3] % k.shape[-3] == 0:
        group = q.shape[-3] // k.shape[-3]  # grouped-query attention
        reduced[1:] = [r.repeat_interleave(group, dim=-2) for r in reduced[1:]]
    if isinstance(mask, torch.Tensor) and mask.dim() >= 2 and trace.has_channels(mask):
        labels = trace.labels(mask)
        if any(trace.units_vary(labels, d) for d in (mask.dim() - 1, mask.dim() - 2)):
            trace.block(labels, f"'{name}' in {trace.where()} gets an attention mask whose channels vary "
                                "along the sequence")
        reduced.append(labels.amax(dim=(-2, -1)).unsqueeze(-1))
    shape = torch.broadcast_shapes(*(r.shape[:-1] for r in reduced))
    rows = torch.cat([r.expand(*shape, r.shape[-1]) for r in reduced], -1).reshape(-1, sum(r.shape[-1]
                                                                                          for r in reduced))
    trace.atoms.union_rows(rows)  # one (batch, head) index: query, key and value dims go together
    per_row = trace.atoms.roots(rows).amax(-1)  # after the merge every non-zero entry has this root
    trace.atoms.tag(rows, "head")
    labels = per_row.reshape(*shape, 1, 1).expand(out.shape)
    trace.set_labels(out, labels)


def pooling(trace, name, func, args, kwargs, out):
    x = args[0] if args else kwargs["input"]
    spatial = next((int(c) for c in ("1", "2", "3") if f"{c}d" in name), x.dim() - 2)
    cdim = x.dim() - spatial - 1
    labels = trace.labels(x)
    atoms = trace.axis_atoms(labels, cdim, name)
    for t in (out if isinstance(out, (tuple, list)) else (out,)):
        if isinstance(t, torch.Tensor):
            trace.set_labels(t, _channel_labels(t, atoms, cdim))


POOLING = ["max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
           "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
           "adaptive_max_pool2d", "adaptive_max_pool3d", "lp_pool1d", "lp_pool2d", "lp_pool3d",
           "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices",
           "adaptive_max_pool1d_with_indices", "adaptive_max_pool2d_with_indices", "interpolate", "upsample",
           "upsample_nearest", "upsample_bilinear", "fractional_max_pool2d", "fractional_max_pool3d"]

TABLE = {
    "conv1d": conv, "conv2d": conv, "conv3d": conv,
    "conv_transpose1d": conv_transpose, "conv_transpose2d": conv_transpose, "conv_transpose3d": conv_transpose,
    "linear": linear, "einsum": einsum, "matmul": matmul, "mm": matmul, "addmm": matmul, "bmm": matmul,
    "batch_norm": batch_norm, "instance_norm": instance_norm, "group_norm": group_norm,
    "layer_norm": layer_norm, "rms_norm": layer_norm, "prelu": prelu, "embedding": embedding,
    "multi_head_attention_forward": multi_head_attention, "scaled_dot_product_attention": sdpa,
    **{n: pooling for n in POOLING},
}
