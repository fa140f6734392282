"""The dependency graph: which slices of which tensors must be removed together.

    graph = build_graph(model, example_inputs)
    for group in graph.prunable():
        print(group.name, group.size, [(s.name, s.dim) for s in group.slices])

Built from one forward pass (tracer.py), with no per-model code; operations are described
in handlers.py and layers.py, weights computed from parameters in derived.py, groups formed
in groups.py. An operation prunekit does not understand makes the channels it touches
unprunable, and `Group.reason` names it. Custom layers get a LayerHandler (registry.py) that
serves the graph, compaction and FLOP counting alike.
"""

from __future__ import annotations

import warnings

from torch import nn

from ..errors import GraphError
from ..nested import ExampleInputs
from .groups import DependencyGraph, Group, Slice, build_groups
from .handlers import dispatch, op_name
from .registry import Handlers, LayerHandler, layer_handlers, register_handler, unregister_handler
from .tracer import SIZE_SUFFIX, run_trace


def build_graph(model: nn.Module, example_inputs, *, handlers=None) -> DependencyGraph:
    """Trace `model` on `example_inputs` (an ExampleInputs, a tensor, a tuple of positional
    inputs, or a dict of keyword inputs) and return its groups. The model is left exactly as
    it was. `handlers`: {module class: LayerHandler} for this call only."""
    return graph_and_output(model, example_inputs, handlers=handlers)[0]


def graph_and_output(model: nn.Module, example_inputs, *, handlers=None):
    """(graph, the model's eval-mode output on example_inputs) from the same single pass."""
    if not isinstance(model, nn.Module):
        raise GraphError(f"build_graph needs an nn.Module, not {type(model).__name__}.")
    example = ExampleInputs.of(example_inputs)
    chain = Handlers.of(handlers)
    try:
        trace = run_trace(model, example, dispatch, chain)
    except GraphError:
        raise
    except Exception as e:  # the user's forward pass failed: say where, keep the cause
        raise GraphError(f"The forward pass failed while building the dependency graph "
                         f"({type(e).__name__}: {e}). Check that example_inputs ({example!r}) is what "
                         "model(...) expects (a tensor, a tuple of positional inputs, a dict of keyword inputs, "
                         "or prunekit.ExampleInputs(*args, **kwargs)).") from e
    if trace.train_pass_error:
        warnings.warn(f"The train-mode pass (for layers used only in training) could not run on example_inputs "
                      f"({trace.train_pass_error}); the graph comes from the eval pass, and these parameters are "
                      f"never pruned: {', '.join(trace.unused[:8])}{' …' if len(trace.unused) > 8 else ''}. "
                      "To prune them too, pass an example batch the model can run in train mode "
                      "(e.g. ≥ 2 samples for BatchNorm, inputs large enough for every kernel).", stacklevel=3)
    graph = build_groups(trace)
    graph.handlers = chain
    graph.train_pass_error = trace.train_pass_error
    return graph, trace.output


__all__ = ["DependencyGraph", "ExampleInputs", "Group", "Handlers", "LayerHandler", "Slice", "SIZE_SUFFIX",
           "build_graph", "graph_and_output", "layer_handlers", "op_name", "register_handler",
           "unregister_handler"]
