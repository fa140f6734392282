"""The dependency graph: which slices of which tensors must be removed together.

    graph = build_graph(model, example_inputs)
    for group in graph.prunable():
        print(group.name, group.size, [(s.name, s.dim) for s in group.slices])

Built from one forward pass (tracer.py), with no per-model code; operations are described
in handlers.py and layers.py, groups formed in groups.py. An operation prunekit does not
understand makes the channels it touches unprunable, and `Group.reason` names it.
"""

from __future__ import annotations

from torch import nn

from ..errors import GraphError
from .groups import DependencyGraph, Group, Slice, build_groups
from .handlers import dispatch, handler_for, op_name, register_handler
from .tracer import SIZE_SUFFIX, run_trace


def build_graph(model: nn.Module, example_inputs) -> DependencyGraph:
    """Trace `model` on `example_inputs` (a tensor, a tuple of positional inputs, or a dict of
    keyword inputs) and return its groups. The model is left exactly as it was."""
    return graph_and_output(model, example_inputs)[0]


def graph_and_output(model: nn.Module, example_inputs):
    """(graph, the model's eval-mode output on example_inputs) from the same single pass."""
    if not isinstance(model, nn.Module):
        raise GraphError(f"build_graph needs an nn.Module, not {type(model).__name__}.")
    try:
        trace = run_trace(model, example_inputs, dispatch, handler_for)
    except GraphError:
        raise
    except Exception as e:  # the user's forward pass failed: say where, keep the cause
        raise GraphError(f"The forward pass failed while building the dependency graph "
                         f"({type(e).__name__}: {e}). Check that example_inputs is what model(...) "
                         "expects (a tensor, a tuple of positional inputs, or a dict of keyword inputs).") from e
    return build_groups(trace), trace.output


__all__ = ["DependencyGraph", "Group", "Slice", "SIZE_SUFFIX", "build_graph", "graph_and_output", "op_name",
           "register_handler"]
