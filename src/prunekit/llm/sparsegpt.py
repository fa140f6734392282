"""SparseGPT (Frantar & Alistarh, 2023): prune a Linear layer and reconstruct its kept weights.

Each row w of W solves   min ‖(w − ŵ) X‖²  subject to ŵ's mask,   with the layer-input Hessian

    H = 2 X Xᵀ + λ I,        λ = dampening · mean diag(2 X Xᵀ)   (dampening = 1 %).

Columns are processed left to right. With F = {j, …, d} the columns not yet processed,
removing w_j and letting the columns in F absorb it is an optimal brain surgeon (OBS) step:

    error  ε_j = w_j² / [H_F⁻¹]_jj,        update  w_F ← w_F − (w_j / [H_F⁻¹]_jj) · [H_F⁻¹]_{j,F}.

Every [H_F⁻¹] row needed comes from one upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU):
[H_F⁻¹]_{j,F} / [H_F⁻¹]_jj = U_{j,F} / U_jj, so ε_j = (w_j / U_jj)². Masks are chosen
adaptively: per block of `block_size` columns, the weights with the smallest ε (over all rows
of the block) for a float sparsity, or the m − n smallest of each N:M group when the sweep
reaches it. Updates inside a block are applied column by column; the block's accumulated
updates reach the later columns in one matrix product ("lazy batch" updates), which gives
the same result as updating every column at once.
"""

from __future__ import annotations

import torch

from ..errors import PrunekitError
from .base import LayerMethod, LayerPruning
from .statistics import InputStatistics
from .targets import NM, nm_mask


def inverse_hessian_factor(gram: torch.Tensor, dampening: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, dead): the upper Cholesky factor of (2XXᵀ + λI)⁻¹ in float64, and the inputs never active."""
    hessian = 2.0 * gram.detach().double()
    dead = torch.diagonal(hessian) == 0
    hessian[dead, dead] = 1.0  # an input that is always zero: its weights never matter
    mean_diagonal = torch.diagonal(hessian).mean()
    hessian.diagonal().add_(dampening * mean_diagonal)
    factor, info = torch.linalg.cholesky_ex(hessian)
    if int(info):
        raise PrunekitError(f"The layer's input Hessian is not positive definite even with dampening "
                            f"{dampening}; raise dampening= (e.g. 0.1) or use more calibration tokens.")
    return torch.linalg.cholesky(torch.cholesky_inverse(factor), upper=True), dead


def sparsegpt_prune(weight: torch.Tensor, gram: torch.Tensor, target=None, *, mask: torch.Tensor | None = None,
                    block_size: int = 128, dampening: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, new weight) for `weight` (out × in) given the inputs' Gram matrix XᵀX (in × in).

    `target` is a float sparsity or NM; alternatively a fixed `mask` (True keeps) to
    reconstruct under, e.g. one chosen by another criterion.
    """
    if isinstance(target, NM) and block_size % target.m:
        raise PrunekitError(f"block_size={block_size} must be a multiple of m={target.m} so that N:M groups "
                            "never straddle two blocks.")
    factor, dead = inverse_hessian_factor(gram, dampening)
    factor = factor.to(torch.float32)
    w = weight.detach().float().clone()
    w[:, dead] = 0.0
    rows, columns = w.shape
    keep = torch.ones_like(w, dtype=torch.bool) if mask is None else mask.to(torch.bool).clone()
    for start in range(0, columns, block_size):
        end = min(start + block_size, columns)
        block = w[:, start:end].clone()
        quantised = torch.zeros_like(block)
        errors = torch.zeros_like(block)
        u = factor[start:end, start:end]
        u_diagonal = torch.diagonal(u)
        if mask is None and not isinstance(target, NM):
            pruned = int(round(float(target) * block.numel()))
            if pruned:
                obs_error = (block / u_diagonal).square().flatten()
                block_keep = torch.ones(block.numel(), dtype=torch.bool, device=w.device)
                block_keep[torch.topk(obs_error, pruned, largest=False).indices] = False
                keep[:, start:end] = block_keep.view(rows, end - start)
        for j in range(end - start):
            if mask is None and isinstance(target, NM) and j % target.m == 0:
                group = slice(j, j + target.m)
                keep[:, start + j:start + j + target.m] = nm_mask((block[:, group] / u_diagonal[group]).square(),
                                                                  target)
            column = block[:, j]
            kept = column * keep[:, start + j]
            quantised[:, j] = kept
            error = (column - kept) / u[j, j]
            block[:, j:] -= error.unsqueeze(1) * u[j, j:].unsqueeze(0)
            errors[:, j] = error
        w[:, start:end] = quantised
        w[:, end:] -= errors @ factor[start:end, end:]
    return keep, w.to(weight.dtype)


class SparseGPT(LayerMethod):
    name = "sparsegpt"
    needs = "gram"

    def __init__(self, block_size: int = 128, dampening: float = 0.01):
        if block_size < 1 or not 0.0 < dampening:
            raise PrunekitError("SparseGPT needs block_size ≥ 1 and dampening > 0 (1 % of the mean diagonal "
                                "by default).")
        self.block_size = block_size
        self.dampening = dampening

    def prune(self, weight: torch.Tensor, stats: InputStatistics | None, target) -> LayerPruning:
        if stats is None or stats.tokens == 0:
            raise PrunekitError("SparseGPT needs the layer's input Hessian from calibration tokens; none were seen.")
        mask, new_weight = sparsegpt_prune(weight, stats.gram, target, block_size=self.block_size,
                                           dampening=self.dampening)
        return LayerPruning(mask, new_weight)
