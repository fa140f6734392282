"""Channel atoms and their union-find: the bookkeeping under the dependency graph.

Every prunable position of an activation's channel axis (a conv filter's output, a Linear
feature, an attention head) is an *atom*, a positive integer. The tracer labels each element
of each activation with the atom it belongs to (0 = a constant that depends on no channel).
Two atoms that must be removed together — the two sides of a residual add, a conv's output
channel and the next conv's input channel — are merged here. After the forward pass, each
connected component is one prunable *unit*.

A component can be *blocked*: an operation the graph does not understand touched it, it
reaches the model's output, or removing it would change a statistic (LayerNorm). A blocked
component keeps every reason it was given, so the user learns which operation is at fault.
"""

from __future__ import annotations

import torch


class AtomSet:
    """Union-find over atom ids 1..n (0 is the constant label and never merges)."""

    def __init__(self):
        self._parent = [0]
        self._size = [1]
        self._reasons: dict[int, list[str]] = {}
        self._tags: dict[int, set[str]] = {}
        self._table: torch.Tensor | None = None  # root of every atom, rebuilt after a merge

    def __len__(self) -> int:
        return len(self._parent) - 1

    def new(self, n: int) -> torch.Tensor:
        """n fresh atoms, as a LongTensor."""
        start = len(self._parent)
        self._parent.extend(range(start, start + n))
        self._size.extend([1] * n)
        return torch.arange(start, start + n, dtype=torch.long)

    def find(self, a: int) -> int:
        parent = self._parent
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:  # path compression keeps later look-ups O(1)
            parent[a], a = root, parent[a]
        return root

    def union(self, a: int, b: int) -> int:
        if a == 0 or b == 0:
            return self.find(a or b)
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self._size[ra] < self._size[rb]:
            ra, rb = rb, ra
        self._parent[rb] = ra
        self._table = None
        self._size[ra] += self._size[rb]
        if rb in self._reasons:
            merged = self._reasons.setdefault(ra, [])
            merged.extend(r for r in self._reasons.pop(rb) if r not in merged)
        if rb in self._tags:
            self._tags.setdefault(ra, set()).update(self._tags.pop(rb))
        return ra

    def union_pairs(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Merge a[i] with b[i] for every i (tensors of equal shape); duplicates are cheap."""
        a, b = squeeze_broadcast(*torch.broadcast_tensors(a, b))
        a, b = a.reshape(-1), b.reshape(-1)
        keep = (a != 0) & (b != 0) & (a != b)
        if not bool(keep.any()):
            return
        keys = torch.unique(a[keep] * (1 << 31) + b[keep])  # one int per pair: a fast 1-D unique
        for key in keys.tolist():
            self.union(key >> 31, key & ((1 << 31) - 1))

    def union_all(self, atoms) -> int:
        """Merge every atom in `atoms` into one component; returns its root (0 if none)."""
        values = [int(v) for v in torch.unique(torch.as_tensor(atoms)).tolist() if v != 0]
        root = 0
        for v in values:
            root = self.union(root, v) if root else self.find(v)
        return root

    def _unique_roots(self, atoms) -> list[int]:
        values = torch.unique(torch.as_tensor(atoms))
        if len(values) > 64:  # many atoms: one vectorised look-up instead of a find() each
            values = torch.unique(self.roots(values))
            return [v for v in values.tolist() if v != 0]
        return list(dict.fromkeys(self.find(v) for v in values.tolist() if v != 0))

    def block(self, atoms, reason: str) -> None:
        for root in self._unique_roots(atoms):
            reasons = self._reasons.setdefault(root, [])
            if reason not in reasons:
                reasons.append(reason)

    def tag(self, atoms, tag: str) -> None:
        for root in self._unique_roots(atoms):
            self._tags.setdefault(root, set()).add(tag)

    def roots(self, atoms: torch.Tensor) -> torch.Tensor:
        """The component root of every entry (0 stays 0), same shape."""
        if self._table is None or len(self._table) != len(self._parent):
            # pointer jumping: parent[parent[...]] until fixed, vectorised over all atoms
            table = torch.tensor(self._parent, dtype=torch.long)
            while True:
                nxt = table[table]
                if torch.equal(nxt, table):
                    break
                table = nxt
            self._table = table
        return self._table[atoms]

    def merged(self, atoms: torch.Tensor) -> torch.Tensor:
        """Bool per entry: its component holds other atoms too, or is blocked."""
        roots = self.roots(atoms)
        sizes = torch.tensor(self._size, dtype=torch.long)[roots]
        blocked = torch.isin(roots, torch.tensor(list(self._reasons), dtype=torch.long))
        return (sizes > 1) | blocked

    def reasons(self, root: int) -> list[str]:
        return list(self._reasons.get(self.find(root), []))

    def tags(self, root: int) -> set[str]:
        return set(self._tags.get(self.find(root), set()))

    def component_size(self, a: int) -> int:
        return self._size[self.find(a)]


def varies_along(labels: torch.Tensor, dim: int) -> bool:
    """True when the labels are not constant along `dim`, i.e. `dim` carries channels."""
    if labels.dim() == 0 or labels.shape[dim] <= 1 or labels.stride(dim) == 0:
        return False
    labels = squeeze_broadcast(labels, keep=dim)[0]
    return bool((labels != labels.narrow(dim, 0, 1)).any())


def varying_dims(labels: torch.Tensor) -> list[int]:
    return [d for d in range(labels.dim()) if varies_along(labels, d)]


def squeeze_broadcast(*tensors: torch.Tensor, keep: int | None = None) -> list[torch.Tensor]:
    """Cut every dim along which all `tensors` (same shape) are broadcast (stride 0) to size 1.

    Labels are mostly expanded views (one atom per channel spread over batch and space);
    working on the cut tensors makes the bookkeeping cost O(channels), not O(activations).
    """
    if not tensors or tensors[0].dim() == 0:
        return list(tensors)
    ndim = tensors[0].dim()
    keep = None if keep is None else keep % ndim
    for d in range(ndim):
        if d != keep and all(t.shape[d] > 1 and t.stride(d) == 0 for t in tensors):
            tensors = tuple(t.narrow(d, 0, 1) for t in tensors)
    return list(tensors)
