"""2:4 semi-structured sparsity on NVIDIA sparse tensor cores (Ampere and later).

A weight whose every group of 4 consecutive inputs holds at most 2 non-zeros (prunekit.prune_nm
with n=2, m=4) is stored by torch.sparse.to_sparse_semi_structured as the kept half plus
2-bit positions, and multiplied by the sparse tensor cores. That needs a CUDA device and
fp16 / bf16 (or int8) weights; on a CPU there is no such kernel, so the model stays dense
(masks baked) and the result says why.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..errors import PrunekitError
from .common import plain_copy

DTYPES = (torch.float16, torch.bfloat16)


def is_two_four(weight: torch.Tensor) -> bool:
    """Whether every group of 4 consecutive entries along the input dimension has ≤ 2 non-zeros."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool((weight.reshape(weight.shape[0], -1, 4).ne(0).sum(-1) <= 2).all())


def to_semi_structured(model: nn.Module, *, dtype: torch.dtype = torch.float16,
                       device=None) -> tuple[nn.Module, dict]:
    """(model, info): Linear layers with a 2:4 weight use torch's semi-structured sparse kernels.

    On CUDA (`device`, default the current CUDA device if there is one) the copy is moved
    there in `dtype` and every 2:4 Linear weight becomes a SparseSemiStructuredTensor;
    info["converted"] lists them, info["skipped"] the other Linear layers and why. Without
    CUDA the copy stays a dense float model on the CPU, a warning says so, and
    info["fallback"] holds the reason. `model` is not changed.
    """
    if dtype not in DTYPES:
        raise PrunekitError(f"2:4 sparse tensor cores take {', '.join(map(str, DTYPES))} weights here, not {dtype}.")
    device = torch.device(device) if device is not None else (
        torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    plain = plain_copy(model)
    linears = {n: m for n, m in plain.named_modules() if isinstance(m, nn.Linear)}
    candidates = {n: m for n, m in linears.items() if is_two_four(m.weight.detach())}
    skipped = {n: "weight is not 2:4 along its inputs" for n in linears if n not in candidates}
    if device.type != "cuda":
        reason = ("to_sparse_semi_structured needs a CUDA GPU (compute capability ≥ 8.0); on this "
                  f"{device.type} device the {len(candidates)} 2:4 layers stay dense (zeros kept).")
        warnings.warn(reason, stacklevel=2)
        return plain, {"converted": [], "skipped": skipped, "fallback": reason}
    from torch.sparse import to_sparse_semi_structured

    plain = plain.to(device=device, dtype=dtype)
    converted = []
    for name, module in candidates.items():
        try:
            module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.detach()), requires_grad=False)
            converted.append(name)
        except (RuntimeError, ValueError) as e:  # shape or dtype the kernels do not support
            skipped[name] = f"kernel refused it: {e}".splitlines()[0]
    return plain.eval(), {"converted": converted, "skipped": skipped, "fallback": None}
