"""Layers that store only the non-zeros of their weight and multiply with a sparse kernel.

    SparseLinear:  y = x Wᵀ + b  computed as  (W xᵀ)ᵀ + b  with W in CSR or BSR.
    SparseConv2d:  a convolution as its matrix form: the input's k×k patches are unfolded
                   into columns X (I·k·k, N·L), then Y = W X + b with W (O, I·k·k) sparse,
                   and Y is folded back to (N, O, H_out, W_out).

CSR stores, per row, the column index of every non-zero and its value; BSR stores, per
block-row, the block-column of every non-zero b×b block and the whole block. Indices are
int32 (what the CPU sparse kernels use natively: int64 indices are converted on every call).
Torch's CPU BSR kernels accept square blocks only.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PrunekitError
from .common import matrix_view

LAYOUTS = ("csr", "bsr")


def sparse_weight(matrix: torch.Tensor, layout: str, block: int | None = None) -> torch.Tensor:
    """A 2-D dense tensor as a CSR or BSR (block × block) tensor with int32 indices."""
    if layout not in LAYOUTS:
        raise PrunekitError(f"Unknown sparse layout {layout!r}; known: {', '.join(LAYOUTS)}.")
    if layout == "bsr" and (not block or matrix.shape[0] % block or matrix.shape[1] % block):
        raise PrunekitError(f"BSR with {block}×{block} blocks needs both dimensions of {tuple(matrix.shape)} "
                            "divisible by the block size; use CSR for this layer.")
    with warnings.catch_warnings():  # torch calls its sparse layouts beta on every conversion
        warnings.simplefilter("ignore", UserWarning)
        s = matrix.to_sparse_csr() if layout == "csr" else matrix.to_sparse_bsr((block, block))
    parts = {"crow_indices": s.crow_indices().to(torch.int32), "col_indices": s.col_indices().to(torch.int32),
             "values": s.values()}
    return from_components(layout, parts, matrix.shape, check=False)  # torch built them: valid by construction


def components(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """The tensors that define a CSR/BSR weight: row pointers, column indices, values."""
    return {"crow_indices": weight.crow_indices(), "col_indices": weight.col_indices(), "values": weight.values()}


def from_components(layout: str, parts: dict[str, torch.Tensor], size, *, check: bool = True) -> torch.Tensor:
    """Inverse of `components` (BSR values are (blocks, b, b)). check=True validates the index
    invariants (sorted, in range): indices read from a file must never reach a kernel unchecked."""
    build = {"csr": torch.sparse_csr_tensor, "bsr": torch.sparse_bsr_tensor}.get(layout)
    if build is None:
        raise PrunekitError(f"Unknown sparse layout {layout!r}; known: {', '.join(LAYOUTS)}.")
    try:
        return build(parts["crow_indices"], parts["col_indices"], parts["values"], size=tuple(size),
                     check_invariants=check)
    except RuntimeError as e:
        raise PrunekitError(f"Invalid {layout.upper()} tensor ({e}); the file is corrupt.") from None


def layout_of(weight: torch.Tensor) -> str:
    return "bsr" if weight.layout == torch.sparse_bsr else "csr"


def _matmul(weight: torch.Tensor, bias: torch.Tensor | None, columns: torch.Tensor) -> torch.Tensor:
    """W X (+ b broadcast over columns) with W sparse: (O, K) @ (K, M) → (O, M)."""
    if bias is None:
        return torch.mm(weight, columns)
    return torch.addmm(bias[:, None], weight, columns)


class SparseLinear(nn.Module):
    """A Linear layer whose weight is a CSR or BSR tensor (inference only: nothing trains)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_dense(cls, linear: nn.Linear, layout: str, block: int | None = None) -> SparseLinear:
        return cls(sparse_weight(linear.weight.detach(), layout, block), linear.bias)

    @property
    def layout(self) -> str:
        return layout_of(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        # contiguous like nn.Linear's output, so a user's later .view() keeps working
        y = _matmul(self.weight, self.bias, flat.t()).t().contiguous()
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, layout={self.layout}, "
                f"stored={self.weight.values().numel()}")


class SparseConv2d(nn.Module):
    """A Conv2d (groups = 1, zero padding) run as a sparse matrix times the unfolded input."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, in_channels: int, kernel_size, stride,
                 padding, dilation):
        super().__init__()
        self.out_channels, self.in_channels = weight.shape[0], in_channels
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.padding, self.dilation = tuple(padding), tuple(dilation)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, layout: str, block: int | None = None) -> SparseConv2d:
        if not supports_conv(conv):
            raise PrunekitError(f"{conv} cannot run as a sparse matrix: it needs groups=1, zero padding given "
                                "as numbers; keep it dense.")
        weight = sparse_weight(matrix_view(conv.weight.detach()), layout, block)
        return cls(weight, conv.bias, conv.in_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation)

    @property
    def layout(self) -> str:
        return layout_of(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # an unbatched (C, H, W) input, as nn.Conv2d accepts
            return self.forward(x.unsqueeze(0)).squeeze(0)
        n, _, h, w = x.shape
        out_h, out_w = (
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, p, d, k, s in zip((h, w), self.padding, self.dilation, self.kernel_size, self.stride))
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (N, I·k·k, L)
        cols = cols.transpose(0, 1).reshape(cols.shape[1], -1)                          # (I·k·k, N·L)
        y = _matmul(self.weight, self.bias, cols)                                        # (O, N·L)
        return y.reshape(self.out_channels, n, out_h, out_w).transpose(0, 1).contiguous()

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, layout={self.layout}, "
                f"stored={self.weight.values().numel()}")


def supports_conv(conv: nn.Module) -> bool:
    """Whether a Conv2d has the matrix form SparseConv2d computes."""
    return (isinstance(conv, nn.Conv2d) and conv.groups == 1 and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str))


def sparse_module(module: nn.Module, layout: str, block: int | None = None) -> nn.Module:
    """The sparse counterpart of a dense Linear / Conv2d (same outputs up to float rounding)."""
    if isinstance(module, nn.Linear):
        return SparseLinear.from_dense(module, layout, block)
    if isinstance(module, nn.Conv2d):
        return SparseConv2d.from_dense(module, layout, block)
    raise PrunekitError(f"No sparse kernel for {type(module).__name__}; only Linear and Conv2d layers convert.")
