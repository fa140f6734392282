"""Low-rank factorisation of Linear and Conv layers by truncated SVD (Eckart–Young).

A layer's weight as a matrix W (m × n) — a Linear's (out, in), a conv's (out, in·k…) — has
the SVD W = U Σ Vᵀ. Keeping the r largest singular values gives

    W_r = A B,   A = U_r Σ_r^½ (m × r),   B = Σ_r^½ V_rᵀ (r × n),

the best rank-r approximation in the Frobenius norm, with error ‖W − W_r‖²_F = Σ_{i>r} σ_i²
(Eckart–Young–Mirsky). The layer becomes two thin layers: x ↦ A (B x), i.e. Linear(n, r) then
Linear(r, m) carrying the bias; a conv becomes the same conv with r output channels (no bias)
followed by a 1×1 conv to m channels. Parameters go from m·n to r·(m + n), so factorising
pays only for r < m·n / (m + n).

Rank per layer: `energy=e` keeps the smallest r with Σ_{i≤r} σ_i² ≥ e · Σ_i σ_i²; `ranks={layer:
r}` sets them directly, e.g. from an allocator over RankProblem (prunekit.allocate.ranks).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import PrunekitError, did_you_mean
from .common import matrix_view, plain_copy, replace_module

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def factorizable(module: nn.Module) -> bool:
    """Linear layers and ungrouped (non-transposed) convolutions."""
    return isinstance(module, nn.Linear) or (isinstance(module, _CONVS) and module.groups == 1)


def singular_values(weight: torch.Tensor) -> torch.Tensor:
    """σ_1 ≥ σ_2 ≥ … of the weight's matrix view, in float64."""
    return torch.linalg.svdvals(matrix_view(weight.detach()).double())


def svd_factors(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with A B the best rank-`rank` approximation of `matrix` (computed in float64, returned in its dtype)."""
    if not 1 <= rank <= min(matrix.shape):
        raise PrunekitError(f"rank must be in [1, {min(matrix.shape)}] for a {tuple(matrix.shape)} matrix, not {rank}.")
    u, s, vh = torch.linalg.svd(matrix.detach().double(), full_matrices=False)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).to(matrix.dtype), (root[:, None] * vh[:rank]).to(matrix.dtype)


def energy_rank(sigma: torch.Tensor, energy: float) -> int:
    """Smallest r with Σ_{i≤r} σ_i² ≥ energy · Σ σ_i² (at least 1)."""
    if not 0 < energy <= 1:
        raise PrunekitError(f"energy is the fraction of Σσ² to keep, in (0, 1]; got {energy!r}.")
    cumulative = torch.cumsum(sigma.double() ** 2, 0)
    if cumulative[-1] == 0:
        return 1
    return max(1, int(torch.searchsorted(cumulative, energy * cumulative[-1] * (1 - 1e-12))) + 1)


def useful_rank(m: int, n: int) -> int:
    """The largest r with r·(m + n) < m·n: factorising at a higher rank adds parameters."""
    return (m * n - 1) // (m + n)


def factorize(module: nn.Module, rank: int) -> nn.Sequential:
    """Two thin layers computing the rank-`rank` SVD approximation of `module` (a plain nn.Sequential)."""
    if not factorizable(module):
        raise PrunekitError(f"{module} cannot be factorised: only Linear and ungrouped Conv layers can.")
    weight = module.weight.detach()
    a, b = svd_factors(matrix_view(weight), rank)
    bias = module.bias is not None
    kwargs = {"device": weight.device, "dtype": weight.dtype}
    if isinstance(module, nn.Linear):
        first = nn.Linear(module.in_features, rank, bias=False, **kwargs)
        second = nn.Linear(rank, module.out_features, bias=bias, **kwargs)
    else:
        conv = type(module)
        first = conv(module.in_channels, rank, module.kernel_size, module.stride, module.padding, module.dilation,
                     bias=False, padding_mode=module.padding_mode, **kwargs)
        second = conv(rank, module.out_channels, 1, bias=bias, **kwargs)
    with torch.no_grad():
        first.weight.copy_(b.reshape(first.weight.shape))
        second.weight.copy_(a.reshape(second.weight.shape))
        if bias:
            second.bias.copy_(module.bias)
    return nn.Sequential(first, second)


def chosen_layers(model: nn.Module, layers) -> dict[str, nn.Module]:
    available = {n: m for n, m in model.named_modules() if factorizable(m) and n}
    if layers is None:
        return available
    chosen = {}
    for name in layers:
        if name not in available:
            raise PrunekitError(f"'{name}' is not a factorisable layer (Linear / ungrouped Conv) of the model."
                                f"{did_you_mean(name, available)}")
        chosen[name] = available[name]
    return chosen


def low_rank(model: nn.Module, *, energy: float | None = None, ranks: dict[str, int] | None = None,
             layers=None) -> tuple[nn.Module, list[dict]]:
    """(factorised copy of `model`, one row per layer: rank, kept energy, parameters before/after).

    Give exactly one of `energy` (keep that fraction of Σσ² in every layer of `layers`,
    default all Linear / Conv layers; a layer whose rank would not save parameters stays
    dense) or `ranks` ({module name: rank}: exactly those layers, at those ranks). Masks are
    baked into the copy first; `model` is not changed.
    """
    if (energy is None) == (ranks is None):
        raise PrunekitError("Give exactly one of energy= (e.g. 0.9) or ranks= ({layer: rank}).")
    if energy is not None:
        energy_rank(torch.ones(1), energy)  # validates before anything is copied
    plain = plain_copy(model)
    chosen = chosen_layers(plain, layers if ranks is None else list(ranks))
    rows, replacements = [], {}
    for name, module in chosen.items():
        weight = module.weight.detach()
        m, n = matrix_view(weight).shape
        sigma = singular_values(weight)
        rank = energy_rank(sigma, energy) if ranks is None else ranks[name]
        if not (isinstance(rank, int) and 1 <= rank <= len(sigma)):
            raise PrunekitError(f"rank for '{name}' must be an integer in [1, {len(sigma)}], not {rank!r}.")
        kept = float((sigma[:rank] ** 2).sum() / (sigma ** 2).sum().clamp_min(1e-300))
        row = {"layer": name, "shape": f"{m}×{n}", "rank": rank, "full_rank": len(sigma), "energy_kept": kept,
               "params_before": m * n, "params_after": m * n, "factorised": False}
        if ranks is None and rank > useful_rank(m, n):
            row["why"] = f"rank {rank} > {useful_rank(m, n)}: factors would not save parameters"
        else:
            replacements[name] = factorize(module, rank)
            row.update(params_after=rank * (m + n), factorised=True, why="")
        rows.append(row)
    for name, new in replacements.items():
        replace_module(plain, chosen[name], new)
    return plain, rows
