"""A short train / evaluate / fine-tune loop. Users may bring their own; workflows use this.

Determinism: the batch order comes from a torch.Generator seeded with `config.seed`, so
two runs with the same config see exactly the same batches in the same order (the lottery
ticket experiments rely on this). Masks are parametrizations, so nothing here needs to know
whether the model is pruned.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .errors import PrunekitError
from .modes import evaluation_mode, training_mode

OPTIMIZERS = ("sgd", "adam", "adamw")


@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = "adam"
    lr: float = 1e-2
    steps: int = 6000
    batch_size: int = 100
    weight_decay: float = 0.0
    momentum: float = 0.9  # SGD only
    grad_clip: float | None = None  # max global gradient norm
    seed: int = 0

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise PrunekitError(f"optimizer must be one of {OPTIMIZERS}, not {self.optimizer!r}.")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise PrunekitError(f"lr must be a positive number, not {self.lr!r}.")
        if self.steps < 0 or self.batch_size < 1:
            raise PrunekitError("steps must be ≥ 0 and batch_size ≥ 1.")

    def for_finetuning(self, lr_factor: float = 0.1, steps: int | None = None, seed: int | None = None):
        """The same recipe at lr × lr_factor (1/10 by default, as the lecture notes advise)."""
        if not 0 < lr_factor <= 1:
            raise PrunekitError(f"lr_factor must be in (0, 1], not {lr_factor!r}.")
        return replace(self, lr=self.lr * lr_factor, steps=self.steps if steps is None else steps,
                       seed=self.seed if seed is None else seed)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def batches(dataset, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled mini-batches; a fresh permutation every epoch, drawn from `generator`."""
    x, y = dataset.tensors
    n = len(x)
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            idx = order[start:start + batch_size]
            yield x[idx], y[idx]


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x, y, *, loss_fn=F.cross_entropy,
               grad_clip: float | None = None, step: int = 0) -> float:
    """One update on the batch (x, y): the loss before the update. A non-finite loss stops
    training with a clear error instead of filling the weights with NaN."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    if not torch.isfinite(loss):
        raise PrunekitError(f"Loss became {loss.item()} at step {step}; lower the learning rate.")
    loss.backward()
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss.item()


def train(model: nn.Module, dataset, config: TrainConfig, *, loss_fn=F.cross_entropy,
          optimizer: torch.optim.Optimizer | None = None,
          on_step: Callable[[int, nn.Module], None] | None = None,
          progress: bool | str = True) -> dict:
    """Train for config.steps mini-batches. `on_step(step, model)` runs after every update
    (step counts from 1), e.g. to update masks or save a rewind point. Returns the mean loss
    of the last 100 steps."""
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = optimizer or make_optimizer(model, config)
    stream = batches(dataset, config.batch_size, generator)
    recent: list[float] = []
    desc = progress if isinstance(progress, str) else "train"
    with training_mode(model):
        for step in tqdm(range(1, config.steps + 1), desc=desc, disable=not progress, leave=False):
            x, y = next(stream)
            loss = train_step(model, optimizer, x, y, loss_fn=loss_fn, grad_clip=config.grad_clip, step=step)
            recent = (recent + [loss])[-100:]
            if on_step is not None:
                on_step(step, model)
    return {"train_loss": sum(recent) / len(recent) if recent else float("nan")}


def evaluate(model: nn.Module, dataset, *, loss_fn=F.cross_entropy, batch_size: int = 1000) -> dict:
    """Mean loss and accuracy on `dataset`; the model's mode and gradients are untouched."""
    x, y = dataset.tensors
    total_loss, correct = 0.0, 0
    with evaluation_mode(model), torch.no_grad():
        for start in range(0, len(x), batch_size):
            out = model(x[start:start + batch_size])
            target = y[start:start + batch_size]
            total_loss += loss_fn(out, target, reduction="sum").item()
            correct += (out.argmax(-1) == target).sum().item()
    return {"loss": total_loss / len(x), "accuracy": correct / len(x)}


def finetune(model: nn.Module, dataset, config: TrainConfig, *, lr_factor: float = 0.1, steps: int | None = None,
             **kwargs) -> dict:
    """Train again at a fraction of the original learning rate (masks hold throughout)."""
    return train(model, dataset, config.for_finetuning(lr_factor, steps), **kwargs)
