"""Sizes read from a channel axis during the trace, so code that recomputes them is not blocked.

`x.size(1)`, `x.shape` and arithmetic on them (`c // groups`, `c * 2`) return `ChannelCount`
— a plain int to the model's code — when the axis carries channels. A view / reshape /
expand / split whose size is a ChannelCount follows the tensor after pruning (torchvision's
channel_shuffle, `x.view(b, c)` in squeeze-excitation), so it is treated like an inferred
size (-1) instead of a number written into the code. A count read from a tensor remembers the
labels and axis it was read from: used to size an axis that carries *other* channels
(torchvision's MaxViT reshapes the attention output to the width of its input), it ties two
groups' counts, which pruning cannot keep equal, so both are blocked (Trace.check_counts).
"""

from __future__ import annotations

import torch


class ChannelCount(int):
    """An int computed from the size of an axis that carries channels (`source`: (labels, axis) it
    was read from; None for a count a handler declared)."""

    def __new__(cls, value, source: tuple[torch.Tensor, int] | None = None):
        count = super().__new__(cls, value)
        count.source = source
        return count

    def _wrap(self, value):
        return ChannelCount(value, self.source) if isinstance(value, int) and not isinstance(value, bool) else value

    def __add__(self, other):
        return self._wrap(int.__add__(self, other))

    def __radd__(self, other):
        return self._wrap(int.__radd__(self, other))

    def __sub__(self, other):
        return self._wrap(int.__sub__(self, other))

    def __rsub__(self, other):
        return self._wrap(int.__rsub__(self, other))

    def __mul__(self, other):
        return self._wrap(int.__mul__(self, other))

    def __rmul__(self, other):
        return self._wrap(int.__rmul__(self, other))

    def __floordiv__(self, other):
        return self._wrap(int.__floordiv__(self, other))

    def __rfloordiv__(self, other):
        return self._wrap(int.__rfloordiv__(self, other))

    def __reduce__(self):  # pickles (and deep-copies) as the plain int it is
        return (int, (int(self),))


def is_channel_count(value) -> bool:
    return isinstance(value, ChannelCount)


def tag_sizes(value, channel_dims: set[int], labels: torch.Tensor, dim=None):
    """Wrap the result of `size()` / `.shape` of a tensor with these `labels`: entries of channel
    axes become ChannelCount."""
    if isinstance(value, torch.Size):
        return torch.Size([ChannelCount(v, (labels, d)) if d in channel_dims else v for d, v in enumerate(value)])
    if isinstance(value, int) and dim is not None and dim in channel_dims:
        return ChannelCount(value, (labels, dim))
    return value
