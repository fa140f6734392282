"""Running statistics of one Linear layer's inputs over calibration batches.

With X the (tokens × in_features) matrix of every calibration token's input to the layer:

    squared_norms_j = Σ_t X_tj²         (‖X_j‖₂², Wanda's activation norm, squared)
    gram            = XᵀX               (SparseGPT's Hessian is H = 2 XᵀX)

Both are sums, so batches add up exactly; nothing per token is kept.
"""

from __future__ import annotations

import torch


class InputStatistics:
    """Accumulates ‖X_j‖² per input feature and, when asked, the Gram matrix XᵀX."""

    def __init__(self, features: int, *, gram: bool, device=None):
        self.features = features
        self.tokens = 0
        self.squared_norms = torch.zeros(features, dtype=torch.float64, device=device)
        self.gram = torch.zeros(features, features, dtype=torch.float32, device=device) if gram else None

    def add(self, inputs: torch.Tensor) -> None:
        x = inputs.detach().reshape(-1, self.features).float()
        self.tokens += x.shape[0]
        self.squared_norms += x.square().sum(0, dtype=torch.float64)
        if self.gram is not None:
            self.gram.addmm_(x.T, x)

    @property
    def norms(self) -> torch.Tensor:
        """‖X_j‖₂ per input feature (float32)."""
        return self.squared_norms.sqrt().float()
