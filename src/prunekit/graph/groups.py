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

from dataclasses import dataclass, field

import torch

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

    def __init__(self, groups: list[Group], unsupported: list[str], shapes: dict[str, tuple]):
        self.groups = groups
        self.unsupported = unsupported
        self.shapes = shapes
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
        merged = [trace.atoms.component_size(int(r)) > 1 or trace.atoms.reasons(int(r))
                  for r in torch.unique(roots).tolist()]
        if not any(merged):
            continue  # never met a channel: nothing couples it
        for d in range(atoms.dim()):
            index = [0] * atoms.dim()
            index[d] = slice(None)
            line = roots[tuple(index)]
            shape = [1] * atoms.dim()
            shape[d] = -1
            if bool((roots == line.reshape(shape)).all()) and (atoms.shape[d] > 1 or atoms.numel() == 1):
                trace.couple(name, d, line)
                break
        else:
            trace.freeze(name, f"{name} meets channels along more than one of its dimensions")


def build_groups(trace: Trace) -> DependencyGraph:
    _resolve_elements(trace)
    key_order = {key: i for i, key in enumerate(trace.coupled)}
    units: dict[int, dict[tuple[str, int], list[int]]] = {}
    for key, atoms in trace.coupled.items():
        for pos, root in enumerate(trace.atoms.roots(atoms).tolist()):
            if root:
                units.setdefault(root, {}).setdefault(key, []).append(pos)

    families: dict[tuple, list[int]] = {}
    for root, owned in units.items():
        reasons = list(trace.atoms.reasons(root))
        for name, _ in owned:
            reasons += [r for r in trace.frozen.get(name, []) if r not in reasons]
            if trace.kinds.get(name) == "param" and name not in trace.float_names:
                reasons.append(f"{name} is not floating point")
        signature = (tuple(sorted(((k, len(p)) for k, p in owned.items()), key=lambda kp: key_order[kp[0]])),
                     tuple(dict.fromkeys(reasons)), "head" in trace.atoms.tags(root))
        families.setdefault(signature, []).append(root)

    groups, taken = [], {}
    for (layout, reasons, is_head), roots in families.items():
        first_key = layout[0][0]
        roots.sort(key=lambda r: min(units[r][first_key]))
        slices = []
        for key, _ in layout:
            index = torch.tensor([units[r][key] for r in roots], dtype=torch.long)
            slices.append(Slice(key[0], key[1], index, trace.kinds.get(key[0], "param")))
        name = _group_name(layout, is_head, trace)
        taken[name] = taken.get(name, 0) + 1
        if taken[name] > 1:
            name = f"{name}#{taken[name]}"
        groups.append(Group(name, len(roots), slices, "head" if is_head else "channel", not reasons,
                            _summarise(reasons), [s.name for s in slices if s.kind == "param"]))
    groups.sort(key=lambda g: min(key_order[(s.name, s.dim)] for s in g.slices))
    return DependencyGraph(groups, list(trace.unsupported), dict(trace.shapes))


def _summarise(reasons, limit: int = 3) -> str:
    """The first few reasons, then how many more (LayerNorm blocks repeat once per layer)."""
    shown = "; ".join(reasons[:limit])
    return shown + (f"; and {len(reasons) - limit} more" if len(reasons) > limit else "")


def _group_name(layout, is_head: bool, trace: Trace) -> str:
    """'<module>:out' after the layer whose outputs the units are, '<module>:in' otherwise."""
    keys = [key for key, _ in layout]
    produced = [key for key in keys if key in trace.producers]
    name, dim = (produced or [k for k in keys if trace.kinds.get(k[0]) == "param"] or keys)[0]
    module = name[: -len(SIZE_SUFFIX)] if name.endswith(SIZE_SUFFIX) else (name.rpartition(".")[0] or name)
    if is_head:
        return f"{module}:heads"
    return f"{module}:out" if produced else f"{module}:in"
