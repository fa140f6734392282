"""Channel atoms and their union-find: the bookkeeping under the dependency graph.

Every prunable position of an activation's channel axis (a conv filter's output, a Linear
feature, an attention head) is an *atom*, a positive integer. The tracer labels each element
of each activation with the atom it belongs to (0 = a constant that depends on no channel).
Two atoms that must be removed together — the two sides of a residual add, a conv's output
channel and the next conv's input channel — are merged here. After the forward pass, each
connected component is one prunable *unit*.

The union-find lives in tensors and merges whole index vectors at once (`union_pairs`):
the pairs' roots are joined by vectorised min-label propagation with pointer jumping, so
no Python loop ever runs over channels or weight elements.

A component can be *blocked*: an operation the graph does not understand touched it, it
reaches the model's output, or removing it would change a statistic (LayerNorm). A blocked
component keeps every reason it was given, so the user learns which operation is at fault.
"""

from __future__ import annotations

import torch


class AtomSet:
    """Union-find over atom ids 1..n (0 is the constant label and never merges)."""

    def __init__(self):
        self._parent = torch.zeros(1024, dtype=torch.long)
        self._size = torch.ones(1024, dtype=torch.long)
        self._n = 1  # atom 0 exists and is its own root
        self._reasons: dict[int, list[str]] = {}
        self._tags: dict[int, set[str]] = {}
        self._annotated = torch.zeros(1024, dtype=torch.bool)  # root has reasons or tags: a lookup table
        self._blocked = torch.zeros(1024, dtype=torch.bool)    # root has reasons

    def __len__(self) -> int:
        return self._n - 1

    def new(self, n: int) -> torch.Tensor:
        """n fresh atoms, as a LongTensor."""
        start, end = self._n, self._n + n
        if end > len(self._parent):
            capacity = max(end, 2 * len(self._parent))
            self._parent = torch.cat([self._parent, torch.zeros(capacity - len(self._parent), dtype=torch.long)])
            self._size = torch.cat([self._size, torch.ones(capacity - len(self._size), dtype=torch.long)])
            extra = torch.zeros(capacity - len(self._annotated), dtype=torch.bool)
            self._annotated, self._blocked = torch.cat([self._annotated, extra]), torch.cat([self._blocked, extra])
        atoms = torch.arange(start, end, dtype=torch.long)
        self._parent[start:end] = atoms
        self._size[start:end] = 1
        self._n = end
        return atoms

    def snapshot(self):
        """A function that puts the union-find back as it is now."""
        saved = (self._parent.clone(), self._size.clone(), self._n, {k: list(v) for k, v in self._reasons.items()},
                 {k: set(v) for k, v in self._tags.items()}, self._annotated.clone(), self._blocked.clone())

        def restore():
            (self._parent, self._size, self._n, self._reasons, self._tags, self._annotated,
             self._blocked) = saved
        return restore

    def roots(self, atoms: torch.Tensor) -> torch.Tensor:
        """The component root of every entry (0 stays 0), same shape; compresses the paths it walks."""
        atoms = torch.as_tensor(atoms, dtype=torch.long)
        parent = self._parent
        flat = atoms.reshape(-1)
        root = parent[flat]
        while True:
            nxt = parent[root]
            if torch.equal(nxt, root):
                break
            root = nxt
        parent[flat] = root  # path compression for the next look-up
        return root.reshape(atoms.shape)

    def find(self, a: int) -> int:
        return int(self.roots(torch.tensor([int(a)]))[0])

    def union_pairs(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Merge a[i] with b[i] for every i (broadcastable tensors); zeros never merge."""
        a, b = squeeze_broadcast(*torch.broadcast_tensors(torch.as_tensor(a), torch.as_tensor(b)))
        a, b = a.reshape(-1), b.reshape(-1)
        keep = (a != 0) & (b != 0) & (a != b)
        if not bool(keep.any()):
            return
        pairs = torch.unique(a[keep] * self._n + b[keep])             # one int per pair: a fast 1-D unique
        ra, rb = self.roots(pairs // self._n), self.roots(pairs % self._n)
        keep = ra != rb
        if not bool(keep.any()):
            return
        keys = torch.unique(ra[keep] * self._n + rb[keep])
        nodes, local = torch.unique(torch.stack([keys // self._n, keys % self._n]), return_inverse=True)
        src, dst = local[0], local[1]                                 # the roots involved, as local ids
        label = torch.arange(len(nodes))
        while True:  # min-label propagation with pointer jumping: each component ends at its smallest id
            new = label.clone()
            new.scatter_reduce_(0, src, label[dst], "amin")
            new.scatter_reduce_(0, dst, label[src], "amin")
            new = new[new]
            if torch.equal(new, label):
                break
            label = new
        moved = label != torch.arange(len(nodes))
        old_roots, new_roots = nodes[moved], nodes[label[moved]]
        self._parent[old_roots] = new_roots
        self._size.index_add_(0, new_roots, self._size[old_roots])
        self._move_annotations(old_roots, new_roots)

    def _move_annotations(self, old_roots: torch.Tensor, new_roots: torch.Tensor) -> None:
        """Reasons and tags belong to roots: carry those of merged roots to their new root."""
        hit = self._annotated[old_roots]
        if not bool(hit.any()):
            return
        old_hit, new_hit = old_roots[hit], new_roots[hit]
        self._blocked[new_hit] |= self._blocked[old_hit]
        self._annotated[new_hit] = True
        self._annotated[old_hit] = self._blocked[old_hit] = False
        for old, new in zip(old_hit.tolist(), new_hit.tolist()):
            if old in self._reasons:
                merged = self._reasons.setdefault(new, [])
                merged.extend(r for r in self._reasons.pop(old) if r not in merged)
            if old in self._tags:
                self._tags.setdefault(new, set()).update(self._tags.pop(old))

    def union_rows(self, rows: torch.Tensor) -> None:
        """Merge the atoms of each row of `rows` [n, k] into one component per row."""
        if rows.numel() == 0:
            return
        rows = rows.reshape(rows.shape[0], -1)
        anchor = rows.amax(1, keepdim=True)
        self.union_pairs(anchor.expand_as(rows), rows)

    def _unique_roots(self, atoms) -> list[int]:
        atoms = torch.as_tensor(atoms, dtype=torch.long)
        atoms = squeeze_broadcast(atoms)[0] if atoms.dim() else atoms  # expanded labels: unique over what is stored
        roots = torch.unique(self.roots(torch.unique(atoms)))
        return [r for r in roots.tolist() if r != 0]

    def block(self, atoms, reason: str) -> None:
        roots = self._unique_roots(atoms)
        self._annotated[roots] = self._blocked[roots] = True
        for root in roots:
            reasons = self._reasons.setdefault(root, [])
            if reason not in reasons:
                reasons.append(reason)

    def tag(self, atoms, tag: str) -> None:
        roots = self._unique_roots(atoms)
        self._annotated[roots] = True
        for root in roots:
            self._tags.setdefault(root, set()).add(tag)

    def merged(self, atoms: torch.Tensor) -> torch.Tensor:
        """Bool per entry: its component holds other atoms too, or is blocked."""
        roots = self.roots(atoms)
        return (self._size[roots] > 1) | self._blocked[roots]

    def blocked(self) -> dict[int, list[str]]:
        """{root: reasons} of every blocked component."""
        return self._reasons

    def tagged(self) -> dict[int, set[str]]:
        return self._tags

    def reasons(self, root: int) -> list[str]:
        return list(self._reasons.get(self.find(root), []))

    def component_size(self, a: int) -> int:
        return int(self._size[self.find(a)])


def varies_along(labels: torch.Tensor, dim: int) -> bool:
    """True when the labels are not constant along `dim`, i.e. `dim` carries channels."""
    if labels.dim() == 0 or labels.shape[dim] <= 1 or labels.stride(dim) == 0:
        return False
    labels = squeeze_broadcast(labels, keep=dim)[0]
    return bool((labels != labels.narrow(dim, 0, 1)).any())


def varying_dims(labels: torch.Tensor) -> set[int]:
    """Every dim along which the labels are not constant (varies_along for all dims at once)."""
    if labels.dim() == 0:
        return set()
    cut = squeeze_broadcast(labels)[0]  # a broadcast dim never varies: cut them all once
    return {d for d in range(cut.dim()) if cut.shape[d] > 1 and bool((cut != cut.narrow(d, 0, 1)).any())}


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


def compress(labels: torch.Tensor, threshold: int = 4096, keep: int | None = None) -> torch.Tensor:
    """Labels materialised at full size (by a movement op), cut to size 1 along every axis they
    do not vary along (but `keep`), so later operations cost O(channels) again."""
    if labels.numel() <= threshold or labels.dim() == 0:
        return labels
    varying = varying_dims(labels)
    for d in range(labels.dim()):
        if d != keep and labels.shape[d] > 1 and labels.stride(d) != 0 and d not in varying:
            labels = labels.narrow(d, 0, 1)
    return squeeze_broadcast(labels, keep=keep)[0]
