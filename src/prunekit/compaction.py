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

The result is a copy with masks baked in, tensors sliced and module attributes (in/out
channels and features, groups, num_features, num_groups, embed_dim, num_heads …, and what a
registered LayerHandler's `attributes` says) updated; it needs nothing from prunekit to run,
save, load or export. The copy is streamed: the module tree is copied without its tensors,
then each tensor is baked and sliced from the original one at a time, so peak memory is the
model plus the compacted model, never two full copies. `inplace=True` compacts the model
itself (peak: the model plus one tensor).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from .accounting import count_flops
from .errors import GraphError, PrunekitError
from .files import load_tensors, make_parent, write_atomically
from .graph import SIZE_SUFFIX, DependencyGraph, Handlers, build_graph, graph_and_output
from .masks import WeightMask, canonical_name, get_masks, refuse_dense_norms
from .modes import evaluation_mode
from .nested import ExampleInputs, tensors_in
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
        write_atomically(path, {"format": FORMAT, "kept": self.kept,
                                "shapes": {k: list(v) for k, v in self.shapes.items()},
                                "attrs": {m: {a: list(v) if isinstance(v, tuple) else v for a, v in d.items()}
                                          for m, d in self.attrs.items()}})
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
    masks, alive = get_masks(model), {}
    keep = {}
    for group in graph.prunable():
        dead = dead_units(group, masks, alive)
        if bool(dead.all()):
            dead[0] = False  # keep one (zero) unit so every tensor keeps a valid shape
        if bool(dead.any()):
            keep[group.name] = ~dead
    return keep


def make_record(model: nn.Module, graph: DependencyGraph, keep: dict[str, torch.Tensor]) -> CompactionRecord:
    removed: dict[tuple[str, int], list[torch.Tensor]] = {}
    for name, kept in keep.items():
        for s in graph[name].slices:
            removed.setdefault((s.name, s.dim), []).append(s.index[~kept].reshape(-1))
    record = CompactionRecord()
    for (name, dim), gone in removed.items():
        size = graph.shapes[name][dim]
        alive = torch.ones(size, dtype=torch.bool)
        alive[torch.cat(gone)] = False
        record.shapes[name] = tuple(graph.shapes[name])
        record.kept.setdefault(name, {})[dim] = torch.nonzero(alive).flatten()
    record.attrs = module_attributes(model, record, graph.handlers)
    return record


def module_attributes(model: nn.Module, record: CompactionRecord, handlers=None) -> dict[str, dict[str, object]]:
    """The constructor-level attributes each touched module has after slicing, from the layer
    handler of its type (built-in for torch.nn layers, or the user's)."""
    handlers = Handlers.of(handlers)
    owners = {n[: -len(SIZE_SUFFIX)] if n.endswith(SIZE_SUFFIX) else n.rpartition(".")[0] for n in record.kept}
    touched = set()  # every owner and its enclosing modules (whose counts may follow a child's tensors)
    for owner in owners:
        parts = owner.split(".") if owner else []
        touched.update(".".join(parts[:i]) for i in range(len(parts) + 1))
    attrs = {}
    for mname in sorted(touched):
        try:
            module = model.get_submodule(mname)
        except AttributeError:
            continue  # the originals of a parametrization: their module's attributes follow them
        handler = handlers.lookup(module)
        if handler is None:
            continue

        def size(tensor: str, dim: int, default=None, mname=mname, module=module):
            name = mname + SIZE_SUFFIX if tensor == "<channels>" else (f"{mname}.{tensor}" if mname else tensor)
            if name in record.kept:
                return record.new_shape(name)[dim]
            return default if default is not None else getattr(module, tensor).shape[dim]

        new = handler.attributes(module, size)
        if new:
            attrs[mname] = new
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
    return materialise(model, model, record)


def skeleton_copy(model: nn.Module) -> nn.Module:
    """A deep copy of the module tree whose tensors are empty placeholders (no data copied).

    The parametrizations (masks) are not copied at all: the skeleton refers to the original's
    until `materialise` bakes them from the original and drops the reference."""
    memo = {}
    for t in list(model.parameters()) + list(model.buffers()):
        empty = torch.empty(0, dtype=t.dtype, device=t.device)
        memo[id(t)] = nn.Parameter(empty, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else empty
    for module in model.modules():
        if parametrize.is_parametrized(module):
            memo[id(module.parametrizations)] = module.parametrizations
    return copy.deepcopy(model, memo)


def _sliced(value, kept: dict[int, torch.Tensor] | None):
    """`value` (a tensor or an AxisMask) at the kept positions of each sliced axis."""
    for dim, index in (kept or {}).items():
        value = value.index_select(dim, index.to(value.device))
    return value


def materialise(target: nn.Module, source: nn.Module, record: CompactionRecord) -> nn.Module:
    """Fill `target` (`source` itself, or its skeleton_copy) with `source`'s tensors — masks and
    other parametrizations baked in, sliced as `record` says — one tensor at a time, then set the
    recorded module attributes. Tied tensors stay tied. In place, a tensor that keeps its shape
    and had no parametrization stays the very same object."""
    inplace = target is source
    done: dict[int, torch.Tensor] = {}   # id(source tensor) → its new tensor: one per tied tensor
    pairs = [(name, t, s) for (name, t), s in zip(target.named_modules(), source.modules())
             if ".parametrizations." not in f".{name}."]

    def convert(value, key, canonical, is_param, requires_grad, fresh=False, sliced=False):
        if key not in done:
            kept = None if sliced else record.kept.get(canonical)
            if inplace and not kept and not fresh:
                done[key] = value  # unchanged: keep the object (an optimizer built on it still works)
            else:
                with torch.no_grad():
                    data = _sliced(value.detach(), kept) if kept else value.detach()
                    if not kept and not fresh:
                        data = data.clone()  # the copy owns its memory
                done[key] = nn.Parameter(data, requires_grad=requires_grad) if is_param else data
        return done[key]

    baked_attrs: dict[int, set[str]] = {}
    for name, t_mod, s_mod in pairs:  # parametrized tensors first, so a tied plain holder gets the baked one
        if not parametrize.is_parametrized(s_mod):
            continue
        prefix, base = (f"{name}." if name else ""), type(s_mod).__bases__[0]
        baked = {}
        for attr, chain in s_mod.parametrizations.items():
            original = getattr(chain, "original", None)
            requires_grad = original.requires_grad if original is not None else any(
                p.requires_grad for p in chain.parameters())
            masked_only = original is not None and len(chain) == 1 and isinstance(chain[0], WeightMask)
            with torch.no_grad():
                if masked_only:  # slice first, then mask: the full-size w ⊙ m is never built
                    kept = record.kept.get(prefix + attr)
                    mask = _sliced(chain[0].stored, kept)  # an AxisMask is expanded at the small size
                    value = torch.where(mask if isinstance(mask, torch.Tensor) else mask.dense(),
                                        _sliced(original.detach(), kept), original.new_zeros(()))
                else:
                    value = getattr(s_mod, attr)  # the parametrization's output, computed now
            baked[attr] = convert(value, id(original) if original is not None else id(chain), prefix + attr,
                                  True, requires_grad, fresh=True, sliced=masked_only)
        t_mod.__class__ = base  # the user's own class again
        del t_mod._modules["parametrizations"]
        t_mod._parameters.update(baked)
        baked_attrs[id(t_mod)] = set(baked)
    for name, t_mod, s_mod in pairs:
        prefix, skip = (f"{name}." if name else ""), baked_attrs.get(id(t_mod), set())
        for attr, p in list(s_mod._parameters.items()):
            if p is not None and attr not in skip:
                t_mod._parameters[attr] = convert(p, id(p), prefix + attr, True, p.requires_grad)
        for attr, b in list(s_mod._buffers.items()):
            if b is not None:
                t_mod._buffers[attr] = convert(b, id(b), prefix + attr, False, False)
    for mname, attrs in record.attrs.items():
        module = target.get_submodule(mname)
        for attr, value in attrs.items():
            setattr(module, attr, value)
    return target


def call_model(model: nn.Module, example_inputs):
    """model(...) on example inputs in any form ExampleInputs.of accepts."""
    return ExampleInputs.of(example_inputs)(model)


def relative_error(a, b) -> float:
    """max over outputs of ‖a − b‖ / ‖a‖ (0 when both are zero); inf when the structures differ."""
    worst = 0.0
    first, second = list(tensors_in(a)), list(tensors_in(b))
    if len(first) != len(second):
        return math.inf
    for x, y in zip(first, second):
        if x.shape != y.shape:
            return math.inf
        x, y = x.detach().double(), y.detach().double()
        worst = max(worst, float((x - y).norm() / x.norm().clamp_min(1e-30)) if x.numel() else 0.0)
    return worst


def plain_copy(model: nn.Module) -> nn.Module:
    """A copy with every mask (and other parametrization) baked in and no parametrization left,
    streamed tensor by tensor. remove_masks() is not used on a deep copy: parametrized modules
    of a copy share their injected class with the original, and removing the parametrization
    edits that class. Refused for a model whose norms have features removed (compact it)."""
    refuse_dense_norms(model, "A plain (uncompacted) copy")
    return materialise(skeleton_copy(model), model, CompactionRecord())


def compact(model: nn.Module, example_inputs, *, graph: DependencyGraph | None = None,
            check: bool = True, rtol: float = 1e-5, inplace: bool = False,
            handlers=None) -> tuple[nn.Module, CompactionRecord]:
    """(smaller model, CompactionRecord). `model` itself is not changed unless `inplace`.

    With check=True both models run on `example_inputs` in eval mode and a relative output
    error above `rtol` — or any exception of the compacted forward — raises GraphError instead
    of returning a wrong model. inplace=True turns `model` itself into the compacted model
    (bounded memory for very large models; Parameters that shrink are new objects, so build
    the optimizer afterwards); if its check then fails, the model is left compacted.
    """
    example = ExampleInputs.of(example_inputs)
    reference = None
    if graph is None:  # the tracing pass is an eval-mode forward: its output is the reference
        graph, reference = graph_and_output(model, example, handlers=handlers)
    elif handlers is not None:
        graph.handlers = Handlers.of(handlers)
    record = make_record(model, graph, removable_units(model, graph))
    if check and reference is None:
        with torch.no_grad(), evaluation_mode(model):
            reference = example(model)
    small = materialise(model if inplace else skeleton_copy(model), model, record)
    if check:
        try:
            with torch.no_grad(), evaluation_mode(small):
                error = relative_error(reference, example(small))
        except Exception as e:  # noqa: BLE001 - whatever the compacted forward raises, say it plainly
            state = "was compacted in place and is now broken" if inplace else "was not changed"
            raise GraphError(f"The compacted model cannot run on example_inputs ({type(e).__name__}: {e}); the "
                             f"model {state}. A size written into the model's code probably did not follow "
                             "its channels: please report this model.") from e
        if not error <= rtol:
            state = "was compacted in place" if inplace else "was not changed"
            raise GraphError(f"The compacted model's outputs differ from the masked model's (relative error "
                             f"{error:.2e} > {rtol:g}); the model {state}. Please report this model.")
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
    return {"params": params, "flops": int(count_flops(model, example_inputs, handlers=graph.handlers)["sparse_flops"])}


__all__ = ["CompactionRecord", "apply_record", "call_model", "compact", "make_record", "materialise",
           "module_attributes", "plain_copy", "predicted_counts", "relative_error", "removable_units", "skeleton_copy"]

