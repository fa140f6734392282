"""Run one forward pass and label every activation with the channel atoms it carries.

A `TorchFunctionMode` sees every torch function and Tensor method the model calls — at the
level the Python code calls them (F.conv2d, torch.cat, x.view, x + y), so models that
torch.fx cannot trace (data-dependent Python control flow, custom containers) still work.
Next to each activation we keep an int64 *label tensor* of the same shape: which atom each
element belongs to. Handlers (handlers.py) compute the output labels of each operation and
record which slices of which parameters each atom touches (`couple`).

The model is left as it was: eval mode and no_grad for the pass, then every module's own
train/eval flag restored; the hooks used to name modules are removed; masked parameters are
read through `parametrize.cached()` so the masked weight is recognised as its parameter.
"""

from __future__ import annotations

import copy
import gc
from contextlib import ExitStack, contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode

from ..masks import WeightMask, canonical_name, is_mask_buffer
from ..modes import evaluation_mode, training_mode
from ..nested import ExampleInputs, tensors_in
from .atoms import AtomSet, compress, squeeze_broadcast, varies_along, varying_dims
from .derived import Derived, identity
from .live import LiveTensorMap
from .sizes import ChannelCount, tag_sizes

SIZE_SUFFIX = ".<channels>"  # pseudo tensor: a module's channel count that no parameter dimension carries


class Trace:
    """Everything learnt during the forward pass; the API handlers use."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.atoms = AtomSet()
        self._labels: LiveTensorMap[torch.Tensor] = LiveTensorMap()  # activation → its labels
        self._names: dict[int, str] = {}   # parameters and buffers (the model keeps them alive)
        self._aliases: LiveTensorMap[str] = LiveTensorMap()  # a masked weight the forward sees → its parameter
        self.shapes: dict[str, tuple] = {}
        self.kinds: dict[str, str] = {}     # name → "param" | "buffer" | "size"
        self.float_names: set[str] = set()
        self.coupled: dict[tuple[str, int], torch.Tensor] = {}
        self.element_atoms: dict[str, torch.Tensor] = {}
        self.frozen: dict[str, list[str]] = {}
        self.module_stack: list[str] = []
        self.module_handlers_active = 0
        self.unsupported: list[str] = []
        self.producers: set[tuple[str, int]] = set()
        self.seen: set[str] = set()      # tensors some operation used
        self.derived: LiveTensorMap[Derived] = LiveTensorMap()  # tensors computed from parameters alone
        self.unmasked: set[tuple[str, int]] = set()
        self.indexed: dict[str, set[int]] = {}  # parameter → axes read at fixed positions (tables)  # (tensor, dim) sliced by compaction but never masked
        self.unused: list[str] = []      # parameters no pass used
        self.output = None               # the model's eval-mode output on the example
        self.train_pass_error = ""       # why the train-mode pass could not run, if it could not
        self.heads: list[tuple[torch.Tensor, torch.Tensor]] = []  # (poison atom, head atoms)
        self.sized_by: list[tuple[tuple, torch.Tensor, str]] = []  # ((count's labels, axis), sized labels, why)
        for name, p in model.named_parameters():
            self._register(p, canonical_name(name), "param")
        for name, b in model.named_buffers():
            if not is_mask_buffer(name):
                self._register(b, name, "buffer")

    def checkpoint(self):
        """A function that puts the bookkeeping back as it is now (undo a failed pass)."""
        restore_atoms = self.atoms.snapshot()
        saved = {key: copy.copy(value) for key, value in vars(self).items()
                 if key not in ("atoms", "model", "_labels", "_aliases", "derived", "output")}
        saved["frozen"] = {k: list(v) for k, v in self.frozen.items()}
        saved["indexed"] = {k: set(v) for k, v in self.indexed.items()}

        def restore():
            restore_atoms()
            vars(self).update(saved)
            self.module_stack.clear()
            self.module_handlers_active = 0
        return restore

    # ----------------------------------------------------------------- tensors and names
    def _register(self, tensor: torch.Tensor, name: str, kind: str) -> None:
        self._names[id(tensor)] = name
        self.shapes[name] = tuple(tensor.shape)
        self.kinds[name] = kind
        if tensor.is_floating_point():
            self.float_names.add(name)
        self._labels.pop(tensor)

    def alias(self, tensor: torch.Tensor, name: str) -> None:
        """`tensor` is what the forward pass sees for parameter `name` (a masked weight)."""
        self._aliases[tensor] = name

    def name_of(self, tensor) -> str | None:
        name = self._plain_name(tensor) if isinstance(tensor, torch.Tensor) else None
        if name is not None:
            self.seen.add(name)
        return name

    def is_source(self, tensor) -> bool:
        """A parameter, buffer, or a tensor computed from them alone (no activation involved)."""
        return isinstance(tensor, torch.Tensor) and (self._plain_name(tensor) is not None
                                                     or self._derived(tensor) is not None)

    def _plain_name(self, tensor: torch.Tensor) -> str | None:
        """The parameter or buffer `tensor` is (or the masked weight standing for it); no side effect."""
        name = self._names.get(id(tensor))
        return name if name is not None else self._aliases.get(tensor)

    def _derived(self, tensor) -> Derived | None:
        return self.derived.get(tensor)

    def source_of(self, tensor) -> Derived | None:
        """How `tensor` follows parameter axes (identity for a parameter itself); None for activations."""
        if not isinstance(tensor, torch.Tensor):
            return None
        name = self.name_of(tensor)
        if name is not None:
            return identity(name, tensor.dim())
        return self._derived(tensor)

    def set_derived(self, tensor: torch.Tensor, derived: Derived) -> None:
        self.derived[tensor] = derived
        self._labels.pop(tensor)

    def has_activation_labels(self, tensor) -> bool:
        labels = self._labels.get(tensor)
        return labels is not None and bool((squeeze_broadcast(labels)[0] != 0).any())

    def where(self) -> str:
        return self.module_stack[-1] if self.module_stack and self.module_stack[-1] else "the model's forward"

    # ----------------------------------------------------------------- labels
    def labels(self, tensor: torch.Tensor) -> torch.Tensor:
        """The atom of every element of `tensor` (0 = depends on no channel)."""
        labels = self._labels.get(tensor)
        if labels is not None and labels.shape == tensor.shape:
            return labels
        name = self._plain_name(tensor)
        if name is not None:
            # A parameter or buffer used directly by an elementwise or movement op (a layer
            # scale, a class token): each element gets its own atom; groups.py later finds the
            # dimension along which these atoms were merged with channels.
            return self._element_atoms(name, tensor)
        derived = self._derived(tensor)
        if derived is not None:
            labels = self._derived_labels(derived, tensor)
            self._labels[tensor] = labels
            return labels
        return torch.zeros(tensor.shape, dtype=torch.long)

    def _element_atoms(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        self.seen.add(name)
        if name not in self.element_atoms:
            self.element_atoms[name] = self.atoms.new(tensor.numel()).reshape(tensor.shape)
        return self.element_atoms[name]

    def _derived_labels(self, derived: Derived, tensor: torch.Tensor) -> torch.Tensor:
        """Labels of a computed tensor that meets activations: its one source's element atoms laid
        out by the alignment; anything else (several sources, mixed axes) is opaque."""
        if len(derived.align) == 1 and not any(derived.mixed.values()):
            (name, align), = derived.align.items()
            shape = self.shapes[name]
            order = [a for axes in align for a in axes]
            wide = sorted(a for a in range(len(shape)) if shape[a] > 1)  # size-1 axes may go anywhere
            if sorted(a for a in order if shape[a] > 1) == wide and len(set(order)) == len(order):
                rest = [a for a in range(len(shape)) if a not in order]
                atoms = self._element_atoms(name, torch.empty(shape, device="meta"))
                sizes = [max(1, torch.Size([shape[a] for a in axes]).numel()) for axes in align]
                return atoms.permute(order + rest).reshape(sizes).expand(tensor.shape)
        for name in derived.align:
            self.freeze(name, f"{name} reaches the activations in {self.where()} through a computation "
                              "prunekit does not follow")
        return self.opaque(f"a tensor computed from {', '.join(derived.align)} in {self.where()}")

    def reset_labels(self) -> None:
        """Forget activations (a new pass); atoms, couplings and element atoms stay."""
        self._labels.clear()

    def set_labels(self, tensor: torch.Tensor, labels: torch.Tensor) -> None:
        if isinstance(tensor, torch.Tensor) and self._plain_name(tensor) is None:
            # an expanded view: a conv output's labels cost C integers, not N·C·H·W
            self._labels[tensor] = compress(labels).expand(tensor.shape)

    def units_vary(self, labels: torch.Tensor, dim: int) -> bool:
        """True when removing a unit could change the size of axis `dim`.

        Stricter than "atoms vary": atoms that were merged into one unit along `dim` (q/k/v
        after a reshape with a written 3, the positions of one head) always go together, so
        that axis keeps its size — indexing it at fixed positions or reducing over it is safe.
        """
        if not varies_along(labels, dim):
            return False
        return varies_along(self.atoms.roots(squeeze_broadcast(labels, keep=dim)[0]), dim)

    def has_channels(self, tensor) -> bool:
        return isinstance(tensor, torch.Tensor) and (self.is_source(tensor) or bool((self.labels(tensor) != 0).any()))

    def new(self, n: int, producer: tuple[str, int] | None = None) -> torch.Tensor:
        """n fresh atoms; `producer` = (tensor name, dim) whose positions create them (names groups)."""
        if producer is not None and producer[0] is not None:
            self.producers.add(producer)
        return self.atoms.new(n)

    def axis_atoms(self, labels: torch.Tensor, dim: int, op: str) -> torch.Tensor:
        """One atom per position of axis `dim`, for an op that reads that axis as features.

        The labels must not vary along any other axis (then each feature is one channel);
        if they do, the atoms are blocked rather than guessed.
        """
        if labels.dim() == 0:
            return labels.reshape(1)
        labels = squeeze_broadcast(labels, keep=dim)[0]
        rows = labels.movedim(dim, -1).reshape(-1, labels.shape[dim])
        if rows.shape[0] == 1 or bool((rows == rows[0]).all()):
            return rows[0].clone()  # the usual case: every row the same
        rows = torch.unique(rows, dim=0) if rows.shape[0] > 1 else rows
        first = rows.max(0).values
        roots = self.atoms.roots(rows)  # atoms already merged into one unit per feature are consistent
        same = (roots == 0) | (roots == self.atoms.roots(first))
        if rows.shape[0] > 1 and not bool(same.all()):
            self.block(labels, f"{op} in {self.where()} reads features whose channels differ along another axis")
        return first

    def couple(self, name: str | None, dim: int, atoms: torch.Tensor) -> None:
        """Position i of dimension `dim` of tensor `name` belongs to atoms[i]."""
        if name is None:
            return
        atoms = atoms.reshape(-1).to(torch.long)
        self.seen.add(name)
        key = (name, dim % max(1, len(self.shapes[name])))
        if self.shapes[name][key[1]] != atoms.numel():
            self.freeze(name, f"{name} is used with a shape prunekit did not expect in {self.where()}")
            return
        if key in self.coupled:
            old = self.coupled[key]
            self.atoms.union_pairs(old, atoms)
            self.coupled[key] = torch.where(old != 0, old, atoms)
        else:
            self.coupled[key] = atoms.clone()

    def couple_size(self, module: str, atoms: torch.Tensor) -> None:
        """A module's channel count (conv input channels, norm features) follows `atoms`."""
        name = module + SIZE_SUFFIX
        if name not in self.shapes:
            self.shapes[name], self.kinds[name] = (atoms.numel(),), "size"
        self.couple(name, 0, atoms)

    def block(self, labels, reason: str) -> None:
        self.atoms.block(labels, reason)

    def freeze(self, name: str, reason: str) -> None:
        reasons = self.frozen.setdefault(name, [])
        if reason not in reasons:
            reasons.append(reason)

    def handler_failed(self, func, args, kwargs, out, error: Exception) -> None:
        """A handler raised on this call: block what it touched, naming the op and the error."""
        from .handlers import op_name, unknown  # local: handlers imports this module

        unknown(self, op_name(func), func, args, kwargs, out,
                why=f"could not be followed by prunekit ({type(error).__name__}: {error}); please report it")

    def check_counts(self) -> None:
        """A size read from one axis that shapes a tensor whose channels never joined that axis's
        (sizes.py): the two counts cannot stay equal once either is pruned, so both are blocked."""
        for (source, axis), labels, reason in self.sized_by:
            if not self.units_vary(source, axis):
                continue  # the axis it was read from holds one set of units throughout (a token axis)
            atoms = torch.unique(source)
            atoms = atoms[atoms != 0]
            if not bool(torch.isin(self.atoms.roots(atoms), self.atoms.roots(torch.unique(labels))).all()):
                self.block(atoms, reason)
                self.block(labels, reason)

    def opaque(self, reason: str) -> torch.Tensor:
        """A fresh blocked atom: the label of an output prunekit cannot see through."""
        atom = self.new(1)
        self.block(atom, reason)
        return atom.reshape(())


class _Mode(TorchFunctionMode):
    def __init__(self, trace: Trace, dispatch):
        super().__init__()
        self.trace, self.dispatch = trace, dispatch

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self.trace.module_handlers_active:
            if isinstance(out, (int, torch.Size)) and args and isinstance(args[0], torch.Tensor):
                return self._sizes(func, args, kwargs, out)
            try:
                self.dispatch(self.trace, func, args, kwargs, out)
            except Exception as e:  # noqa: BLE001 - a handler that cannot follow this call blocks, never aborts
                self.trace.handler_failed(func, args, kwargs, out, e)
        return out

    def _sizes(self, func, args, kwargs, out):
        """x.size() / x.shape / x.size(d): mark the sizes of channel axes (sizes.py)."""
        name = getattr(func, "__name__", "")
        if name == "__get__":
            name = getattr(getattr(func, "__self__", None), "__name__", name)
        if name not in ("size", "shape"):
            return out
        if self.trace.is_source(args[0]):  # a parameter's shape: never channel labels, no atoms made
            return out
        labels = self.trace.labels(args[0])
        channel_dims = varying_dims(labels)
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        return tag_sizes(out, channel_dims, labels, None if dim is None else dim % max(1, labels.dim()))


def _module_hooks(model: nn.Module, trace: Trace, handlers, stack: ExitStack) -> None:
    """Keep a stack of module names (for messages) and run whole-layer handlers."""
    for name, module in model.named_modules():
        handler = handlers.tracer_for(module)

        def pre(mod, args, kwargs, name=name, handler=handler):
            trace.module_stack.append(name)
            if handler is not None:
                trace.module_handlers_active += 1

        def post(mod, args, kwargs, output, name=name, handler=handler):
            trace.module_stack.pop()
            if handler is not None:
                if trace.module_handlers_active == 1:  # the outermost handled module: describe it whole
                    try:  # its own tensor calls (module.weight.shape …) are not part of the model's trace
                        handler(trace, mod, name, args, kwargs, output)
                    finally:
                        trace.module_handlers_active -= 1
                else:
                    trace.module_handlers_active -= 1

        stack.callback(module.register_forward_pre_hook(pre, with_kwargs=True).remove)
        stack.callback(module.register_forward_hook(post, with_kwargs=True, always_call=True).remove)
        for attr in handlers.counts_of(module):  # a count written at construction follows the channels
            value = getattr(module, attr)
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(module, attr, ChannelCount(value))
                stack.callback(setattr, module, attr, value)


def _one_pass(model, trace: Trace, example: ExampleInputs, dispatch, handlers, train: bool):
    trace.reset_labels()
    for t in example.tensors():
        trace.set_labels(t, trace.opaque("the model's input (its channels cannot be removed)"))
    with ExitStack() as stack:
        stack.enter_context(training_mode(model) if train else evaluation_mode(model))
        if train:  # BatchNorm updates its statistics and dropout draws numbers: undo both
            saved = {name: b.detach().clone() for name, b in model.named_buffers()}
            stack.callback(_restore_buffers, model, saved)
            stack.enter_context(torch.random.fork_rng(devices=[]))
        stack.enter_context(torch.no_grad())
        stack.enter_context(parametrize.cached())
        for module_name, module in model.named_modules():
            if parametrize.is_parametrized(module):
                for tensor_name, chain in module.parametrizations.items():
                    if not all(isinstance(p, WeightMask) for p in chain):
                        continue  # another parametrization (weight_norm): traced as a computed weight
                    full = f"{module_name}.{tensor_name}" if module_name else tensor_name
                    trace.alias(getattr(module, tensor_name), full)  # cached: the very object forward sees
        _module_hooks(model, trace, handlers, stack)
        with _Mode(trace, dispatch):
            output = example(model)
    for t in tensors_in(output):
        trace.block(trace.labels(t), "the model's output (its size is fixed)")
        name = trace.name_of(t)
        if name is not None:
            trace.freeze(name, "returned as the model's output")
    return output


def _restore_buffers(model: nn.Module, saved: dict) -> None:
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name in saved:
                b.copy_(saved[name])


@contextmanager
def _collector_paused():
    """The pass makes many short-lived objects and frees them itself (nothing cyclic): Python's
    cycle collector would only rescan the model's objects again and again. Restored after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def run_trace(model: nn.Module, example_inputs, dispatch, handlers) -> Trace:
    """Trace `model` on `example_inputs` (anything ExampleInputs.of accepts).

    The pass runs in eval mode. If some parameters were not used (auxiliary heads that only
    run in training), a second pass in train mode adds their couplings — its atoms meet the
    first pass's at every shared parameter — with buffers and the random state restored.
    If that pass cannot run on the example (BatchNorm on a batch of one, a map smaller than a
    kernel), the graph of the eval pass is kept, those parameters stay unused (never pruned)
    and `trace.train_pass_error` says why.
    """
    example = ExampleInputs.of(example_inputs)
    trace = Trace(model)
    with _collector_paused():
        trace.output = _one_pass(model, trace, example, dispatch, handlers, train=False)  # eval, no_grad
        params = {canonical_name(n) for n, _ in model.named_parameters()}
        if params - trace.seen:
            restore = trace.checkpoint()
            try:
                _one_pass(model, trace, example, dispatch, handlers, train=True)
            except Exception as e:  # noqa: BLE001 - any failure of the user's train-mode forward
                restore()
                trace.train_pass_error = f"{type(e).__name__}: {e}"
    trace.unused = sorted(params - trace.seen)
    used = {trace.atoms.find(int(a)) for atoms in trace.coupled.values()
            for a in torch.unique(atoms).tolist()} if trace.heads else set()
    trace.check_counts()
    for poison, heads in trace.heads:
        p = int(poison)
        if trace.atoms.component_size(p) > 1 or trace.atoms.reasons(p) or trace.atoms.find(p) in used:
            trace.block(heads, "attention weights averaged over heads are used downstream")
    return trace


__all__ = ["Trace", "run_trace", "SIZE_SUFFIX"]
