"""When to prune: one-shot, iterative (prune → fine-tune rounds) and gradual (cubic) schedules.

Gradual magnitude pruning (Zhu & Gupta 2017) raises the sparsity during training along

    s_t = s_f + (s_i − s_f) · (1 − (t − t₀) / (n·Δt))³      for t₀ ≤ t ≤ t₀ + n·Δt,

with s_t = s_i before t₀ and s_t = s_f after. The masks are recomputed every Δt steps, so
there are n + 1 pruning events (t₀, t₀ + Δt, …, t₀ + nΔt) and the last one prunes to exactly
s_f. `GradualPruning` is an `on_step(step, model)` callback for `prunekit.training.train`.
Already-pruned weights rank below every live weight (see prunekit.prune), so masks only
shrink from one event to the next.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .errors import PrunekitError
from .masks import MaskSet, get_masks, resolve_parameters
from .prune import SCOPES, prune
from .training import TrainConfig, finetune


def _check_sparsity(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value)
                                                                            and 0.0 <= value < 1.0):
        raise PrunekitError(f"{what} must be a fraction in [0, 1), e.g. 0.9 for 90 % pruned, not {value!r}.")
    return float(value)


def cubic_sparsity(step: int, initial: float, final: float, start: int, frequency: int, events: int) -> float:
    """s_t of the cubic schedule at training step `step` (clamped outside [t₀, t₀ + nΔt])."""
    span = frequency * events
    if step <= start:
        return initial
    if step >= start + span:
        return final  # exactly s_f, no rounding error from the cube
    progress = (step - start) / span
    return final + (initial - final) * (1.0 - progress) ** 3


class GradualPruning:
    """Cubic gradual magnitude pruning as a training callback.

        schedule = GradualPruning(final=0.9, start=200, frequency=100, events=10)
        train(model, data.train, config, on_step=schedule)

    At steps t₀ + jΔt (j = 0 … n) the selected weights are pruned to s_t (global or
    per-tensor); `history` lists (step, target, achieved sparsity).
    """

    def __init__(self, final: float, *, initial: float = 0.0, start: int = 0, frequency: int = 100,
                 events: int = 10, scope: str = "global", criterion="magnitude", params=None):
        self.final = _check_sparsity(final, "final sparsity")
        self.initial = _check_sparsity(initial, "initial sparsity")
        if self.initial > self.final:
            raise PrunekitError(f"initial sparsity {initial} exceeds final {final}; masks can only shrink.")
        if start < 0 or frequency < 1 or events < 1:
            raise PrunekitError("start must be ≥ 0, frequency (Δt) ≥ 1 and events (n) ≥ 1.")
        if scope not in SCOPES:
            raise PrunekitError(f"scope must be one of {SCOPES}, not {scope!r}.")
        self.start, self.frequency, self.events = int(start), int(frequency), int(events)
        self.scope, self.criterion, self.params = scope, criterion, params
        self.history: list[tuple[int, float, float]] = []

    @property
    def end(self) -> int:
        """The step of the last pruning event, t₀ + nΔt; train at least this long."""
        return self.start + self.frequency * self.events

    def sparsity_at(self, step: int) -> float:
        return cubic_sparsity(step, self.initial, self.final, self.start, self.frequency, self.events)

    def is_event(self, step: int) -> bool:
        return self.start <= step <= self.end and (step - self.start) % self.frequency == 0

    def __call__(self, step: int, model: nn.Module) -> None:
        if not self.is_event(step):
            return
        target = self.sparsity_at(step)
        masks = prune(model, target, scope=self.scope, criterion=self.criterion, params=self.params)
        self.history.append((step, target, masks.sparsity()))


def iterative_targets(final: float, rounds: int, *, first: float | None = None) -> list[float]:
    """Sparsity targets for `rounds` prune → fine-tune rounds ending at `final`.

    Without `first`, each round removes the same fraction p of the remaining weights
    ((1 − p)^rounds = 1 − final); with `first`, the targets are evenly spaced from `first`
    to `final` (e.g. 0.3, 0.5, 0.7).
    """
    final = _check_sparsity(final, "final sparsity")
    if rounds < 1:
        raise PrunekitError(f"rounds must be ≥ 1, not {rounds!r}.")
    if first is None:
        keep = (1.0 - final) ** (1.0 / rounds)
        targets = [1.0 - keep ** r for r in range(1, rounds + 1)]
    else:
        first = _check_sparsity(first, "first sparsity")
        if first > final:
            raise PrunekitError(f"first sparsity {first} exceeds final {final}.")
        step = (final - first) / (rounds - 1) if rounds > 1 else 0.0
        targets = [first + r * step for r in range(rounds)]
    targets[-1] = final
    return targets


def one_shot(model: nn.Module, sparsity: float, *, dataset=None, config: TrainConfig | None = None,
             lr_factor: float = 0.1, steps: int | None = None, **prune_options) -> MaskSet:
    """Prune once to `sparsity`; fine-tune at lr × lr_factor when a dataset and config are given."""
    masks = prune(model, _check_sparsity(sparsity, "sparsity"), **prune_options)
    if dataset is not None and config is not None:
        finetune(model, dataset, config, lr_factor=lr_factor, steps=steps, progress=False)
    return masks


def iterative(model: nn.Module, targets: Sequence[float], dataset, config: TrainConfig, *,
              lr_factor: float = 0.1, steps: int | None = None, on_round=None, **prune_options) -> list[MaskSet]:
    """Prune → fine-tune for each target in turn (e.g. 0.3 → 0.5 → 0.7); masks only shrink.

    Fine-tuning round r uses seed config.seed + r, at lr × lr_factor (1/10 or 1/100 of the
    original). `on_round(r, model, masks)` runs after each round. Returns the MaskSets.
    """
    targets = [_check_sparsity(t, "target sparsity") for t in targets]
    if any(b < a for a, b in zip(targets, targets[1:])):
        raise PrunekitError(f"targets {targets} must not decrease; masks can only shrink.")
    resolve_parameters(model, prune_options.get("params"))  # validate before the first change
    history = []
    for r, target in enumerate(targets, start=1):
        prune(model, target, **prune_options)
        masks = get_masks(model)  # a copy: the installed mask buffers change in later rounds
        round_config = TrainConfig(**{**config.__dict__, "seed": config.seed + r})
        finetune(model, dataset, round_config, lr_factor=lr_factor, steps=steps, progress=False)
        history.append(masks)
        if on_round is not None:
            on_round(r, model, masks)
    return history


def sparsity_curve(schedule: GradualPruning, steps: int) -> torch.Tensor:
    """s_t for t = 0 … steps (for plots and tests)."""
    return torch.tensor([schedule.sparsity_at(t) for t in range(steps + 1)], dtype=torch.float64)
