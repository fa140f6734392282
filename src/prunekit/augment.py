"""Random data augmentation applied to training batches.

    shift   (MNIST-1D, inputs (B, L)):  x'_i = x_{(i − s) mod L}, s uniform in {−k, …, k} per sample
    rotate  (images, inputs (B, C, H, W)): rotation by θ uniform in [−θ_max, θ_max] degrees about
            the image centre, bilinear, zeros outside the image

Each augmentation is a callable `(x, generator) → x'` that draws its randomness only from
the given torch.Generator, so a training run that seeds the generator per step sees the
same augmented batches every time it is run (or resumed).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import PrunekitError, did_you_mean


class Shift:
    """Random circular shift of 1-D signals by up to `max_shift` positions."""

    def __init__(self, max_shift: int = 5):
        if not isinstance(max_shift, int) or max_shift < 0:
            raise PrunekitError(f"max_shift must be an int ≥ 0, not {max_shift!r}.")
        self.max_shift = max_shift

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if x.dim() != 2:
            raise PrunekitError(f"Shift expects a batch of 1-D signals (B, L), got shape {tuple(x.shape)}.")
        # drawn on the CPU generator, then moved: the same shifts on every device
        shifts = torch.randint(-self.max_shift, self.max_shift + 1, (x.shape[0], 1), generator=generator).to(x.device)
        positions = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
        return torch.gather(x, 1, (positions - shifts) % x.shape[1])


class Rotate:
    """Random rotation of images by up to `max_degrees` either way."""

    def __init__(self, max_degrees: float = 30.0):
        if not (isinstance(max_degrees, (int, float)) and 0 <= max_degrees <= 180):
            raise PrunekitError(f"max_degrees must be in [0, 180], not {max_degrees!r}.")
        self.max_degrees = float(max_degrees)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if x.dim() != 4:
            raise PrunekitError(f"Rotate expects images (B, C, H, W), got shape {tuple(x.shape)}.")
        theta = ((torch.rand(x.shape[0], generator=generator) * 2 - 1) * math.radians(self.max_degrees)).to(x.device)
        cos, sin = theta.cos(), theta.sin()
        zero = torch.zeros_like(theta)
        # affine_grid maps output to input coordinates: rotating the sampling grid by θ
        # rotates the image by −θ, which is equally random.
        matrix = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(matrix.to(x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


AUGMENTATIONS = {"shift": Shift, "rotate": Rotate}


def make_augmentation(name: str | None, strength=None):
    """None → None; 'shift' (strength = max positions) or 'rotate' (strength = max degrees)."""
    if name is None:
        return None
    if name not in AUGMENTATIONS:
        raise PrunekitError(f"Unknown augmentation '{name}'.{did_you_mean(name, AUGMENTATIONS)} "
                            f"Available: {', '.join(AUGMENTATIONS)}.")
    return AUGMENTATIONS[name]() if strength is None else AUGMENTATIONS[name](strength)
