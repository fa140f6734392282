"""From merged atoms to groups: which slices of which tensors are removed together.

After the trace, every component of the atom union-find is one *unit* (a channel, a head, a
norm group). A unit owns positions along one dimension of several tensors; e.g. unit 5 of
"layer1.0.conv1:out" owns row 5 of conv1.weight, bn1.weight[5], bn1.bias[5], the running
statistics, and column 5 of conv2.weight. Units that own the same tensors in the same way
(same tensors, same dims, same number of positions each) form one `Group`; its `slices`
hold, per tensor and dim, an index matrix [group.size, k]: row u lists the k positions of
unit u (k > 1 after flatten → Linear, for heads, for depthwise multipliers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .layers import owner_module
from .tracer import SIZE_SUFFIX, Trace


@dataclass(frozen=True)
class Slice:
    name: str             # tensor name ("layer1.0.conv1.weight"), or "<module>.<channels>" for a count
    dim: int
    index: torch.Tensor   # LongTensor [group size, k]: positions of each unit along `dim`
    kind: str = "param"   # "param" (masked and sliced), "buffer" (sliced only), "size" (a module attribute)

    @property
    def positions_per_unit(self) -> int:
        return self.index.shape[1]


@dataclass
class Group:
    name: str
    size: int
    slices: list[Slice]
    kind: str = "channel"          # "channel" or "head"
    prunable: bool = True
    reason: str = ""
    params: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        state = "prunable" if self.prunable else f"not prunable: {self.reason}"
        return f"Group({self.name!r}, {self.kind} × {self.size}, {len(self.slices)} slices, {state})"


class DependencyGraph:
    """The groups of a model, in the order the forward pass first met them."""

    def __init__(self, groups: list[Group], unsupported: list[str], shapes: dict[str, tuple],
                 unused: list[str] | None = None):
        self.groups = groups
        self.unused = list(unused or [])  # parameters the forward passes never used: never pruned
        self.unsupported = unsupported
        self.shapes = shapes
        self.handlers = None          # the layer handlers the graph was built with (compaction reuses them)
        self.train_pass_error = ""    # why the train-mode pass could not run, if it could not
        self._by_name = {g.name: g for g in groups}

    def __getitem__(self, name: str) -> Group:
        from ..errors import GraphError, did_you_mean

        if name not in self._by_name:
            raise GraphError(f"No group named '{name}'.{did_you_mean(name, self._by_name)} "
                             "List them with [g.name for g in graph.groups].")
        return self._by_name[name]

    def __contains__(self, name) -> bool:
        return name in self._by_name

    def __iter__(self):
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.prunable and g.size > 1]

    def rows(self) -> list[dict]:
        """One row per group, for prunekit.format_table."""
        return [{"group": g.name, "kind": g.kind, "size": g.size, "tensors": len(g.slices),
                 "prunable": "yes" if g.prunable else "no", "reason": g.reason} for g in self.groups]

    def __repr__(self) -> str:
        return f"DependencyGraph({len(self.groups)} groups, {len(self.prunable())} prunable)"


def _resolve_elements(trace: Trace) -> None:
    """Parameters used elementwise: find the one dimension along which they follow channels."""
    for name, atoms in trace.element_atoms.items():
        roots = trace.atoms.roots(atoms)
        if not bool(trace.atoms.merged(atoms).any()):
            continue  # never met a channel: nothing couples it
        for d in range(atoms.dim()):
            index = [0] * atoms.dim()
            index[d] = slice(None)
            line = roots[tuple(index)]
            shape = [1] * atoms.dim()
            shape[d] = -1
            if bool((roots == line.reshape(shape)).all()) and (atoms.shape[d] > 1 or atoms.numel() == 1):
                if d in trace.indexed.get(name, ()):
                    trace.freeze(name, f"{name} is read at fixed positions along the axis that carries channels")
                trace.couple(name, d, line)
                break
        else:
            trace.freeze(name, f"{name} meets channels along more than one of its dimensions")


def _positions(trace: Trace):
    """Every coupled position as sorted parallel tensors (root, key id, position).

    Sorted by root, then key, then position, so each unit's positions in one tensor are a
    contiguous run; returns those runs as (root, key id, count, start) tensors.
    """
    keys = list(trace.coupled)
    vectors = [trace.coupled[key] for key in keys]
    lengths = torch.tensor([len(v) for v in vectors])
    key_id = torch.repeat_interleave(torch.arange(len(keys)), lengths)
    pos = torch.arange(int(lengths.sum())) - torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
    root = trace.atoms.roots(torch.cat(vectors))  # one look-up for every position of every tensor
    live = root != 0
    root, key_id, pos = root[live], key_id[live], pos[live]
    order = torch.argsort(_lexicographic_key(root, key_id, pos))  # by root, then key, then position
    root, key_id, pos = root[order], key_id[order], pos[order]
    pair = root * len(keys) + key_id
    _, counts = torch.unique_consecutive(pair, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    return keys, pos, root[starts], key_id[starts], counts, starts


def _lexicographic_key(*columns: torch.Tensor) -> torch.Tensor:
    """One int64 per row that sorts like the rows (non-negative columns, most significant first):
    the columns packed in mixed radix — their values, or their ranks where the values are too wide."""
    radices = [int(c.max()) + 1 if len(c) else 1 for c in columns]
    if math.prod(radices) >= 2**62:  # too wide to pack the values themselves: pack their ranks
        ranked = [torch.unique(c, return_inverse=True) for c in columns]
        columns, radices = [rank for _, rank in ranked], [len(values) for values, _ in ranked]
    key = torch.zeros_like(columns[0])
    for column, radix in zip(columns, radices):
        key = key * radix + column
    return key


def _families(run_code, unit_of_run, within, runs_per_unit, first_run, reason, head):
    """Units whose runs carry the same codes in the same order, with the same reason and head tag,
    form one family: (representative unit of each family — its last unit — in increasing order;
    family of every unit). Each unit's runs are hashed into one int64 (wrapping sums with random
    weights per run position) and families checked exactly run by run, so no matrix of units ×
    the longest unit's runs is built (on ViT-H/14 that padding cost half the model's size);
    a hash collision falls back to torch.unique over that matrix."""
    weights = torch.randint(1, 2**61, (int(runs_per_unit.max()) + 3,), generator=torch.Generator().manual_seed(0))
    keys = torch.zeros(len(runs_per_unit), dtype=torch.long).index_add_(0, unit_of_run, run_code * weights[within])
    keys += runs_per_unit * weights[-3] + reason * weights[-2] + head * weights[-1]
    _, first, inverse = _first_of_each(keys)
    rep = first[inverse]  # the representative of every unit's key
    exact = (torch.equal(runs_per_unit[rep], runs_per_unit) and torch.equal(reason[rep], reason)
             and torch.equal(head[rep], head)
             and torch.equal(run_code[first_run[rep[unit_of_run]] + within], run_code))
    if not exact:
        codes = torch.full((len(runs_per_unit), int(runs_per_unit.max()) + 2), -1, dtype=torch.long)
        codes[unit_of_run, within] = run_code
        codes[:, -2], codes[:, -1] = reason, head
        _, inverse = torch.unique(codes, dim=0, return_inverse=True)
        first = torch.empty(int(inverse.max()) + 1, dtype=torch.long)
        first[inverse] = torch.arange(len(inverse))
    order = torch.argsort(first)  # families ordered by their representatives: deterministic
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    return first[order], rank[inverse]


def _first_of_each(keys: torch.Tensor):
    """(unique keys, index of one row per key — the last — , key index of every row)."""
    values, inverse = torch.unique(keys, return_inverse=True)
    first = torch.empty(len(values), dtype=torch.long)
    first[inverse] = torch.arange(len(keys))
    return values, first, inverse


def build_groups(trace: Trace) -> DependencyGraph:
    _resolve_elements(trace)
    if not trace.coupled:
        return DependencyGraph([], list(trace.unsupported), dict(trace.shapes), trace.unused)
    keys, pos, run_root, run_key, run_count, run_start = _positions(trace)
    bad_names = {name: list(trace.frozen.get(name, [])) + (
        [f"{name} is not floating point"] if trace.kinds.get(name) == "param" and name not in trace.float_names
        else []) for name, _ in keys}

    # A unit's layout is its sequence of (tensor, positions) runs; units with identical
    # layouts, reasons and head tag form one group. Found with one unique over a code matrix.
    unit_roots, unit_of_run, runs_per_unit = torch.unique_consecutive(run_root, return_inverse=True,
                                                                      return_counts=True)
    first_run = torch.cumsum(runs_per_unit, 0) - runs_per_unit
    within = torch.arange(len(run_root)) - first_run[unit_of_run]
    run_code = run_key * (int(run_count.max()) + 1) + run_count
    reason, head = torch.zeros(len(unit_roots), dtype=torch.long), torch.zeros(len(unit_roots), dtype=torch.long)
    reason_ids: dict[tuple, int] = {(): 0}
    unit_of_root = {root: u for u, root in enumerate(unit_roots.tolist())}
    for root, reasons in trace.atoms.blocked().items():  # only the few annotated units: no loop over all
        if root in unit_of_root and reasons:
            reason[unit_of_root[root]] = reason_ids.setdefault(tuple(reasons), len(reason_ids))
    for root, tags in trace.atoms.tagged().items():
        if root in unit_of_root and "head" in tags:
            head[unit_of_root[root]] = 1
    reason_of = {i: r for r, i in reason_ids.items()}
    representatives, family_of_unit = _families(run_code, unit_of_run, within, runs_per_unit, first_run, reason, head)
    order = torch.argsort(family_of_unit, stable=True)
    sizes = torch.bincount(family_of_unit, minlength=len(representatives)).tolist()
    families = {}
    for unit, members in zip(representatives.tolist(), torch.split(order, sizes)):
        own = slice(int(first_run[unit]), int(first_run[unit] + runs_per_unit[unit]))
        layout = tuple(zip(run_key[own].tolist(), run_count[own].tolist()))
        reasons = list(reason_of[int(reason[unit])])
        for k, _ in layout:
            reasons += [r for r in bad_names[keys[k][0]] if r not in reasons]
        runs = first_run[members].unsqueeze(1) + torch.arange(len(layout))   # [units, tensors]
        families[(layout, tuple(reasons), bool(head[unit]))] = runs

    groups, taken = [], {}
    for (layout, reasons, is_head), runs in families.items():
        first = pos[run_start[runs[:, 0]]]                                  # first position in the first tensor
        runs = runs[torch.argsort(first, stable=True)]
        slices = []
        for column, (k, count) in enumerate(layout):
            index = pos[run_start[runs[:, column]].unsqueeze(1) + torch.arange(count)]
            name, dim = keys[k]
            kind = "buffer" if (name, dim) in trace.unmasked else trace.kinds.get(name, "param")
            slices.append(Slice(name, dim, index, kind))
        named_layout = tuple((keys[k], c) for k, c in layout)
        name = _group_name(named_layout, is_head, trace)
        taken[name] = taken.get(name, 0) + 1
        if taken[name] > 1:
            name = f"{name}#{taken[name]}"
        groups.append(Group(name, len(runs), slices, "head" if is_head else "channel", not reasons,
                            _summarise(list(reasons)), [s.name for s in slices if s.kind == "param"]))
    key_order = {key: i for i, key in enumerate(keys)}
    groups.sort(key=lambda g: min(key_order[(s.name, s.dim)] for s in g.slices))
    return DependencyGraph(groups, list(trace.unsupported), dict(trace.shapes), trace.unused)


def _summarise(reasons, limit: int = 3) -> str:
    """The first few reasons, then how many more (LayerNorm blocks repeat once per layer)."""
    shown = "; ".join(reasons[:limit])
    return shown + (f"; and {len(reasons) - limit} more" if len(reasons) > limit else "")


def _group_name(layout, is_head: bool, trace: Trace) -> str:
    """'<module>:out' after the layer whose outputs the units are, '<module>:in' otherwise."""
    keys = [key for key, _ in layout]
    produced = [key for key in keys if key in trace.producers]
    name, dim = (produced or [k for k in keys if trace.kinds.get(k[0]) == "param"] or keys)[0]
    module = name[: -len(SIZE_SUFFIX)] if name.endswith(SIZE_SUFFIX) else (owner_module(name) or name)
    if is_head:
        return f"{module}:heads"
    return f"{module}:out" if produced else f"{module}:in"
