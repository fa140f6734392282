"""The interface every importance criterion implements.

A criterion turns a model (plus calibration batches and a loss where it needs them) into
*element-wise* scores: one tensor per parameter, the parameter's shape, higher = more
important. Granularities aggregate these over their units; allocators decide how many units
go. A criterion never decides ratios and never changes the model: scoring is pure.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ..errors import PrunekitError


class Criterion(ABC):
    """Base class. Subclasses set `name`, `needs_data`, and implement `scores`."""

    name = "criterion"
    needs_data = False  # True: calibration batches (and a loss) are required
    # Per-channel criteria score one value per unit and broadcast it along this dimension of
    # each parameter (0: output channels / rows, 1: input channels / columns); None when
    # scores vary element by element. Aggregators can use it to read a unit's own slice only.
    unit_dim: int | None = None
    # True: a tensor's scores depend on that tensor alone, so they can be computed one tensor at
    # a time (structured scoring then never holds a full-size score copy of every weight at once).
    local = False

    @abstractmethod
    def scores(self, model: nn.Module, params: Mapping[str, nn.Parameter], *,
               batches: Iterable | None = None, loss_fn=None) -> dict[str, torch.Tensor]:
        """{canonical parameter name: element-wise score tensor of the parameter's shape}."""

    def signed_scores(self, model: nn.Module, params: Mapping[str, nn.Parameter], *,
                      batches: Iterable | None = None, loss_fn=None) -> dict[str, torch.Tensor]:
        """Tensors whose absolute values are the scores, for aggregations that take |s| anyway
        (Σ|s|^p). A criterion whose scores are |x| returns x and saves a full-size pass."""
        return self.scores(model, params, batches=batches, loss_fn=loss_fn)

    def require_data(self, batches, loss_fn=None, needs_loss: bool = True):
        if batches is None:
            raise PrunekitError(f"Criterion '{self.name}' needs calibration data: pass batches=[(x, y), ...] "
                                "(a DataLoader works).")
        if needs_loss and loss_fn is None:
            raise PrunekitError(f"Criterion '{self.name}' needs a loss: pass loss_fn=torch.nn.functional.cross_entropy "
                                "or your own (outputs, targets) → scalar.")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
