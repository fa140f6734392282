"""A short train / evaluate / fine-tune loop for any data a PyTorch user has.

    pk.train(model, loader, epochs=3)                        # a DataLoader, or a list of (x, y)
    pk.train(model, data.train, TrainConfig(steps=3000))     # a Dataset: shuffled batches drawn here
    pk.finetune(model, loader, epochs=1, device="cuda")      # lr × 0.1; masks hold on any device
    pk.evaluate(model, data.test)                            # {"loss": …, "accuracy": …}

What `data` may be:
  * a map-style torch Dataset (TensorDataset or any `__getitem__` / `__len__` dataset):
    mini-batches of `config.batch_size` are drawn here, a fresh permutation per epoch from a
    torch.Generator seeded with `config.seed` — two runs with the same config see the same
    batches in the same order (the lottery-ticket experiments rely on this). One epoch is
    ⌊n / batch_size⌋ batches (the last partial batch is dropped; at least one batch);
  * any other iterable of batches — a DataLoader, a list of (inputs, targets) pairs: used as
    given, one pass is one epoch, passed over again for further epochs.
A batch is (inputs, targets); inputs may be a tensor, a tuple of tensors (model(*inputs)) or a
dict (model(**inputs)). Batches are moved to `device` (default: where the model's parameters
are); with `device` given the model is moved there first.

Length: `steps` optimizer updates or `epochs` passes (not both); neither → `config.steps`.
`loss_fn(outputs, targets)` returns the batch mean (cross-entropy by default);
`metric(outputs, targets)` returns a batch mean too (accuracy for evaluate, none for train).
Masks are parametrizations whose buffers move with the model, so nothing here needs to know
whether the model is pruned, nor on which device it is.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset
from torch.utils.data import default_collate
from tqdm.auto import tqdm

from .errors import PrunekitError
from .modes import evaluation_mode, training_mode

OPTIMIZERS = ("sgd", "adam", "adamw")
RECENT = 100  # train() reports the mean loss (and metric) over this many last steps


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
    # The fused kernels take about half the time of the per-tensor loop on a CPU (same update rule).
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params) or None
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused)


# Where batches come from ----------------------------------------------------------------

def _check_data(data) -> None:
    """Refuse what cannot be a source of batches, saying what to pass instead."""
    if hasattr(data, "train") and hasattr(data, "test") and not isinstance(data, (Dataset, DataLoader)):
        raise PrunekitError("Got a dataset with train and test splits; pass one split, e.g. data.train.")
    if isinstance(data, IterableDataset):
        raise PrunekitError("An IterableDataset yields single samples; wrap it in a DataLoader(dataset, "
                            "batch_size=…) so that batches come out of it.")
    if not _is_sampled(data) and (isinstance(data, torch.Tensor) or not isinstance(data, Iterable)):
        raise PrunekitError(f"data must be a Dataset, a DataLoader or a list of (inputs, targets) batches, "
                            f"not {type(data).__name__}. For tensors x, y use TensorDataset(x, y) or [(x, y)].")


def _is_sampled(data) -> bool:
    """True for a map-style Dataset, whose batches the loop draws itself."""
    return isinstance(data, Dataset) and not isinstance(data, IterableDataset)


def _epoch_length(data, batch_size: int) -> int | None:
    """Batches per epoch, or None when an iterable does not know its length."""
    if _is_sampled(data):
        return max(1, len(data) // batch_size)
    try:
        return len(data)
    except TypeError:
        return None


def batches(dataset, batch_size: int, generator: torch.Generator) -> Iterator:
    """Endless shuffled mini-batches of a map-style dataset; a fresh permutation every epoch,
    drawn from `generator`. A TensorDataset is indexed as whole tensors (fast); any other
    dataset item by item, collated with torch's default_collate."""
    n = len(dataset)
    tensors = dataset.tensors if isinstance(dataset, TensorDataset) else None
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            idx = order[start:start + batch_size]
            if tensors is not None:
                yield tuple(t[idx] for t in tensors)
            else:
                yield default_collate([dataset[int(i)] for i in idx])


def _passes(data) -> Iterator:
    """An iterable of batches, passed over again and again (one pass = one epoch)."""
    while True:
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty:
            raise PrunekitError("data yielded no batch. A generator can be iterated only once: "
                                "pass a list or a DataLoader instead.")


def _stream(data, config: TrainConfig) -> Iterator:
    if _is_sampled(data):
        return batches(data, config.batch_size, torch.Generator().manual_seed(config.seed))
    return _passes(data)


def _split(batch) -> tuple:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise PrunekitError(f"Each batch must be a pair (inputs, targets); got {type(batch).__name__}"
                        f"{' of length ' + str(len(batch)) if isinstance(batch, (tuple, list)) else ''}.")


def _to(obj, device):
    """Tensors inside nested tuples / lists / dicts moved to `device` (no copy when already there)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(item, device) for item in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def _forward(model: nn.Module, inputs):
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters (else buffers) live; CPU for a model with neither."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def resolve_device(device) -> torch.device:
    """'cpu', 'cuda', 'cuda:1', 'mps' or 'auto' (a GPU when there is one, else the CPU) as a
    torch.device; None is the CPU. A device this machine does not have is refused here, with
    what to pass instead, rather than deep inside the first forward pass."""
    if device is None or device == "auto":
        if device == "auto" and torch.cuda.is_available():
            return torch.device("cuda")
        if device == "auto" and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise PrunekitError(f"Unknown device {device!r}; use 'cpu', 'cuda', 'cuda:1', 'mps' or 'auto'.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PrunekitError(f"device {str(device)!r} but no CUDA GPU is available here; use 'auto' to fall back "
                            "to the CPU, or 'cpu'.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise PrunekitError(f"device {str(device)!r} but this machine has {torch.cuda.device_count()} CUDA "
                            f"device(s); use 'cuda:0' … or 'auto'.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise PrunekitError("device 'mps' but Apple's Metal backend is not available here; use 'auto' or 'cpu'.")
    if device.type not in ("cpu", "cuda", "mps"):
        raise PrunekitError(f"device {str(device)!r} is not supported; use 'cpu', 'cuda', 'mps' or 'auto'.")
    return device


def _place(model: nn.Module, device) -> torch.device:
    if device is None:
        return model_device(model)
    model.to(device)
    return torch.device(device)


# The loop ---------------------------------------------------------------------------------

def _update(model: nn.Module, optimizer: torch.optim.Optimizer, inputs, targets, loss_fn, grad_clip, step: int):
    """One optimizer update; (loss before the update, the outputs)."""
    optimizer.zero_grad(set_to_none=True)
    outputs = _forward(model, inputs)
    loss = loss_fn(outputs, targets)
    if not torch.isfinite(loss):
        raise PrunekitError(f"Loss became {loss.item()} at step {step}; lower the learning rate.")
    loss.backward()
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss.item(), outputs


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x, y, *, loss_fn=F.cross_entropy,
               grad_clip: float | None = None, step: int = 0) -> float:
    """One update on the batch (x, y): the loss before the update. A non-finite loss stops
    training with a clear error instead of filling the weights with NaN."""
    return _update(model, optimizer, x, y, loss_fn, grad_clip, step)[0]


def _metric_name(metric: Callable) -> str:
    name = getattr(metric, "__name__", "")
    return name if name.isidentifier() else "metric"


def _length(data, config: TrainConfig, epochs: int | None, steps: int | None) -> int:
    """Total optimizer updates for `epochs` or `steps` (else config.steps)."""
    if epochs is not None and steps is not None:
        raise PrunekitError("Give epochs or steps, not both.")
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise PrunekitError(f"steps must be an integer ≥ 0, not {steps!r}.")
        return steps
    if epochs is None:
        return config.steps
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise PrunekitError(f"epochs must be an integer ≥ 0, not {epochs!r}.")
    per_epoch = _epoch_length(data, config.batch_size)
    if per_epoch is None:
        raise PrunekitError(f"{type(data).__name__} has no length, so an epoch is unknown; give steps instead.")
    return epochs * per_epoch


def train(model: nn.Module, data, config: TrainConfig | None = None, *, epochs: int | None = None,
          steps: int | None = None, device=None, loss_fn=F.cross_entropy, metric: Callable | None = None,
          optimizer: torch.optim.Optimizer | None = None, on_step: Callable[[int, nn.Module], None] | None = None,
          progress: bool | str = True) -> dict:
    """Train for `epochs` passes or `steps` updates (default: config.steps) on `data`.

    `on_step(step, model)` runs after every update (step counts from 1), e.g. to update masks
    or save a rewind point. Returns train_loss (the mean over the last 100 steps), with
    train_<metric> beside it when a metric is given, and the number of steps and epochs run.
    """
    config = config if config is not None else TrainConfig()
    _check_data(data)
    total = _length(data, config, epochs, steps)
    device = _place(model, device)
    optimizer = optimizer or make_optimizer(model, config)
    stream = _stream(data, config)
    losses: list[float] = []
    scores: list[float] = []
    desc = progress if isinstance(progress, str) else "train"
    with training_mode(model):
        for step in tqdm(range(1, total + 1), desc=desc, disable=not progress, leave=False):
            inputs, targets = _to(_split(next(stream)), device)
            loss, outputs = _update(model, optimizer, inputs, targets, loss_fn, config.grad_clip, step)
            losses = (losses + [loss])[-RECENT:]
            if metric is not None:
                with torch.no_grad():
                    scores = (scores + [float(metric(outputs.detach(), targets))])[-RECENT:]
            if on_step is not None:
                on_step(step, model)
    result = {"train_loss": sum(losses) / len(losses) if losses else float("nan"), "steps": total}
    per_epoch = _epoch_length(data, config.batch_size)
    if per_epoch:
        result["epochs"] = total / per_epoch
    if metric is not None:
        result[f"train_{_metric_name(metric)}"] = sum(scores) / len(scores) if scores else float("nan")
    return result


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose largest output is the target class."""
    return (outputs.argmax(-1) == targets).float().mean()


def _evaluation_batches(data, batch_size: int) -> Iterable:
    if isinstance(data, TensorDataset):  # slices, no per-item indexing
        n = len(data)
        return (tuple(t[start:start + batch_size] for t in data.tensors) for start in range(0, n, batch_size))
    if _is_sampled(data):
        return DataLoader(data, batch_size=batch_size, shuffle=False)
    return data


def evaluate(model: nn.Module, data, *, loss_fn=F.cross_entropy, metric: Callable | None = accuracy,
             batch_size: int = 1000, device=None) -> dict:
    """Mean loss and metric (accuracy by default) over every example of `data`, batch means
    weighted by batch size. The key of the metric is its function's name ("metric" for a
    lambda). The model's train/eval mode and gradients are untouched."""
    _check_data(data)
    device = _place(model, device)
    totals = {"loss": 0.0}
    name = _metric_name(metric) if metric is not None else None
    if name is not None:
        totals[name] = 0.0
    count = 0
    with evaluation_mode(model), torch.no_grad():
        for batch in _evaluation_batches(data, batch_size):
            inputs, targets = _to(_split(batch), device)
            outputs = _forward(model, inputs)
            n = len(targets)
            totals["loss"] += float(loss_fn(outputs, targets)) * n
            if name is not None:
                totals[name] += float(metric(outputs, targets)) * n
            count += n
    if count == 0:
        raise PrunekitError("Nothing to evaluate: data yielded no examples.")
    return {key: value / count for key, value in totals.items()}


def fastest_threads(model: nn.Module, data, config: TrainConfig | None = None, *, candidates=None,
                    steps: int = 3, rounds: int = 3, loss_fn=F.cross_entropy) -> tuple[int, dict[int, float]]:
    """The intra-op thread count that trains `model` fastest on this machine, measured.

    Times `steps` training steps on one batch of `data` with each candidate count (default
    1, 2, 4 up to the logical cores), `rounds` times in turn, so that load from other processes
    hits every candidate alike; returns (fastest count, {count: median seconds per step}).
    Small models are often fastest on one thread: their operations are too short to share,
    and more threads mostly wait for each other or for the cores other processes hold.
    A copy of the model is timed: the model and the thread setting are left as they were.
    """
    config = config if config is not None else TrainConfig()
    cores = os.cpu_count() or 1
    candidates = list(candidates) if candidates is not None else [n for n in (1, 2, 4) if n <= cores]
    if not candidates or any(not isinstance(n, int) or n < 1 for n in candidates):
        raise PrunekitError(f"candidates must be thread counts ≥ 1, not {candidates!r}.")
    _check_data(data)
    probe = copy.deepcopy(model)
    inputs, targets = _to(_split(next(_stream(data, config))), model_device(probe))
    optimizer = make_optimizer(probe, config)
    times: dict[int, list[float]] = {n: [] for n in candidates}
    before = torch.get_num_threads()
    try:
        with training_mode(probe):
            for _ in range(rounds):
                for n in candidates:
                    torch.set_num_threads(n)
                    _update(probe, optimizer, inputs, targets, loss_fn, None, 0)  # warm-up at this count
                    start = time.perf_counter()
                    for _ in range(steps):
                        _update(probe, optimizer, inputs, targets, loss_fn, None, 0)
                    times[n].append((time.perf_counter() - start) / steps)
    finally:
        torch.set_num_threads(before)
    medians = {n: statistics.median(t) for n, t in times.items()}
    return min(medians, key=medians.get), medians


def finetune(model: nn.Module, data, config: TrainConfig | None = None, *, lr_factor: float = 0.1,
             steps: int | None = None, epochs: int | None = None, **kwargs) -> dict:
    """Train again at a fraction of the original learning rate (masks hold throughout).
    Without a config, a tenth of TrainConfig()'s learning rate."""
    config = (config if config is not None else TrainConfig()).for_finetuning(lr_factor)
    return train(model, data, config, epochs=epochs, steps=steps, **kwargs)
