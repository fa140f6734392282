"""Layer handlers: one object per layer type serves tracing, compaction and accounting.

    class Mystery(LayerHandler):
        def trace(self, trace, module, name, args, kwargs, output):   # the graph
            trace.set_labels(output, trace.labels(args[0]))
        def attributes(self, module, size):                          # compaction
            return {"channels": size("weight", 0)}
        def macs(self, module, inputs, output):                      # accounting
            return dense, sparse

    build_graph(model, x, handlers={MysteryLayer: Mystery()})   # this call only
    with layer_handlers({MysteryLayer: Mystery()}):              # every call inside the block
        ...
    register_handler(MysteryLayer, Mystery())                    # every graph from now on (global)

A handler found for a module is looked up in that order: the call's own `handlers`, the
enclosing `layer_handlers` blocks (innermost first), the global registry, then prunekit's
built-in handlers (modules.py). Within one mapping the most specific class of the module wins.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from contextlib import contextmanager

from ..errors import GraphError


class LayerHandler:
    """How prunekit treats one layer type. Override only what the layer needs.

    * trace(trace, module, name, args, kwargs, output): describe the layer as a whole (its inner
      operations are then not traced): set output labels with `trace.set_labels`, tie parameter
      slices with `trace.couple(param_name, dim, atoms)`. Not overridden: the inner operations
      are traced one by one.
    * attributes(module, size) → {attribute: value} the module has after compaction; `size(tensor,
      dim)` is the new size of the module's own tensor (e.g. "weight") along `dim`, and
      `size("<channels>", 0)` its input channel count.
    * macs(module, inputs, output) → (dense, sparse) multiply-accumulates of one call, sparse
      counting only non-zero weights; None leaves the layer to torch's FLOP counter.
    * counts: names of int attributes that hold a channel count fixed at construction (GPT-2's
      `split_size`, used as `qkv.split(self.split_size, dim=2)`). During the trace they act like a
      size read from the tensor (prunekit.graph.sizes), so the code that uses them follows the
      channels instead of blocking them; `attributes` must return their new values.
    """

    counts: tuple[str, ...] = ()

    # A subclass that describes the layer as a whole defines the method
    # trace(trace, module, name, args, kwargs, output); None: the inner operations are traced.
    trace = None

    def traces_whole(self, module) -> bool:
        """Whether this module is described whole by `trace` (else its operations are traced)."""
        return self.trace is not None

    def attributes(self, module, size) -> dict:
        return {}

    def macs(self, module, inputs, output):
        return None


class FunctionHandler(LayerHandler):
    """A plain function `fn(trace, module, name, args, kwargs, output)` as a tracing handler."""

    def __init__(self, fn):
        self.fn = fn

    def trace(self, trace, module, name, args, kwargs, output):
        return self.fn(trace, module, name, args, kwargs, output)


def as_handler(handler) -> LayerHandler:
    if isinstance(handler, LayerHandler):
        return handler
    if callable(handler):
        return FunctionHandler(handler)
    raise GraphError(f"A layer handler must be a LayerHandler or a function, not {type(handler).__name__}.")


def _checked(mapping: Mapping | None) -> dict[type, LayerHandler]:
    out = {}
    for module_type, handler in (mapping or {}).items():
        if not isinstance(module_type, type):
            raise GraphError(f"Layer handlers are keyed by module class, not {module_type!r}.")
        out[module_type] = as_handler(handler)
    return out


_GLOBAL: dict[type, LayerHandler] = {}   # filled only by register_handler: global on purpose
_SCOPED: contextvars.ContextVar[tuple] = contextvars.ContextVar("prunekit_layer_handlers", default=())


def register_handler(module_type: type, handler) -> None:
    """Register `handler` for `module_type` globally: every later graph, compaction and FLOP
    count uses it. For one call pass `handlers=` instead; for a block use `layer_handlers`."""
    _GLOBAL.update(_checked({module_type: handler}))


def unregister_handler(module_type: type) -> None:
    _GLOBAL.pop(module_type, None)


@contextmanager
def layer_handlers(mapping: Mapping):
    """Use these handlers for every graph, compaction and FLOP count inside the block."""
    token = _SCOPED.set((_checked(mapping),) + _SCOPED.get())
    try:
        yield
    finally:
        _SCOPED.reset(token)


class Handlers:
    """The handler chain in force for one call (captured when the call starts)."""

    def __init__(self, extra: Mapping | None = None):
        from .modules import builtin_handler

        self._chain = (_checked(extra),) + _SCOPED.get() + (dict(_GLOBAL),)
        self._builtin = builtin_handler

    @classmethod
    def of(cls, handlers) -> Handlers:
        return handlers if isinstance(handlers, Handlers) else cls(handlers)

    def lookup(self, module) -> LayerHandler | None:
        for mapping in self._chain:
            if mapping:
                for klass in type(module).__mro__:
                    if klass in mapping:
                        return mapping[klass]
        return self._builtin(module)

    def counts_of(self, module) -> tuple[str, ...]:
        handler = self.lookup(module)
        return tuple(handler.counts) if handler is not None else ()

    def tracer_for(self, module):
        """The whole-layer tracing function for `module`, or None (trace its operations)."""
        handler = self.lookup(module)
        return handler.trace if handler is not None and handler.traces_whole(module) else None
