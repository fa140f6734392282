"""Weight sharing (Deep Compression, Han et al. 2016): every kept weight of a layer becomes
one of k = 2^bits shared values, then the shared values are trained.

Clustering: one-dimensional k-means over the layer's non-zero weights, centroids initialised
linearly over [min w, max w] (the initialisation Han et al. found best: it keeps the rare
large weights represented), then Lloyd iterations — assign each weight to its nearest
centroid, move each centroid to the mean of its weights — until no assignment changes.

Fine-tuning: the layer computes W = C[I] (codebook C, index I per weight; pruned weights read
a constant 0), so back-propagation gives each centroid the sum of its weights' gradients,
∂L/∂C_k = Σ_{i: I_i = k} ∂L/∂W_i, and only the codebooks (and the parameters that are not
shared, e.g. biases) train. Pruned weights stay exactly zero: masks hold.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import PrunekitError
from ..masks import default_prunable, get_masks, named_parameters
from ..training import TrainConfig, train
from .common import plain_copy


def kmeans_1d(values: torch.Tensor, k: int, *, max_iterations: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """(centroids (k,), assignment per value) of Lloyd's k-means on 1-D values with linear initialisation.

    Computed in float64; clusters that lose all their values keep their centroid."""
    if k < 1 or values.numel() == 0:
        raise PrunekitError(f"k-means needs k ≥ 1 and at least one value (got k={k}, {values.numel()} values).")
    x = values.detach().reshape(-1).double()
    centroids = torch.linspace(float(x.min()), float(x.max()), k, dtype=torch.float64)
    assignment = None
    for _ in range(max_iterations):
        # Centroids stay sorted under Lloyd's update in 1-D; nearest = the interval between midpoints.
        centroids = centroids.sort().values
        new = torch.bucketize(x, (centroids[1:] + centroids[:-1]) / 2)
        if assignment is not None and torch.equal(new, assignment):
            break
        assignment = new
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, assignment, x)
        sizes = torch.bincount(assignment, minlength=k)
        centroids = torch.where(sizes > 0, sums / sizes.clamp(min=1), centroids)
    return centroids, assignment


class SharedWeight(nn.Module):
    """Parametrization W = table[index] with table = (codebook, 0): index k points at the constant 0."""

    def __init__(self, codebook: torch.Tensor, index: torch.Tensor):
        super().__init__()
        self.codebook = nn.Parameter(codebook)
        self.register_buffer("index", index)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.codebook, self.codebook.new_zeros(1)])[self.index]


def default_bits(shape) -> int:
    """Han et al.'s defaults: 8 bits for convolution kernels, 5 for fully connected weights."""
    return 8 if len(shape) > 2 else 5


def share_weights(model: nn.Module, bits: int | Mapping[str, int] | None = None, params=None) -> nn.Module:
    """A copy of `model` whose selected weights are shared (k-means) and whose codebooks train.

    `bits`: an int for every weight, a {parameter name: bits} mapping, or None for
    default_bits (8 conv / 5 fully connected). `params`: the weights to share (default: the
    masked ones, or every weight matrix / kernel if there are no masks). Every other
    parameter is frozen only if it is a shared weight's dense original; biases keep training.
    Finish with `bake_shared` to get plain weights. `model` is not changed.
    """
    names = list(params) if params is not None else (list(get_masks(model)) or default_prunable(model))
    available = named_parameters(model)
    for name in names:
        if name not in available:
            raise PrunekitError(f"Model has no parameter '{name}' to share.")
        b = bits.get(name) if isinstance(bits, Mapping) else bits
        if b is not None and not (isinstance(b, int) and 1 <= b <= 16):
            raise PrunekitError(f"bits for '{name}' must be an integer in [1, 16], not {b!r}.")
    shared = plain_copy(model)
    for name in names:
        module_name, _, tensor = name.rpartition(".")
        module = shared.get_submodule(module_name) if module_name else shared
        weight = getattr(module, tensor).detach()
        b = bits.get(name) if isinstance(bits, Mapping) else bits
        k = 2 ** (b if b is not None else default_bits(weight.shape))
        kept = weight != 0
        if not kept.any():
            continue  # an all-zero tensor has nothing to share
        centroids, assignment = kmeans_1d(weight[kept], k)
        index = torch.full(weight.shape, k, dtype=torch.long, device=weight.device)
        index[kept] = assignment.to(weight.device)
        parametrize.register_parametrization(
            module, tensor, SharedWeight(centroids.to(weight.dtype).to(weight.device), index), unsafe=True)
        module.parametrizations[tensor].original.requires_grad_(False)
    return shared


def bake_shared(model: nn.Module) -> nn.Module:
    """Replace every SharedWeight parametrization by its plain value C[I], in place; returns `model`."""
    for module in list(model.modules()):
        if not parametrize.is_parametrized(module):
            continue
        for tensor in list(module.parametrizations):
            if any(isinstance(p, SharedWeight) for p in module.parametrizations[tensor]):
                parametrize.remove_parametrizations(module, tensor, leave_parametrized=True)
                getattr(module, tensor).requires_grad_(True)
    return model


def deep_compress(model: nn.Module, train_data=None, config: TrainConfig | None = None, *,
                  bits: int | Mapping[str, int] | None = None, params=None, progress: bool = False) -> nn.Module:
    """Weight sharing with centroid fine-tuning: the quantisation stage of Deep Compression.

    `model` should already be pruned (and fine-tuned). The selected weights are clustered
    (share_weights), then, given `train_data` (a TensorDataset), the codebooks and unshared
    parameters train for `config.steps` steps with `config` as given (pass e.g.
    `config.for_finetuning()`). Returns a plain model (masks baked) whose every shared layer
    holds at most 2^bits distinct non-zero values — ready for write_deep_compressed.
    """
    shared = share_weights(model, bits, params)
    if train_data is not None and config is not None and config.steps > 0:
        train(shared, train_data, config, progress="centroids" if progress else False)
    return bake_shared(shared)
