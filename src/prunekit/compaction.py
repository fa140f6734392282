"""Physically remove masked-out channels and heads: a smaller plain nn.Module.

    small, record = compact(model, x)       # model carries structured masks
    record.save("pruned.rec")
    fresh = apply_record(build_model(...), CompactionRecord.load("pruned.rec"))
    fresh.load_state_dict(torch.load("pruned.pt"))

A unit (channel, head, norm group) of a prunable group is removed when *every* parameter
slice it owns is masked out. Such a unit is exactly zero after its producer (weights, bias,
norm scale and shift all zero), and every consumer's input slice for it is zero too, so
deleting the slices — and the running statistics, which only ever multiplied a zero scale —
leaves every output unchanged. Partially masked units and blocked groups stay as they are.
If every unit of a group is masked, the first one is kept (all zeros) so shapes stay valid.

The result is a deep copy with masks baked in, tensors sliced and module attributes
(in/out channels and features, groups, num_features, num_groups, embed_dim, num_heads …)
updated; it needs nothing from prunekit to run, save, load or export.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from .accounting import count_flops
from .errors import GraphError, PrunekitError
from .files import load_tensors, make_parent
from .graph import SIZE_SUFFIX, DependencyGraph, build_graph, graph_and_output
from .masks import canonical_name, get_masks
from .modes import evaluation_mode
from .nested import tensors_in
from .structured import dead_units

FORMAT = "prunekit.compaction/1"


@dataclass
class CompactionRecord:
    """What compaction removed: kept positions per tensor and dim, and new module attributes."""

    kept: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)
    shapes: dict[str, tuple] = field(default_factory=dict)   # shapes before compaction
    attrs: dict[str, dict[str, object]] = field(default_factory=dict)

    def new_shape(self, name: str) -> tuple:
        shape = list(self.shapes[name])
        for dim, index in self.kept.get(name, {}).items():
            shape[dim] = len(index)
        return tuple(shape)

    def removed(self) -> dict[str, int]:
        return {n: math.prod(self.shapes[n]) - math.prod(self.new_shape(n)) for n in self.kept}

    def save(self, path, *, overwrite: bool = False) -> Path:
        path = Path(path)
        if path.exists() and not overwrite:
            raise PrunekitError(f"{path} exists; pass overwrite=True to replace it or choose another path.")
        make_parent(path)
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"format": FORMAT, "kept": self.kept, "shapes": {k: list(v) for k, v in self.shapes.items()},
                    "attrs": {m: {a: list(v) if isinstance(v, tuple) else v for a, v in d.items()}
                              for m, d in self.attrs.items()}}, tmp)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path) -> CompactionRecord:
        data = load_tensors(path, "compaction record")
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise PrunekitError(f"{path} is not a prunekit compaction record ({FORMAT}).")
        attrs = {m: {a: tuple(v) if isinstance(v, list) else v for a, v in d.items()}
                 for m, d in data["attrs"].items()}
        return cls(data["kept"], {k: tuple(v) for k, v in data["shapes"].items()}, attrs)


def removable_units(model: nn.Module, graph: DependencyGraph) -> dict[str, torch.Tensor]:
    """{group name: keep BoolTensor} from the masks installed on `model`."""
    masks = get_masks(model)
    keep = {}
    for group in graph.prunable():
        dead = dead_units(group, masks)
        if bool(dead.all()):
            dead[0] = False  # keep one (zero) unit so every tensor keeps a valid shape
        if bool(dead.any()):
            keep[group.name] = ~dead
    return keep


def make_record(model: nn.Module, graph: DependencyGraph, keep: dict[str, torch.Tensor]) -> CompactionRecord:
    removed: dict[tuple[str, int], set[int]] = {}
    for name, kept in keep.items():
        for s in graph[name].slices:
            removed.setdefault((s.name, s.dim), set()).update(s.index[~kept].reshape(-1).tolist())
    record = CompactionRecord()
    for (name, dim), gone in removed.items():
        size = graph.shapes[name][dim]
        record.shapes[name] = tuple(graph.shapes[name])
        record.kept.setdefault(name, {})[dim] = torch.tensor([i for i in range(size) if i not in gone],
                                                             dtype=torch.long)
    record.attrs = _module_attributes(model, record)
    return record


def _module_attributes(model: nn.Module, record: CompactionRecord) -> dict[str, dict[str, object]]:
    """The constructor-level attributes each touched module has after slicing."""
    def new(name, dim, default):
        return record.new_shape(name)[dim] if name in record.kept else default

    touched = {n[: -len(SIZE_SUFFIX)] if n.endswith(SIZE_SUFFIX) else n.rpartition(".")[0] for n in record.kept}
    attrs = {}
    for mname in sorted(touched):
        m = model.get_submodule(mname)
        w = f"{mname}.weight" if mname else "weight"
        size = mname + SIZE_SUFFIX
        a = {}
        if isinstance(m, nn.modules.conv._ConvNd):
            if m.transposed:
                a["in_channels"] = new(w, 0, m.in_channels)
                a["out_channels"] = new(w, 1, m.weight.shape[1]) * m.groups
            else:
                a["out_channels"] = new(w, 0, m.out_channels)
                a["in_channels"] = new(size, 0, m.in_channels)
                a["groups"] = a["in_channels"] // new(w, 1, m.weight.shape[1])
        elif isinstance(m, nn.Linear):
            a["in_features"], a["out_features"] = new(w, 1, m.in_features), new(w, 0, m.out_features)
        elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
            a["num_features"] = new(size, 0, m.num_features)
        elif isinstance(m, nn.GroupNorm):
            per_group = m.num_channels // m.num_groups
            a["num_channels"] = new(size, 0, m.num_channels)
            a["num_groups"] = a["num_channels"] // per_group
        elif isinstance(m, nn.LayerNorm) and m.weight is not None:
            a["normalized_shape"] = tuple(record.new_shape(w)) if w in record.kept else m.normalized_shape
        elif isinstance(m, nn.Embedding):
            a["embedding_dim"] = new(w, 1, m.embedding_dim)
        elif isinstance(m, nn.PReLU):
            a["num_parameters"] = new(w, 0, m.num_parameters)
        elif isinstance(m, nn.MultiheadAttention):
            embed = new(f"{mname}.in_proj_weight", 1, m.embed_dim)
            a.update(embed_dim=embed, kdim=embed, vdim=embed, num_heads=embed // m.head_dim)
        elif hasattr(m, "nf") and w in record.kept:  # GPT-2's Conv1D (weight: in × out)
            a["nf"] = new(w, 1, m.nf)
        if a:
            attrs[mname] = a
    return attrs


def _tensor_owner(model: nn.Module, name: str):
    module_name, _, tensor = name.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), tensor


def apply_record(model: nn.Module, record: CompactionRecord) -> nn.Module:
    """Give `model` (a fresh, unmasked instance of the same architecture) the compacted shapes,
    in place, so a compacted checkpoint loads into it. Checks everything before changing anything."""
    if len(get_masks(model)):
        raise PrunekitError("apply_record needs an unmasked model; call prunekit.remove_masks(model) first.")
    state = dict(model.named_parameters())
    state.update(dict(model.named_buffers()))
    for name, shape in record.shapes.items():
        if name.endswith(SIZE_SUFFIX):
            try:
                model.get_submodule(name[: -len(SIZE_SUFFIX)])
            except AttributeError:
                raise PrunekitError(f"The record names module '{name[:-len(SIZE_SUFFIX)]}', which this model "
                                    "lacks: apply it to the architecture it was made from.") from None
            continue
        if name not in state:
            raise PrunekitError(f"The record names tensor '{name}', which this model lacks: apply it to the "
                                "architecture it was made from.")
        if tuple(state[name].shape) != tuple(shape):
            raise PrunekitError(f"'{name}' has shape {tuple(state[name].shape)}, the record expects {tuple(shape)}: "
                                "was this model already compacted, or built with other sizes?")
    holders: dict[int, list[tuple[nn.Module, str]]] = {}  # a tied tensor is held by several modules
    for module in model.modules():
        for attr, tensor in list(module._parameters.items()) + list(module._buffers.items()):
            if tensor is not None:
                holders.setdefault(id(tensor), []).append((module, attr))
    with torch.no_grad():
        for name, dims in record.kept.items():
            if name.endswith(SIZE_SUFFIX):
                continue
            old = state[name]
            value = old.detach()
            for dim, index in dims.items():
                value = value.index_select(dim, index.to(value.device))
            new = nn.Parameter(value.clone(), requires_grad=old.requires_grad) if isinstance(
                old, nn.Parameter) else value.clone()
            for module, attr in holders.get(id(old), [_tensor_owner(model, name)]):
                (module._parameters if isinstance(old, nn.Parameter) else module._buffers)[attr] = new
    for mname, attrs in record.attrs.items():
        module = model.get_submodule(mname)
        for attr, value in attrs.items():
            setattr(module, attr, value)
    return model


def call_model(model, example_inputs):
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    return model(*(example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)))


def relative_error(a, b) -> float:
    """max over outputs of ‖a − b‖ / ‖a‖ (0 when both are zero)."""
    worst = 0.0
    for x, y in zip(tensors_in(a), tensors_in(b), strict=True):
        if x.shape != y.shape:
            return math.inf
        x, y = x.detach().double(), y.detach().double()
        worst = max(worst, float((x - y).norm() / x.norm().clamp_min(1e-30)) if x.numel() else 0.0)
    return worst


def plain_copy(model: nn.Module) -> nn.Module:
    """A deep copy with every mask baked in (w ⊙ m) and no parametrization left.

    remove_masks() is not used on the copy: parametrized modules of a copy share their
    injected class with the original, and removing the parametrization edits that class.
    """
    small = copy.deepcopy(model)
    holders: dict[int, list[tuple[nn.Module, str]]] = {}  # modules that share (tie) a parameter
    for module in small.modules():
        for attr, p in module._parameters.items():
            if p is not None:
                holders.setdefault(id(p), []).append((module, attr))
    for module in list(small.modules()):
        if not parametrize.is_parametrized(module):
            continue
        with torch.no_grad():
            baked = {t: getattr(module, t).detach().clone() for t in module.parametrizations}
        originals = {t: module.parametrizations[t].original for t in module.parametrizations}
        module.__class__ = module.__class__.__bases__[0]  # the user's own class again
        del module._modules["parametrizations"]
        for t, value in baked.items():
            new = nn.Parameter(value, requires_grad=originals[t].requires_grad)
            module._parameters[t] = new
            for other, attr in holders.get(id(originals[t]), []):
                other._parameters[attr] = new  # a tied weight stays tied
    return small


def compact(model: nn.Module, example_inputs, *, graph: DependencyGraph | None = None,
            check: bool = True, rtol: float = 1e-5) -> tuple[nn.Module, CompactionRecord]:
    """(smaller deep copy, CompactionRecord). `model` itself is not changed.

    With check=True both models run on `example_inputs` in eval mode and a relative output
    error above `rtol` raises GraphError instead of returning a wrong model.
    """
    reference = None
    if graph is None:  # the tracing pass is an eval-mode forward: its output is the reference
        graph, reference = graph_and_output(model, example_inputs)
    record = make_record(model, graph, removable_units(model, graph))
    small = plain_copy(model)
    apply_record(small, record)
    if check:
        with torch.no_grad(), evaluation_mode(model), evaluation_mode(small):
            if reference is None:
                reference = call_model(model, example_inputs)
            error = relative_error(reference, call_model(small, example_inputs))
        if not error <= rtol:
            raise GraphError(f"The compacted model's outputs differ from the masked model's (relative error "
                             f"{error:.2e} > {rtol:g}); nothing was changed. Please report this model.")
    return small, record


def predicted_counts(model: nn.Module, example_inputs, *, graph: DependencyGraph | None = None) -> dict[str, int]:
    """Parameters and FLOPs the compacted model will have, computed from the masks alone.

    params: every parameter's size with the removed positions taken out of each dim.
    flops: count_flops' sparse count of the masked model — a compacted conv / linear layer
    multiplies exactly the weights the mask kept, at the same output positions. Exact when
    the FLOPs counted are those of conv / linear layers (CNNs, MLPs); attention's own
    products shrink with the heads and are counted as dense here.
    """
    graph = graph if graph is not None else build_graph(model, example_inputs)
    record = make_record(model, graph, removable_units(model, graph))
    params = 0
    for raw, p in model.named_parameters():
        name = canonical_name(raw)
        params += math.prod(record.new_shape(name)) if name in record.kept else p.numel()
    return {"params": params, "flops": int(count_flops(model, example_inputs)["sparse_flops"])}


__all__ = ["CompactionRecord", "apply_record", "compact", "make_record", "predicted_counts", "relative_error",
           "removable_units"]
