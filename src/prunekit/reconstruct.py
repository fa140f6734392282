"""Regression-based channel pruning (He, Zhang & Sun 2017): keep the input channels of one layer
that best reproduce its output, then refit the kept weights by least squares.

A layer computes Z = X Wᵀ (+ bias), where the columns of X are grouped by input channel c
(one column per channel for Linear, C·k columns of unfolded patches for a convolution).
Channel c contributes A_c = X_c W_cᵀ, so Z = Σ_c A_c. Choosing N_c channels is

    min_{β, W} ‖Z − Σ_c β_c X_c W_cᵀ‖_F²   subject to ‖β‖₀ ≤ N_c,

solved by alternating two convex steps:

1. LASSO on β with W fixed:  min_β ½‖Z − Σ_c β_c A_c‖_F² + λ‖β‖₁, by proximal gradient on the
   channel Gram matrix G_cd = ⟨A_c, A_d⟩_F (never forming the A_c), with λ raised by bisection
   until exactly N_c coefficients are non-zero;
2. least squares on the kept weights:  W_Sᵀ = argmin ‖Z − X_S W_Sᵀ‖_F², solved from the
   accumulated second moments XᵀX (equal to lstsq(X_S, Z) when X_S has full column rank).

The reconstructed weights are written back into the layer, the dropped channels' weights are
zeroed and masked; the bias is untouched (it does not depend on the inputs). Everything is
computed in float64. Coupling the *previous* layer's output channels is the dependency graph's
job; this module prunes and refits one layer at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import PrunekitError
from .masks import apply_masks, named_parameters
from .modes import evaluation_mode
from .selection import resolve_amount


# ---------------------------------------------------------------------------------------------
# Design matrices: the layer's input as rows of channel-grouped columns
# ---------------------------------------------------------------------------------------------

def check_layer(layer: nn.Module, name: str = "layer") -> None:
    if isinstance(layer, nn.Linear):
        return
    if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        if layer.groups != 1:
            raise PrunekitError(f"'{name}' is a grouped/depthwise convolution (groups={layer.groups}); regression "
                                "channel pruning needs groups=1.")
        if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
            raise PrunekitError(f"'{name}' uses padding={layer.padding!r}, padding_mode={layer.padding_mode!r}; "
                                "regression channel pruning supports numeric zero padding.")
        return
    raise PrunekitError(f"'{name}' is a {type(layer).__name__}; regression channel pruning handles nn.Linear, "
                        "nn.Conv1d and nn.Conv2d.")


def group_size(layer: nn.Module) -> int:
    """Columns of X per input channel: 1 for Linear, the kernel size for a convolution."""
    return 1 if isinstance(layer, nn.Linear) else int(torch.tensor(layer.kernel_size).prod())


def design_matrix(layer: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Rows of X (float64): one per example (Linear) or per example × output position (conv),
    columns ordered channel-major, matching weight.reshape(out, -1)."""
    x = inputs.detach().to(torch.float64)
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(layer, nn.Conv1d):
        x = x.unsqueeze(2)
        kernel, dilation = (1, layer.kernel_size[0]), (1, layer.dilation[0])
        padding, stride = (0, layer.padding[0]), (1, layer.stride[0])
    else:
        kernel, dilation, padding, stride = layer.kernel_size, layer.dilation, layer.padding, layer.stride
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # (N, C·k, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def weight_matrix(layer: nn.Module) -> torch.Tensor:
    return layer.weight.detach().to(torch.float64).reshape(layer.weight.shape[0], -1)


def input_moments(model: nn.Module, layer_name: str, batches) -> torch.Tensor:
    """S = XᵀX of the layer's inputs over the calibration batches (forward hook, removed after)."""
    layer = model.get_submodule(layer_name)
    check_layer(layer, layer_name)
    moments = []

    def hook(module, args):
        rows = design_matrix(module, args[0])
        moments.append(rows.T @ rows)

    handle = layer.register_forward_pre_hook(hook)
    try:
        with evaluation_mode(model), torch.no_grad():
            for batch in batches:
                model(batch[0] if isinstance(batch, (tuple, list)) else batch)
    finally:
        handle.remove()
    if not moments:
        raise PrunekitError(f"The forward pass never called '{layer_name}'; pass calibration batches that reach it.")
    return sum(moments)


def channel_gram(moments: torch.Tensor, weight: torch.Tensor, k: int) -> torch.Tensor:
    """G_cd = ⟨X_c W_cᵀ, X_d W_dᵀ⟩_F = Σ over the k×k block (c, d) of (XᵀX) ⊙ (WᵀW)."""
    product = moments * (weight.T @ weight)
    c = product.shape[0] // k
    return product.reshape(c, k, c, k).sum((1, 3))


# ---------------------------------------------------------------------------------------------
# Step 1: LASSO channel selection
# ---------------------------------------------------------------------------------------------

def lasso(gram: torch.Tensor, lam: float, *, beta: torch.Tensor | None = None, iters: int = 3000,
          tol: float = 1e-9, lipschitz: float | None = None) -> torch.Tensor:
    """argmin_β ½‖Z − Σ_c β_c A_c‖_F² + λ‖β‖₁, written with G and b = ⟨Z, A_·⟩ = G·1 (since Z = Σ_c A_c) as
    ½βᵀGβ − bᵀβ + λ‖β‖₁ (+ const), by accelerated proximal gradient (FISTA):
    β ← soft(y − (G y − b)/L, λ/L) with L = the largest eigenvalue of G; soft() gives exact zeros."""
    b = gram.sum(1)
    if lipschitz is None:
        lipschitz = float(torch.linalg.eigvalsh(gram).max())
    if lipschitz <= 0:
        return torch.zeros_like(b)
    beta = torch.zeros_like(b) if beta is None else beta.clone()
    y, t = beta.clone(), 1.0
    for _ in range(iters):
        step = y - (gram @ y - b) / lipschitz
        new = torch.sign(step) * torch.clamp(step.abs() - lam / lipschitz, min=0.0)
        t_next = 0.5 * (1.0 + (1.0 + 4.0 * t * t) ** 0.5)
        y = new + ((t - 1.0) / t_next) * (new - beta)
        change = float((new - beta).abs().max())
        beta, t = new, t_next
        if change <= tol * (1.0 + float(beta.abs().max())):
            break
    return beta


def lasso_select(gram: torch.Tensor, n_keep: int, *, iters: int = 3000, steps: int = 40):
    """(keep, β, λ): the smallest-penalty LASSO solution with at most n_keep non-zero β, found by
    bisection on λ ∈ [0, max|b|]; keep marks the n_keep largest |β| (ties: earlier channel)."""
    n = gram.shape[0]
    if not 0 <= n_keep <= n:
        raise PrunekitError(f"Cannot keep {n_keep} of {n} channels.")
    if n_keep == n:
        return torch.ones(n, dtype=torch.bool), torch.ones(n, dtype=gram.dtype), 0.0
    lo, hi = 0.0, float(gram.sum(1).abs().max()) + 1e-12
    best_beta, best_lam = torch.zeros(n, dtype=gram.dtype), hi
    beta, lipschitz = None, float(torch.linalg.eigvalsh(gram).max())
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        beta = lasso(gram, mid, beta=beta, iters=iters, lipschitz=lipschitz)
        count = int((beta != 0).sum())
        if count <= n_keep:
            hi, best_beta, best_lam = mid, beta.clone(), mid
            if count == n_keep:
                break
        else:
            lo = mid
    order = torch.argsort(-best_beta.abs(), stable=True)
    keep = torch.zeros(n, dtype=torch.bool)
    keep[order[:n_keep]] = True
    return keep, best_beta, best_lam


# ---------------------------------------------------------------------------------------------
# Step 2: least-squares reconstruction, and the whole layer procedure
# ---------------------------------------------------------------------------------------------

def column_mask(keep: torch.Tensor, k: int) -> torch.Tensor:
    return keep.repeat_interleave(k)


def least_squares(moments: torch.Tensor, weight: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """W_S minimising ‖X Wᵀ − X_S W_Sᵀ‖_F² from S = XᵀX: solve S_SS W_Sᵀ = S_S· Wᵀ (min-norm)."""
    lhs = moments[cols][:, cols]
    rhs = moments[cols] @ weight.T
    return torch.linalg.lstsq(lhs, rhs, driver="gelsd").solution.T


def reconstruction_error(moments: torch.Tensor, weight: torch.Tensor, new_weight: torch.Tensor) -> float:
    """‖X Wᵀ − X W'ᵀ‖_F² = tr(D S Dᵀ) with D = W − W'."""
    d = weight - new_weight
    return float(torch.einsum("oi,ij,oj->", d, moments, d))


@dataclass(frozen=True)
class Reconstruction:
    layer: str
    keep: torch.Tensor  # bool per input channel
    beta: torch.Tensor  # the LASSO coefficients at the chosen λ
    lam: float
    error_dropped: float  # ‖Z − Ẑ‖² if the dropped channels were simply zeroed
    error_reconstructed: float  # after the least-squares refit
    output_energy: float  # ‖Z‖²


def prune_layer_channels(model: nn.Module, layer_name: str, amount, batches, *, reconstruct: bool = True,
                         apply: bool = True) -> Reconstruction:
    """Prune `amount` (fraction or count) of `layer_name`'s input channels by LASSO, refit the kept
    weights by least squares and write them back (reconstruct/apply=False: only report)."""
    try:
        layer = model.get_submodule(layer_name)
    except AttributeError:
        raise PrunekitError(f"Model has no module '{layer_name}'.") from None
    check_layer(layer, layer_name)
    if batches is None:
        raise PrunekitError("Regression channel pruning needs calibration batches: pass batches=[(x, y), ...].")
    channels = layer.weight.shape[1]
    n_drop = resolve_amount(amount, channels, f"input channels of '{layer_name}'")
    k = group_size(layer)
    moments = input_moments(model, layer_name, batches)
    weight = weight_matrix(layer)
    keep, beta, lam = lasso_select(channel_gram(moments, weight, k), channels - n_drop)
    cols = column_mask(keep, k)
    dropped = weight * cols
    refit = torch.zeros_like(weight)
    if cols.any():
        refit[:, cols] = least_squares(moments, weight, cols)
    new = refit if reconstruct else dropped
    result = Reconstruction(layer_name, keep, beta, lam, reconstruction_error(moments, weight, dropped),
                            reconstruction_error(moments, weight, refit), float(torch.einsum(
                                "oi,ij,oj->", weight, moments, weight)))
    if apply:
        name = f"{layer_name}.weight" if layer_name else "weight"
        mask = cols.reshape(1, -1).expand_as(weight).reshape(layer.weight.shape)
        dense = named_parameters(model)[name]
        with torch.no_grad():
            dense.copy_(new.reshape(layer.weight.shape).to(dense.dtype))
        apply_masks(model, {name: mask})
    return result


__all__ = ["prune_layer_channels", "Reconstruction", "lasso", "lasso_select", "least_squares", "channel_gram",
           "design_matrix", "input_moments", "reconstruction_error", "check_layer"]
