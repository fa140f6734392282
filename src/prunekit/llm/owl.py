"""OWL (Yin et al., 2024): outlier-weighted layer-wise sparsity, an allocator for any method.

For decoder block ℓ, with Wanda scores A_ij = |W_ij| · ‖X_j‖₂ over all its Linear layers,
the layer outlier ratio is the fraction of scores above M times their mean:

    D_ℓ = #{A_ij > M · mean(A)} / #A                              (M = 5)

Blocks with more outliers are pruned less. The ratios are mapped linearly onto
[0, 2λ], centred so that the densities average to 1 − s:

    density_ℓ = (1 − s) + 2λ · (D_ℓ − min D) / (max D − min D) − mean_ℓ(…)     (λ = 0.08)
    sparsity_ℓ = 1 − density_ℓ

so every sparsity_ℓ lies in [s − λ, s + λ] and their mean is exactly s (the blocks of a
decoder have equal sizes, so the model's overall sparsity is s too). The outlier ratios come
from one sequential pass over the dense model; the allocator knows nothing of the method
that then prunes to these ratios.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import AmountError, PrunekitError
from .engine import block_linears, run_blockwise
from .targets import check_sparsity
from .wanda import wanda_scores


def outlier_ratio(scores: Sequence[torch.Tensor], multiple: float) -> float:
    """Fraction of all entries of `scores` above `multiple` × their common mean."""
    flat = torch.cat([s.detach().flatten().double() for s in scores])
    return float((flat > multiple * flat.mean()).double().mean())


def owl_sparsities(outlier_ratios: Sequence[float], sparsity: float, spread: float) -> list[float]:
    """Per-block sparsities from outlier ratios (formula in the module docstring)."""
    sparsity = check_sparsity(sparsity)
    ratios = torch.tensor(list(outlier_ratios), dtype=torch.float64)
    if ratios.numel() == 0:
        raise PrunekitError("OWL needs at least one block's outlier ratio.")
    span = ratios.max() - ratios.min()
    if span == 0:  # no block stands out: uniform
        return [sparsity] * ratios.numel()
    scaled = (ratios - ratios.min()) / span * (2 * spread)
    densities = scaled - scaled.mean() + (1.0 - sparsity)
    sparsities = (1.0 - densities).tolist()
    if min(sparsities) < 0 or max(sparsities) >= 1:
        raise AmountError(f"OWL with spread λ={spread} around sparsity {sparsity} gives block sparsities in "
                          f"[{min(sparsities):.3f}, {max(sparsities):.3f}], outside [0, 1); lower the spread.")
    return sparsities


@dataclass(frozen=True)
class OWL:
    """The allocator: `OWL().allocate(model, tokens, 0.5)` → one sparsity per decoder block."""

    outlier_multiple: float = 5.0
    spread: float = 0.08

    def __post_init__(self):
        if not self.outlier_multiple > 0 or not 0 <= self.spread < 1:
            raise PrunekitError(f"OWL needs outlier_multiple > 0 and 0 ≤ spread < 1, got "
                                f"{self.outlier_multiple}, {self.spread}.")

    def outlier_ratios(self, model, tokens, *, batch_size: int = 8, device="cpu", progress=None) -> list[float]:
        ratios = []

        def measure(run):
            stats = run.input_statistics(gram=False)
            scores = [wanda_scores(layer.weight, stats[name].norms) for name, layer in block_linears(run.block).items()]
            ratios.append(outlier_ratio(scores, self.outlier_multiple))

        run_blockwise(model, tokens, measure, batch_size=batch_size, device=device, progress=progress,
                      description="OWL outlier ratios")
        return ratios

    def allocate(self, model, tokens, sparsity: float, **engine_options) -> list[float]:
        check_sparsity(sparsity)
        return owl_sparsities(self.outlier_ratios(model, tokens, **engine_options), sparsity, self.spread)
