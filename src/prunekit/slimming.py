"""Network Slimming (Liu et al. 2017): train with a sparsity penalty on the BatchNorm scales γ.

    L' = L(x; W) + λ Σ_γ ρ(γ),   ρ(γ) = |γ|                        kind="l1" (the paper)
                                 ρ(γ) = ½γ²/β if |γ| < β else |γ| − ½β   kind="smooth_l1"

The L1 penalty drives the scales of unneeded channels to (near) zero; smooth-L1 is the
differentiable variant the lecture notes mention (quadratic near 0, L1 beyond β). Afterwards
prune the channels with the smallest |γ| (criterion "bn_scale") and fine-tune.

    loss = slimming_loss(F.cross_entropy, model, strength=1e-4)
    prunekit.training.train(model, data.train, config, loss_fn=loss)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import PrunekitError

KINDS = ("l1", "smooth_l1")


def bn_scales(model: nn.Module) -> dict[str, nn.Parameter]:
    """{name of γ: γ} for every affine BatchNorm in the model."""
    found = {f"{n}.weight" if n else "weight": m.weight for n, m in model.named_modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None}
    if not found:
        raise PrunekitError("The model has no affine BatchNorm layer, so there is no γ to penalise; Network Slimming "
                            "needs conv/linear → BatchNorm blocks.")
    return found


def bn_penalty(model: nn.Module, strength: float, kind: str = "l1", beta: float = 1e-2) -> torch.Tensor:
    """λ Σ ρ(γ) over every BatchNorm scale (differentiable; add it to the task loss)."""
    if kind not in KINDS:
        raise PrunekitError(f"kind must be one of {KINDS}, not {kind!r}.")
    if not strength >= 0:
        raise PrunekitError(f"strength must be ≥ 0, not {strength!r}.")
    if kind == "smooth_l1" and not beta > 0:
        raise PrunekitError(f"beta must be > 0 for smooth-L1, not {beta!r}.")
    total = 0.0
    for gamma in bn_scales(model).values():
        if kind == "l1":
            total = total + gamma.abs().sum()
        else:
            total = total + F.smooth_l1_loss(gamma, torch.zeros_like(gamma), reduction="sum", beta=beta)
    return strength * total


def slimming_loss(loss_fn, model: nn.Module, strength: float, kind: str = "l1", beta: float = 1e-2):
    """loss_fn(outputs, targets) + bn_penalty(model, …): a drop-in loss for prunekit.training.train."""
    bn_penalty(model, strength, kind, beta)  # validate now, not at the first training step

    def loss(outputs, targets, **kwargs):
        return loss_fn(outputs, targets, **kwargs) + bn_penalty(model, strength, kind, beta)

    return loss
