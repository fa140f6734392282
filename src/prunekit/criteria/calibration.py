"""What data-driven criteria share: calibration batches, a loss as a function of the selected
parameters, and a guarantee that scoring leaves the model exactly as it was.

The loss is evaluated with torch.func.functional_call on *detached copies* of the selected
parameters, so gradients never land in `.grad`, `requires_grad` flags are never touched and
frozen parameters can be scored too. For a masked parameter the copy replaces the dense
tensor under the mask (``…parametrizations.weight.original``), so the forward pass still sees
w ⊙ m and ∂L/∂w = m ⊙ ∂L/∂(w ⊙ m): pruned entries get zero gradient.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call

from ..errors import PrunekitError
from ..masks import canonical_name
from ..modes import evaluation_mode, training_mode
from ..nested import ExampleInputs, model_inputs

MODES = ("eval", "train")


def batch_list(batches, who: str, max_batches: int | None = None, targets: bool = True) -> list[tuple]:
    """A reusable list of (inputs, targets) batches from a list, a DataLoader, an iterator or a
    single (x, y) pair of tensors. Iterators without a length are read up to `max_batches`.
    With targets=False bare inputs are accepted too (as (x,) tuples): a tensor, a dict of keyword
    inputs (a tokenizer's output) or an ExampleInputs."""
    if batches is None:
        raise PrunekitError(f"Criterion '{who}' needs calibration data: pass batches=[(x, y), ...] "
                            "(a DataLoader works).")
    if isinstance(batches, tuple) and len(batches) == 2 and all(isinstance(t, torch.Tensor) for t in batches):
        batches = [batches]
    if isinstance(batches, torch.Tensor):
        raise PrunekitError(f"Criterion '{who}' got a bare tensor as batches; pass [(x, y)] (targets included).")
    if hasattr(batches, "__len__"):
        out = list(itertools.islice(batches, max_batches) if max_batches else batches)
    elif max_batches:
        out = list(itertools.islice(batches, max_batches))
    else:
        raise PrunekitError(f"Criterion '{who}' got an iterator without a length; pass a list of batches or set "
                            "max_batches so it knows where to stop.")
    if not out:
        raise PrunekitError(f"Criterion '{who}' got no calibration batches; pass at least one (x, y).")
    if not targets:
        out = [(b,) if isinstance(b, (torch.Tensor, dict, ExampleInputs)) else b for b in out]
    for i, b in enumerate(out):
        if not isinstance(b, (tuple, list)) or len(b) < (2 if targets else 1):
            raise PrunekitError(f"Criterion '{who}': every batch must be an (inputs, targets) pair.")
        if isinstance(b[0], torch.Tensor) and (b[0].dim() == 0 or b[0].shape[0] == 0):
            raise PrunekitError(f"Criterion '{who}': calibration batch {i} holds no samples (inputs of shape "
                                f"{tuple(b[0].shape)}); every batch needs at least one example.")
    return out


def require_loss(loss_fn, who: str):
    if loss_fn is None:
        raise PrunekitError(f"Criterion '{who}' needs a loss: pass loss_fn=torch.nn.functional.cross_entropy "
                            "or your own (outputs, targets) → scalar.")
    if not callable(loss_fn):
        raise PrunekitError(f"loss_fn must be callable (outputs, targets) → scalar, not {type(loss_fn).__name__}.")
    return loss_fn


def raw_names(model: nn.Module) -> dict[str, str]:
    """canonical parameter name → the name functional_call must use (the masked original)."""
    return {canonical_name(n): n for n, _ in model.named_parameters()}


@contextmanager
def pure(model: nn.Module, mode: str = "eval"):
    """Run scoring in `mode`; afterwards restore every module's train flag, every buffer
    (BN running statistics move in train mode) and every parameter's `.grad` reference."""
    if mode not in MODES:
        raise PrunekitError(f"mode must be one of {MODES}, not {mode!r}.")
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    grads = {n: p.grad for n, p in model.named_parameters()}
    context = evaluation_mode if mode == "eval" else training_mode
    try:
        with context(model):
            yield model
    finally:
        with torch.no_grad():
            for n, b in model.named_buffers():
                if n in buffers:
                    b.copy_(buffers[n])
        for n, p in model.named_parameters():
            p.grad = grads.get(n)


class LossOfParams:
    """f(tensors) = loss_fn(model(x; θ_selected = tensors), y) for one batch (x, y); x may be a dict of
    keyword inputs or an ExampleInputs (prunekit.nested.model_inputs)."""

    def __init__(self, model: nn.Module, names: list[str], loss_fn, batch):
        raw = raw_names(model)
        self.model, self.keys, self.loss_fn = model, [raw[n] for n in names], loss_fn
        self.x, self.y = batch[0], batch[1]

    def outputs(self, tensors):
        call = model_inputs(self.x)
        return functional_call(self.model, dict(zip(self.keys, tensors)), call.args, call.kwargs)

    def __call__(self, tensors):
        loss = self.loss_fn(self.outputs(tensors), self.y)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise PrunekitError("loss_fn must return a scalar tensor (use reduction='mean' or 'sum').")
        return loss.reshape(())


def dense_values(params: Mapping[str, nn.Parameter]) -> list[torch.Tensor]:
    return [p.detach() for p in params.values()]


def per_channel(values: torch.Tensor, like: torch.Tensor, dim: int, name: str) -> torch.Tensor:
    """Broadcast one value per channel (along `dim` of `like`) over the whole parameter."""
    if like.dim() <= dim or like.shape[dim] != values.numel():
        raise PrunekitError(f"'{name}' has shape {tuple(like.shape)}; a per-channel score of {values.numel()} "
                            f"channels does not fit its dimension {dim}.")
    shape = [1] * like.dim()
    shape[dim] = -1
    return values.reshape(shape).to(like.dtype).expand_as(like).clone()

