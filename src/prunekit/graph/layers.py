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

from .atoms import varies_along


def _arg(args, kwargs, i, name, default=None):
    if name in kwargs:
        return kwargs[name]
    return args[i] if len(args) > i else default


def _module_of(name: str | None) -> str | None:
    return None if name is None else name.rpartition(".")[0]


def _weighted_unknown(trace, name, func, args, kwargs, out, why: str):
    from .handlers import unknown  # local: handlers imports this module

    reason = f"'{name}' in {trace.where()}: {why}"
    for t in list(args) + list(kwargs.values()):
        if isinstance(t, torch.Tensor) and trace.name_of(t) is not None:
            trace.freeze(trace.name_of(t), reason)
    unknown(trace, name, func, args, kwargs, out)


def _channel_labels(out: torch.Tensor, atoms: torch.Tensor, dim: int) -> torch.Tensor:
    shape = [1] * out.dim()
    shape[dim] = atoms.numel()
    return atoms.reshape(shape).expand(out.shape)


def conv(trace, name, func, args, kwargs, out):
    x, w, b = args[0], _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
    groups = _arg(args, kwargs, 6, "groups", 1)
    wname = trace.name_of(w)
    if wname is None or (b is not None and trace.name_of(b) is None):
        return _weighted_unknown(trace, name, func, args, kwargs, out, "its weight is computed, not a parameter")
    cdim = 1 if x.dim() == w.dim() else 0
    x_atoms = trace.axis_atoms(trace.labels(x), cdim, name)
    c_out, per_group = w.shape[0], w.shape[1]
    trace.couple_size(_module_of(wname), x_atoms)
    if groups == 1:
        trace.couple(wname, 1, x_atoms)
        out_atoms = trace.new(c_out, producer=(wname, 0))
    elif per_group == 1:  # depthwise, possibly with a channel multiplier
        out_atoms = x_atoms.repeat_interleave(c_out // groups)
    else:
        by_group = x_atoms.reshape(groups, per_group)
        for g in range(1, groups):
            trace.atoms.union_pairs(by_group[0], by_group[g])
        trace.couple(wname, 1, by_group[0])
        out_atoms = trace.new(c_out // groups, producer=(wname, 0)).repeat(groups)
    trace.couple(wname, 0, out_atoms)
    trace.couple(trace.name_of(b), 0, out_atoms)
    trace.set_labels(out, _channel_labels(out, out_atoms, cdim))


def conv_transpose(trace, name, func, args, kwargs, out):
    x, w, b = args[0], _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
    groups = _arg(args, kwargs, 6, "groups", 1)
    wname = trace.name_of(w)
    if wname is None or groups != 1:
        return _weighted_unknown(trace, name, func, args, kwargs, out, "computed weight or groups > 1")
    cdim = 1 if x.dim() == w.dim() else 0
    x_atoms = trace.axis_atoms(trace.labels(x), cdim, name)
    trace.couple(wname, 0, x_atoms)
    out_atoms = trace.new(w.shape[1], producer=(wname, 1))
    trace.couple(wname, 1, out_atoms)
    trace.couple(trace.name_of(b), 0, out_atoms)
    trace.set_labels(out, _channel_labels(out, out_atoms, cdim))


def _dense(trace, name, x, w_name, in_dim, out_dim, n_out, bias_name, out):
    x_atoms = trace.axis_atoms(trace.labels(x), -1, name)
    trace.couple(w_name, in_dim, x_atoms)
    out_atoms = trace.new(n_out, producer=(w_name, out_dim))
    trace.couple(w_name, out_dim, out_atoms)
    trace.couple(bias_name, -1, out_atoms)
    trace.set_labels(out, _channel_labels(out, out_atoms, out.dim() - 1))


def linear(trace, name, func, args, kwargs, out):
    x, w, b = args[0], _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
    if trace.name_of(w) is None or (b is not None and trace.name_of(b) is None) or w.dim() != 2:
        return _weighted_unknown(trace, name, func, args, kwargs, out, "its weight is computed, not a parameter")
    _dense(trace, name, x, trace.name_of(w), 1, 0, w.shape[0], trace.name_of(b), out)


def matmul(trace, name, func, args, kwargs, out):
    """x @ W with W a 2-D parameter (GPT-2's Conv1D); addmm(bias, x, W) too."""
    if name == "addmm":
        bias, a, w = args[0], args[1], args[2]
    else:
        bias, a, w = None, args[0], args[1]
    if (isinstance(w, torch.Tensor) and trace.name_of(w) is not None and w.dim() == 2
            and (bias is None or trace.name_of(bias) is not None) and trace.name_of(a) is None):
        return _dense(trace, name, a, trace.name_of(w), 0, 1, w.shape[1], trace.name_of(bias), out)
    if (name in ("matmul", "bmm") and isinstance(a, torch.Tensor) and isinstance(w, torch.Tensor)
            and trace.name_of(a) is None and trace.name_of(w) is None and a.dim() >= 2 and w.dim() >= 2):
        return _activation_product(trace, name, a, w, out)
    return _weighted_unknown(trace, name, func, args, kwargs, out,
                             "a product with a parameter on the left, or of vectors, is not understood")


def _merge_per_index(trace, rows: torch.Tensor) -> torch.Tensor:
    """rows[i]: every label that meets at batch/head index i of a product. Each index becomes
    one unit (its atoms merged); several distinct units are tagged as heads. The unit per index."""
    for row in torch.unique(rows, dim=0):
        trace.atoms.union_all(row)
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
    weight = getattr(module, "weight", None)
    return (type(module).__name__ == "Conv1D" and hasattr(module, "nf") and isinstance(weight, torch.Tensor)
            and weight.dim() == 2 and weight.shape[1] == module.nf)


def transposed_linear(trace, module, name, args, kwargs, output):
    """Its forward writes `nf` into a view, so it is described as a whole: a Linear with W.T."""
    x = args[0] if args else next(iter(kwargs.values()))
    w = f"{name}.weight" if name else "weight"
    b = f"{name}.bias" if name else "bias"
    _dense(trace, "Conv1D", x, w, 0, 1, module.weight.shape[1], b if getattr(module, "bias", None) is not None
           else None, output)


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
    if any(trace.name_of(t) is None for t in tensors):
        return _weighted_unknown(trace, name, func, args, kwargs, out, "per-channel tensors are computed")
    labels = trace.labels(x)
    atoms = trace.axis_atoms(labels, 1 if x.dim() > 1 else 0, name)
    if groups is not None:
        for row in atoms.reshape(groups, -1):
            trace.atoms.union_all(row)
    for t in tensors:
        trace.couple(trace.name_of(t), 0, atoms)
    if tensors:
        trace.couple_size(_module_of(trace.name_of(tensors[0])), atoms)
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
        if isinstance(t, torch.Tensor) and trace.name_of(t) is not None:
            if t.dim() == 1:
                trace.couple(trace.name_of(t), 0, trace.axis_atoms(labels, -1, name))
            else:
                trace.freeze(trace.name_of(t), f"'{name}' in {trace.where()} normalises over several axes")
    trace.set_labels(out, labels)


def embedding(trace, name, func, args, kwargs, out):
    w = _arg(args, kwargs, 1, "weight")
    if trace.name_of(w) is None:
        return _weighted_unknown(trace, name, func, args, kwargs, out, "its table is computed")
    atoms = trace.new(w.shape[1], producer=(trace.name_of(w), 1))
    trace.couple(trace.name_of(w), 1, atoms)
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
    for h in range(heads):  # inner width == embed_dim: head h goes with embedding channels of its slot
        trace.atoms.union_all(q_atoms[h * head_dim:(h + 1) * head_dim])
    trace.atoms.tag(q_atoms, "head")
    emb = q_atoms
    trace.couple(trace.name_of(w_in), 1, emb)
    trace.couple(trace.name_of(w_in), 0, emb.repeat(3))
    trace.couple(trace.name_of(b_in), 0, emb.repeat(3))
    trace.couple(trace.name_of(w_out), 1, emb)
    trace.couple(trace.name_of(w_out), 0, emb)
    trace.couple(trace.name_of(b_out), 0, emb)
    trace.couple_size(_module_of(trace.name_of(w_in)), emb)
    attn, weights = out
    trace.set_labels(attn, _channel_labels(attn, emb, attn.dim() - 1))
    if isinstance(weights, torch.Tensor):
        poison = trace.new(1)
        trace.heads.append((poison, emb))
        trace.set_labels(weights, poison.reshape(()))


def sdpa(trace, name, func, args, kwargs, out):
    q, k, v = args[0], _arg(args, kwargs, 1, "key"), _arg(args, kwargs, 2, "value")
    reduced = []
    for t in (q, k, v):
        labels = trace.labels(t)
        if t.dim() >= 2 and trace.units_vary(labels, t.dim() - 2):
            trace.block(labels, f"'{name}' in {trace.where()} gets channels that vary along the sequence")
        reduced.append(labels.amax(dim=-2) if t.dim() >= 2 else labels)
    shape = torch.broadcast_shapes(*(r.shape[:-1] for r in reduced))
    rows = torch.cat([r.expand(*shape, r.shape[-1]) for r in reduced], -1).reshape(-1, sum(r.shape[-1]
                                                                                          for r in reduced))
    for row in torch.unique(rows, dim=0):
        trace.atoms.union_all(row)  # one (batch, head) index: query, key and value dims go together
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
