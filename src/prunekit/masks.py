"""Binary masks as values, and as parametrizations on a model.

A `MaskSet` maps a parameter's *canonical* name (``"features.0.weight"``, the name it has on
the unpruned model) to a bool tensor of the same shape: True keeps, False prunes. It is a
plain value: validated, comparable, saveable and loadable without the model.

`apply_masks` installs each mask as a `torch.nn.utils.parametrize` parametrization, so the
forward pass sees ``where(m, w, 0)`` while the optimizer keeps owning the very same dense
Parameter object. Nothing a training step does can make a pruned weight non-zero in the
forward pass; `remove_masks` bakes the zeros into plain parameters again.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from .axis_mask import AxisMask
from .errors import MaskError, did_you_mean
from .feature_norms import normalise_over_kept, removed_somewhere
from .files import load_tensors, make_parent, write_atomically

_PARAMETRIZED = ".parametrizations."


class WeightMask(nn.Module):
    """The parametrization: w ↦ where(mask, w, 0).

    The mask is stored as given: a bool buffer `mask` (1 byte/element) or, for a structured
    mask, an `AxisMask`'s keep-vectors (buffers `keep_dim<d>`), expanded only while the forward
    runs. `.mask` is the bool tensor either way and the state_dict always holds it under
    '<prefix>mask', so checkpoints do not depend on the storage.

    Stored tensors are never changed in place — new masks and loaded state dicts replace them —
    so they are shared with the MaskSets they came from and that `get_masks` returns, not
    copied (a bool copy of every mask costs a quarter of an fp32 model's memory)."""

    def __init__(self, mask: torch.Tensor | AxisMask):
        super().__init__()
        self.replace(mask)

    def replace(self, mask: torch.Tensor | AxisMask) -> None:
        """Install a new mask (tensor or AxisMask) in place of the current one."""
        for name in list(self._buffers):
            del self._buffers[name]
        self.shape, self.per_axis = mask.shape, False
        if isinstance(mask, AxisMask):
            for dim, vector in mask.keep.items():
                self.register_buffer(f"keep_dim{dim}", vector)
            self.per_axis = True
        else:
            self.register_buffer("mask", mask.to(torch.bool))

    @property
    def stored(self) -> torch.Tensor | AxisMask:
        """The mask in the form it is stored (shared, not copied)."""
        if not self.per_axis:
            return self._buffers["mask"]
        return AxisMask(self.shape, {int(name[len("keep_dim"):]): v for name, v in self._buffers.items()})

    def __getattr__(self, name: str):
        if name == "mask" and self.__dict__.get("per_axis"):
            return self.stored.dense()
        return super().__getattr__(name)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if self.per_axis:
            destination[prefix + "mask"] = self.stored.dense()
        else:
            super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "mask" in state_dict:  # load into a fresh tensor: MaskSets may share the current one
            device = next(iter(self._buffers.values())).device if self._buffers else None
            self.replace(torch.empty(self.shape, dtype=torch.bool, device=device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        # where(), not multiplication: a NaN/inf in a pruned slot still yields an exact 0.
        if not self.per_axis:
            return torch.where(self._buffers["mask"], weight, weight.new_zeros(()))
        stored = self.stored
        and_size = math.prod(self.shape[d] for d in stored.keep)  # of the vectors' broadcast AND
        if len(stored.keep) < 2 or 4 * and_size < weight.numel():
            return torch.where(stored.broadcastable(), weight, weight.new_zeros(()))
        # The vectors AND to a bool as large as the weight (a Linear's [out, in]): instead, where()
        # over the other axes, then the first axis's removed slices filled whole — the same values
        # and gradients, about twice as fast on CPU.
        first = min(stored.keep)
        others = AxisMask(self.shape, {d: v for d, v in stored.keep.items() if d != first})
        out = torch.where(others.broadcastable(), weight, weight.new_zeros(()))
        return out.index_fill_(first, self._removed(stored, first), 0.0)

    def _removed(self, stored: AxisMask, dim: int) -> torch.Tensor:
        """stored.removed(dim), cached per keep-vector (the vectors are replaced, never written,
        so the tensor object identifies them): one device sync per mask, not per forward."""
        vector = stored.keep[dim]
        cached = self.__dict__.setdefault("_removed_cache", {}).get(dim)
        if cached is None or cached[0] is not vector:
            cached = (vector, stored.removed(dim))
            self._removed_cache[dim] = cached
        return cached[1]


def is_mask_buffer(name: str) -> bool:
    """Whether a model's buffer name is a WeightMask's storage ('….parametrizations.w.0.mask' or
    '….0.keep_dim<d>'), not a buffer of the user's own."""
    last = name.rpartition(".")[2]
    return _PARAMETRIZED in "." + name and (last == "mask" or last.startswith("keep_dim"))


class MaskSet(Mapping):
    """An immutable mapping parameter-name → bool mask (True = kept).

    It owns its tensors: masks given as a plain mapping are copied (the caller may change
    them later); another MaskSet's tensors are shared, since neither set changes them.
    Treat the tensors it returns as read-only.
    """

    def __init__(self, masks: Mapping[str, torch.Tensor] | None = None):
        if isinstance(masks, MaskSet):
            self._masks = dict(masks._masks)
            return
        checked = {}
        for name, mask in (masks or {}).items():
            checked[str(name)] = _as_bool_mask(name, mask)
        self._masks = checked

    @classmethod
    def adopt(cls, masks: dict[str, torch.Tensor | AxisMask]) -> MaskSet:
        """A MaskSet made of bool masks (or AxisMasks) this library has just built and keeps no other
        reference to, without copying them (the bool masks of a large model are a quarter of its size)."""
        out = cls()
        out._masks = {str(name): mask for name, mask in masks.items()}
        return out

    # Mapping protocol -------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return _dense(self._masks[name])
        except KeyError:
            raise MaskError(f"No mask for '{name}'.{did_you_mean(name, self._masks)}") from None

    def __contains__(self, name) -> bool:
        return name in self._masks

    def get(self, name, default=None):
        return self[name] if name in self._masks else default

    def stored(self, name: str) -> torch.Tensor | AxisMask:
        """The mask as it is held: a bool tensor, or an AxisMask for a structured one (indexing
        the set expands that to a full tensor; this does not)."""
        return self._masks[name] if name in self._masks else self[name]  # the latter raises the helpful error

    def __iter__(self):
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def __eq__(self, other) -> bool:
        if not isinstance(other, MaskSet) or set(self) != set(other):
            return False
        return all(torch.equal(self[n].cpu(), other[n].cpu()) for n in self)

    __hash__ = None  # mutable tensors inside: not hashable

    def __repr__(self) -> str:
        return f"MaskSet({len(self)} tensors, {self.kept()}/{self.numel()} kept, sparsity {self.sparsity():.4f})"

    # Counts -----------------------------------------------------------------------------
    def numel(self) -> int:
        return sum(m.numel() for m in self._masks.values())  # a tensor's or an AxisMask's

    def kept(self) -> int:
        return sum(m.kept() if isinstance(m, AxisMask) else int(m.sum()) for m in self._masks.values())

    def density(self) -> float:
        n = self.numel()
        return self.kept() / n if n else 1.0

    def sparsity(self) -> float:
        return 1.0 - self.density()

    # Algebra ----------------------------------------------------------------------------
    def intersect(self, other: Mapping[str, torch.Tensor]) -> MaskSet:
        """Elementwise AND; names present in only one operand are kept as they are."""
        out = dict(self._masks)
        for name in other:
            mine, theirs = out.get(name), other.stored(name) if isinstance(other, MaskSet) else other[name]
            if mine is None:
                out[name] = theirs
            elif isinstance(mine, AxisMask) and isinstance(theirs, AxisMask):
                out[name] = mine & theirs  # both per channel: so is their AND
            else:
                out[name] = self[name] & other[name].to(self[name].device)
        return MaskSet.adopt(out)  # new tensors, or tensors of the two (immutable) operands

    def is_subset_of(self, other: MaskSet) -> bool:
        """True when every weight kept here is also kept in `other` (masks only shrink)."""
        return all(name in other and not bool((self[name] & ~other[name].to(self[name].device)).any())
                   for name in self)

    def to(self, device) -> MaskSet:
        return MaskSet({n: m.to(device) for n, m in self._masks.items()})

    # Persistence ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        path = Path(path)
        if path.exists() and not overwrite:
            raise MaskError(f"{path} exists; pass overwrite=True to replace it or choose another path.")
        make_parent(path)
        return write_atomically(path, {n: m.cpu() for n, m in self.items()})

    @classmethod
    def load(cls, path: str | os.PathLike) -> MaskSet:
        data = load_tensors(path, "mask file")
        if not isinstance(data, dict):
            raise MaskError(f"{path} does not hold a prunekit MaskSet (a dict of name → bool tensor).")
        return cls(data)

    @classmethod
    def ones_like(cls, params: Mapping[str, torch.Tensor]) -> MaskSet:
        return cls({n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()})

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor]) -> MaskSet:
        """Masks stored in the state_dict of a masked model (keys '<module>.parametrizations.<t>.0.mask')."""
        masks = {}
        for key, value in state_dict.items():
            name = _parametrized_tensor(key, ".0.mask")
            if name is not None:
                masks[name] = value
        return cls(masks)


def _dense(mask: torch.Tensor | AxisMask) -> torch.Tensor:
    return mask.dense() if isinstance(mask, AxisMask) else mask


def _as_bool_mask(name, mask) -> torch.Tensor | AxisMask:
    if isinstance(mask, AxisMask):
        return mask  # immutable: shared as it is
    if not isinstance(mask, torch.Tensor):
        raise MaskError(f"Mask for '{name}' is a {type(mask).__name__}; pass a torch.Tensor of 0/1 or bools.")
    if mask.dtype == torch.bool:
        return mask.detach().clone()  # a MaskSet owns its tensors: later pruning cannot change it
    if mask.is_floating_point() or mask.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise MaskError(f"Mask for '{name}' is not binary; every entry must be 0 or 1 (True keeps a weight).")
        return mask.detach().to(torch.bool)
    raise MaskError(f"Mask for '{name}' has dtype {mask.dtype}; use torch.bool.")


# ----------------------------------------------------------------------------------------
# Canonical parameter names on a (possibly already masked) model
# ----------------------------------------------------------------------------------------

def _parametrized_tensor(key: str, suffix: str) -> str | None:
    """'a.parametrizations.weight<suffix>' → 'a.weight' (the root module's own: 'parametrizations.pos…'
    → 'pos'); None for any other key."""
    if key.startswith(_PARAMETRIZED[1:]):
        key = "." + key
    if _PARAMETRIZED not in key or not key.endswith(suffix):
        return None
    module, rest = key.split(_PARAMETRIZED, 1)
    tensor = rest[: -len(suffix)]
    return f"{module}.{tensor}" if module else tensor


def canonical_name(name: str) -> str:
    """'a.parametrizations.weight.original' → 'a.weight'; other names unchanged."""
    return _parametrized_tensor(name, ".original") or name


def named_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every parameter of `model` under its canonical (unmasked) name, the dense tensor itself."""
    return {canonical_name(n): p for n, p in model.named_parameters()}


def effective_weight(model: nn.Module, name: str) -> torch.Tensor:
    """What the forward pass uses for parameter `name`: w ⊙ m if masked, else w."""
    module, tensor = _owner(model, name)
    return getattr(module, tensor)


def default_prunable(model: nn.Module) -> list[str]:
    """Weight matrices and kernels: floating-point parameters with two or more dimensions.

    Biases and normalisation scales (1-D) are excluded by default, as in the literature.
    """
    return [n for n, p in named_parameters(model).items() if p.is_floating_point() and p.dim() >= 2]


def resolve_parameters(model: nn.Module, params=None) -> dict[str, nn.Parameter]:
    """Turn a user's `params` selection into {canonical name: Parameter}, validating it.

    `params` may be None (default_prunable), an iterable of names, or a callable
    (name, parameter) → bool.
    """
    available = named_parameters(model)
    if params is None:
        names = default_prunable(model)
    elif callable(params):
        names = [n for n, p in available.items() if params(n, p)]
    elif isinstance(params, str):
        raise MaskError(f"params={params!r} is a single string; pass a list of names, e.g. [{params!r}].")
    elif not isinstance(params, Iterable):
        raise MaskError(f"params={params!r}: pass a list of parameter names, a predicate (name, parameter) → bool, "
                        "or None for every weight matrix and kernel.")
    else:
        names = list(params)
    if not names:
        raise MaskError("No parameters selected for pruning; pass params=[names] or a predicate that matches some.")
    chosen = {}
    for name in names:
        if name not in available:
            raise MaskError(f"Model has no parameter '{name}'.{did_you_mean(name, available)} "
                            "List them with prunekit.named_parameters(model).")
        p = available[name]
        if not p.is_floating_point():
            raise MaskError(f"Parameter '{name}' has dtype {p.dtype}; only floating-point parameters can be pruned.")
        chosen[name] = p
    return chosen


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_name, _, tensor = name.rpartition(".")
    try:
        module = model.get_submodule(module_name) if module_name else model
    except AttributeError:
        raise MaskError(f"Model has no module '{module_name}' (from parameter name '{name}').") from None
    return module, tensor


# ----------------------------------------------------------------------------------------
# Installing and removing masks
# ----------------------------------------------------------------------------------------

def _mask_parametrization(module: nn.Module, tensor: str) -> WeightMask | None:
    if not parametrize.is_parametrized(module, tensor):
        return None
    chain = module.parametrizations[tensor]
    found = [p for p in chain if isinstance(p, WeightMask)]
    if len(chain) != 1 or not found:
        raise MaskError(f"'{tensor}' of {type(module).__name__} carries parametrizations prunekit did not install "
                        f"({[type(p).__name__ for p in chain]}); remove them before pruning it.")
    return found[0]


def _independent_deepcopy(self, memo):
    """deepcopy for a module carrying prunekit masks: the replica gets its own injected class.

    torch.nn.utils.parametrize gives a parametrized module a generated subclass that holds one
    property per masked tensor; a plain deepcopy shares that class, so removing or adding a
    parametrization on the copy would delete or add properties on the original too.
    """
    cls = type(self)
    replica = cls.__new__(cls)
    memo[id(self)] = replica
    replica.__dict__ = copy.deepcopy(self.__dict__, memo)
    replica.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
    return replica


def _own_class(module: nn.Module) -> None:
    """Give a parametrized module a generated class of its own whose deepcopy does the same, so
    changing the parametrizations of one module (or of a copy) never touches another."""
    if not parametrize.is_parametrized(module):
        return
    cls = type(module)
    own = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
    deepcopy_fn = own.__dict__.get("__deepcopy__")
    if deepcopy_fn is None or deepcopy_fn.__name__ == "default_deepcopy":  # torch's generic one
        own.__deepcopy__ = _independent_deepcopy
    module.__class__ = own


def check_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> MaskSet:
    """Validate `masks` against `model` (names, shapes, dtypes) without changing anything."""
    masks = masks if isinstance(masks, MaskSet) else MaskSet(masks)
    available = named_parameters(model)
    for name in masks:
        mask = masks.stored(name)  # shape only: an AxisMask stays unexpanded
        if name not in available:
            raise MaskError(f"Mask names parameter '{name}', which the model does not have."
                            f"{did_you_mean(name, available)}")
        p = available[name]
        if not p.is_floating_point():
            raise MaskError(f"Parameter '{name}' has dtype {p.dtype}; only floating-point parameters can be masked.")
        if tuple(mask.shape) != tuple(p.shape):
            raise MaskError(f"Mask for '{name}' has shape {tuple(mask.shape)} but the parameter is {tuple(p.shape)}.")
        module, tensor = _owner(model, name)
        _mask_parametrization(module, tensor)  # raises on foreign parametrizations
    return masks


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> MaskSet:
    """Install (or replace) the masks on `model`, in place. Validates everything first.

    The dense tensor's pruned entries are zeroed too, so a checkpoint of the dense values is
    itself sparse; the forward pass would be exact even without that.
    """
    masks = check_masks(model, masks)
    available = named_parameters(model)  # installing a mask keeps the Parameter object itself
    for name in masks:
        module, tensor = _owner(model, name)
        existing = _mask_parametrization(module, tensor)
        dense = available[name]
        mask = masks.stored(name).to(dense.device)
        if existing is not None:
            existing.replace(mask)  # replaced, not written into: MaskSets may share the old tensor
        else:
            _own_class(module)
            parametrize.register_parametrization(module, tensor, WeightMask(mask), unsafe=True)
            _own_class(module)
            if tensor == "weight":
                normalise_over_kept(module)  # a LayerNorm / RMSNorm: statistics over the kept features
        with torch.no_grad():
            if isinstance(mask, AxisMask):
                mask.zero_removed(dense)
            else:
                dense.masked_fill_(~mask, 0.0)
    return masks


def get_masks(model: nn.Module) -> MaskSet:
    """The masks currently installed on `model` (empty MaskSet if none)."""
    found = {}
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for tensor in module.parametrizations:
            mp = _mask_parametrization(module, tensor)
            if mp is not None:
                found[f"{module_name}.{tensor}" if module_name else tensor] = mp.stored
    return MaskSet.adopt(found)  # shares the buffers: WeightMask never changes them in place


def refuse_dense_norms(model: nn.Module, what: str) -> None:
    """Raise when `model` has norms whose masks remove features (see feature_norms)."""
    norms = removed_somewhere(model)
    if norms:
        raise MaskError(f"{what} cannot keep this model's outputs: the masks remove features of "
                        f"{', '.join(norms[:3])}{' …' if len(norms) > 3 else ''}, which normalise over the kept features "
                        "only; a dense copy would count the removed ones again. Use prunekit.compact(model, x), "
                        "which deletes those features.")


def remove_masks(model: nn.Module) -> nn.Module:
    """Bake every mask into its parameter (w ← w ⊙ m) and drop the parametrizations, in place.

    The Parameter objects keep their identity, so an optimizer built earlier still works.
    Refused (nothing changed) when a mask removes features of a LayerNorm / RMSNorm: a dense
    norm would count them again, so only `prunekit.compact` keeps such a model's outputs.
    """
    refuse_dense_norms(model, "remove_masks")
    for name in list(get_masks(model)):
        module, tensor = _owner(model, name)
        _own_class(module)
        parametrize.remove_parametrizations(module, tensor, leave_parametrized=True)
    return model


def discard_masks(model: nn.Module) -> nn.Module:
    """Drop every mask and keep the dense tensors as they are, in place — for undoing a pruning
    step whose dense values are restored separately (no check: a dense norm may then differ)."""
    for name in list(get_masks(model)):
        module, tensor = _owner(model, name)
        _own_class(module)
        parametrize.remove_parametrizations(module, tensor, leave_parametrized=False)
    return model


def load_masked_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True):
    """Load a state_dict saved from a masked model into a fresh (unmasked) instance.

    Installs the masks the state_dict carries first, so keys and forward pass match.
    """
    masks = MaskSet.from_state_dict(state_dict)
    check_masks(model, masks)
    current = model.state_dict()
    expected = {key: tuple(t.shape) for key, t in current.items()}
    for name in masks:  # the keys this model will have once the masks are installed
        if name in expected:
            shape = expected.pop(name)
            module, _, tensor = name.rpartition(".")
            prefix = f"{module}.parametrizations.{tensor}" if module else f"parametrizations.{tensor}"
            expected[f"{prefix}.original"] = expected[f"{prefix}.0.mask"] = shape
    given = {key: tuple(t.shape) for key, t in state_dict.items()}
    if strict and set(given) != set(expected):
        missing, extra = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
        raise MaskError(f"Checkpoint does not fit this model (missing {missing[:5]}, unexpected {extra[:5]}); "
                        "load it into an instance of the architecture it was saved from.")
    wrong = [k for k in set(given) & set(expected) if given[k] != expected[k]]
    if wrong:
        raise MaskError(f"Checkpoint shapes differ from the model's for {sorted(wrong)[:5]}; "
                        "was it saved from a compacted or differently sized model?")
    apply_masks(model, masks)
    return model.load_state_dict(state_dict, strict=strict)
