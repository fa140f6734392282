"""A structured mask stored per channel: the AND of one keep-vector per masked axis.

Structured pruning removes whole slices of a tensor — output channels, input channels, the
features of a norm — so its mask is m[i0, i1, …] = Π_d keep_d[i_d] over the masked axes d.
A bool per weight costs a quarter of an fp32 model; the vectors cost a few bytes per channel.
`MaskSet` and `WeightMask` keep such masks in this form and expand them only where a dense
tensor is asked for (one tensor at a time), so pruning and compacting a very large model
holds no full-size mask at all.
"""

from __future__ import annotations

import math

import torch

from .errors import MaskError


class AxisMask:
    """mask = AND over d of keep[d] broadcast along axis d (True keeps). Immutable: every
    method returns new tensors or a new AxisMask, so MaskSets may share one."""

    def __init__(self, shape, keep: dict[int, torch.Tensor]):
        self.shape = torch.Size(shape)
        self.keep = {}
        for dim, vector in sorted(keep.items()):
            if vector.dtype != torch.bool or vector.shape != (self.shape[dim],):
                raise MaskError(f"keep[{dim}] must be a bool vector of length {self.shape[dim]}.")
            self.keep[dim] = vector
        devices = {v.device for v in self.keep.values()}
        self.device = devices.pop() if len(devices) == 1 else torch.device("cpu")

    dtype = torch.bool

    def dim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        return math.prod(self.shape)

    def kept(self) -> int:
        """Number of True entries, from the vectors alone."""
        free = math.prod(n for d, n in enumerate(self.shape) if d not in self.keep)
        return free * math.prod(int(v.sum()) for v in self.keep.values())

    def broadcast(self, dim: int) -> torch.Tensor:
        """keep[dim] shaped to broadcast against the full tensor."""
        view = [1] * len(self.shape)
        view[dim] = -1
        return self.keep[dim].view(view)

    def broadcastable(self) -> torch.Tensor:
        """The AND of the axes' vectors with size 1 on every unmasked axis: it broadcasts to the
        mask (a conv's [out, in, 1, 1], not [out, in, k, k]), enough for torch.where."""
        out = None
        for dim in self.keep:
            out = self.broadcast(dim) if out is None else out & self.broadcast(dim)
        return torch.ones([1] * len(self.shape), dtype=torch.bool, device=self.device) if out is None else out

    def dense(self) -> torch.Tensor:
        """The bool tensor itself (full size: for one tensor at a time)."""
        return self.broadcastable().expand(self.shape).contiguous()

    def any_along(self, dim: int) -> torch.Tensor:
        """Per position along `dim`: whether anything is kept there."""
        anything = all(bool(v.any()) for d, v in self.keep.items() if d != dim)
        if dim in self.keep:
            return self.keep[dim] & anything
        return torch.full((self.shape[dim],), anything, dtype=torch.bool, device=self.device)

    def __and__(self, other: AxisMask) -> AxisMask:
        """The AND of two masks of one shape, still per channel."""
        if self.shape != other.shape:
            raise MaskError(f"AxisMask shapes differ: {tuple(self.shape)} vs {tuple(other.shape)}.")
        keep = dict(self.keep)
        for dim, vector in other.keep.items():
            keep[dim] = keep[dim] & vector.to(keep[dim].device) if dim in keep else vector
        return AxisMask(self.shape, keep)

    def index_select(self, dim: int, index: torch.Tensor) -> AxisMask:
        """The mask of tensor.index_select(dim, index), still per channel."""
        shape = list(self.shape)
        shape[dim] = len(index)
        keep = dict(self.keep)
        if dim in keep:
            keep[dim] = keep[dim].index_select(0, index.to(keep[dim].device))
        return AxisMask(shape, keep)

    def zero_removed(self, tensor: torch.Tensor) -> None:
        """tensor[removed] = 0, in place: an entry is removed where any axis removes its slice,
        so each axis's removed slices are filled in turn — no full-size mask is built (the AND
        of a Linear's two vectors is as large as the weight, and filling through it is 2–3×
        slower than filling whole rows and columns)."""
        for dim in self.keep:
            removed = self.removed(dim)
            if len(removed):
                tensor.index_fill_(dim, removed.to(tensor.device), 0.0)

    def removed(self, dim: int) -> torch.Tensor:
        """Indices of the slices removed along masked axis `dim` (a device sync on GPU)."""
        return torch.nonzero(~self.keep[dim]).flatten()

    def to(self, device) -> AxisMask:
        return AxisMask(self.shape, {d: v.to(device) for d, v in self.keep.items()})

    def __repr__(self) -> str:
        return f"AxisMask(shape={tuple(self.shape)}, axes={list(self.keep)}, kept={self.kept()}/{self.numel()})"
