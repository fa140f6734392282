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

With `reference=` the unpruned network, Z is the reference layer's output while X' comes from
the network being pruned (earlier layers already pruned), as in the paper's layer-by-layer
procedure: the LASSO uses b_c = ⟨Z, X'_c W_cᵀ⟩ and the refit solves X'ᵀX' W_Sᵀ = X'ᵀX W_refᵀ.
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
from .nested import model_inputs
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
                model_inputs(batch[0] if isinstance(batch, (tuple, list)) else batch)(model)
    finally:
        handle.remove()
    if not moments:
        raise PrunekitError(f"The forward pass never called '{layer_name}'; pass calibration batches that reach it.")
    return sum(moments)


@dataclass(frozen=True)
class Moments:
    """Second moments of a layer's inputs: X' (what the layer sees in the model being pruned)
    and X (what it sees in the reference, unpruned model): own = X'ᵀX', cross = X'ᵀX, ref = XᵀX."""
    own: torch.Tensor
    cross: torch.Tensor
    ref: torch.Tensor

    @classmethod
    def single(cls, moments: torch.Tensor) -> "Moments":
        return cls(moments, moments, moments)


def paired_moments(model: nn.Module, reference: nn.Module, layer_name: str, batches) -> Moments:
    """Moments of the layer's inputs in `model` (X') and in `reference` (X) on the same batches."""
    layers = []
    for net in (model, reference):
        try:
            layers.append(net.get_submodule(layer_name))
        except AttributeError:
            raise PrunekitError(f"Module '{layer_name}' is missing from the model or the reference.") from None
        check_layer(layers[-1], layer_name)
    captured: dict[int, torch.Tensor] = {}
    handles = [layer.register_forward_pre_hook(lambda m, args, i=i: captured.__setitem__(i, design_matrix(m, args[0])))
               for i, layer in enumerate(layers)]
    own = cross = ref = None
    try:
        with evaluation_mode(model), evaluation_mode(reference), torch.no_grad():
            for batch in batches:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                captured.clear()
                model(x)
                reference(x)
                if len(captured) < 2:
                    raise PrunekitError(f"The forward pass never called '{layer_name}' in both networks.")
                a, b = captured[0], captured[1]
                own = a.T @ a if own is None else own + a.T @ a
                cross = a.T @ b if cross is None else cross + a.T @ b
                ref = b.T @ b if ref is None else ref + b.T @ b
    finally:
        for h in handles:
            h.remove()
    if own is None:
        raise PrunekitError("No calibration batches were given.")
    return Moments(own, cross, ref)


def target_products(cross: torch.Tensor, weight: torch.Tensor, reference_weight: torch.Tensor, k: int) -> torch.Tensor:
    """b_c = ⟨Z, X'_c W_cᵀ⟩_F with Z = X W_refᵀ: Σ over channel c's columns of (X'ᵀX W_refᵀ) ⊙ Wᵀ."""
    per_column = ((cross @ reference_weight.T) * weight.T).sum(1)
    return per_column.reshape(-1, k).sum(1)


def channel_gram(moments: torch.Tensor, weight: torch.Tensor, k: int) -> torch.Tensor:
    """G_cd = ⟨X_c W_cᵀ, X_d W_dᵀ⟩_F = Σ over the k×k block (c, d) of (XᵀX) ⊙ (WᵀW)."""
    product = moments * (weight.T @ weight)
    c = product.shape[0] // k
    return product.reshape(c, k, c, k).sum((1, 3))


# ---------------------------------------------------------------------------------------------
# Step 1: LASSO channel selection
# ---------------------------------------------------------------------------------------------

def lasso(gram: torch.Tensor, lam: float, *, beta: torch.Tensor | None = None, iters: int = 3000,
          tol: float = 1e-9, lipschitz: float | None = None, b: torch.Tensor | None = None) -> torch.Tensor:
    """argmin_β ½‖Z − Σ_c β_c A_c‖_F² + λ‖β‖₁, written with G and b = ⟨Z, A_·⟩ = G·1 (since Z = Σ_c A_c) as
    ½βᵀGβ − bᵀβ + λ‖β‖₁ (+ const; pass b when Z is a reference output, see target_products),
    by accelerated proximal gradient (FISTA):
    β ← soft(y − (G y − b)/L, λ/L) with L = the largest eigenvalue of G; soft() gives exact zeros."""
    b = gram.sum(1) if b is None else b
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


def lasso_select(gram: torch.Tensor, n_keep: int, *, iters: int = 3000, steps: int = 40,
                 b: torch.Tensor | None = None):
    """(keep, β, λ): the smallest-penalty LASSO solution with at most n_keep non-zero β, found by
    bisection on λ ∈ [0, max|b|]; keep marks the n_keep largest |β| (ties: earlier channel)."""
    n = gram.shape[0]
    if not 0 <= n_keep <= n:
        raise PrunekitError(f"Cannot keep {n_keep} of {n} channels.")
    if n_keep == n:
        return torch.ones(n, dtype=torch.bool), torch.ones(n, dtype=gram.dtype), 0.0
    b = gram.sum(1) if b is None else b
    lo, hi = 0.0, float(b.abs().max()) + 1e-12
    best_beta, best_lam = torch.zeros(n, dtype=gram.dtype), hi
    beta, lipschitz = None, float(torch.linalg.eigvalsh(gram).max())
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        beta = lasso(gram, mid, beta=beta, iters=iters, lipschitz=lipschitz, b=b)
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


def least_squares(moments: torch.Tensor, weight: torch.Tensor, cols: torch.Tensor,
                  cross: torch.Tensor | None = None) -> torch.Tensor:
    """W_S minimising ‖X Wᵀ − X'_S W_Sᵀ‖_F² from X'ᵀX' (`moments`) and X'ᵀX (`cross`, = moments
    when X' = X): solve (X'ᵀX')_SS W_Sᵀ = (X'ᵀX)_S· Wᵀ, minimum-norm if rank-deficient."""
    cross = moments if cross is None else cross
    lhs = moments[cols][:, cols]
    rhs = cross[cols] @ weight.T
    return torch.linalg.lstsq(lhs, rhs, driver="gelsd").solution.T


def reconstruction_error(moments, weight: torch.Tensor, new_weight: torch.Tensor) -> float:
    """‖X Wᵀ − X' W'ᵀ‖_F² = tr(W XᵀX Wᵀ) − 2 tr(W' X'ᵀX Wᵀ) + tr(W' X'ᵀX' W'ᵀ); `moments` is a
    Moments or, when X' = X, the single matrix XᵀX (then it is tr(D XᵀX Dᵀ), D = W − W')."""
    if isinstance(moments, torch.Tensor):
        d = weight - new_weight
        return float(torch.einsum("oi,ij,oj->", d, moments, d))
    return float(torch.einsum("oi,ij,oj->", weight, moments.ref, weight)
                 - 2 * torch.einsum("oi,ij,oj->", new_weight, moments.cross, weight)
                 + torch.einsum("oi,ij,oj->", new_weight, moments.own, new_weight))


@dataclass(frozen=True)
class Reconstruction:
    layer: str
    keep: torch.Tensor  # bool per input channel
    beta: torch.Tensor  # the LASSO coefficients at the chosen λ
    lam: float
    error_dropped: float  # ‖Z − Ẑ‖² if the dropped channels were simply zeroed
    error_reconstructed: float  # after the least-squares refit
    output_energy: float  # ‖Z‖²


def prune_layer_channels(model: nn.Module, layer_name: str, amount, batches, *, reference: nn.Module | None = None,
                         reconstruct: bool = True, apply: bool = True) -> Reconstruction:
    """Prune `amount` (fraction or count) of `layer_name`'s input channels by LASSO, refit the kept
    weights by least squares and write them back (reconstruct/apply=False: only report).

    With `reference` (the unpruned network, same layer names), the target is the reference
    layer's output Z = X W_refᵀ while the inputs X' come from `model`, whose earlier layers may
    already be pruned — He et al.'s layer-by-layer procedure. Without it, X' = X.
    """
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
    weight = weight_matrix(layer)
    if reference is None:
        moments, target = Moments.single(input_moments(model, layer_name, batches)), weight
    else:
        moments = paired_moments(model, reference, layer_name, batches)
        target = weight_matrix(reference.get_submodule(layer_name))
        if target.shape != weight.shape:
            raise PrunekitError(f"'{layer_name}' has weight shape {tuple(layer.weight.shape)} in the model but "
                                f"{tuple(reference.get_submodule(layer_name).weight.shape)} in the reference.")
    b = target_products(moments.cross, weight, target, k)
    keep, beta, lam = lasso_select(channel_gram(moments.own, weight, k), channels - n_drop, b=b)
    cols = column_mask(keep, k)
    dropped = weight * cols
    refit = torch.zeros_like(weight)
    if cols.any():
        refit[:, cols] = least_squares(moments.own, target, cols, cross=moments.cross)
    new = refit if reconstruct else dropped
    result = Reconstruction(layer_name, keep, beta, lam, reconstruction_error(moments, target, dropped),
                            reconstruction_error(moments, target, refit),
                            float(torch.einsum("oi,ij,oj->", target, moments.ref, target)))
    if apply:
        name = f"{layer_name}.weight" if layer_name else "weight"
        mask = cols.reshape(1, -1).expand_as(weight).reshape(layer.weight.shape)
        dense = named_parameters(model)[name]
        with torch.no_grad():
            dense.copy_(new.reshape(layer.weight.shape).to(dense.dtype))
        apply_masks(model, {name: mask})
    return result


__all__ = ["prune_layer_channels", "Reconstruction", "Moments", "paired_moments", "target_products", "lasso",
           "lasso_select", "least_squares", "channel_gram", "design_matrix", "input_moments", "reconstruction_error",
           "check_layer"]
