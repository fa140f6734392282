"""The MNIST-1D lottery-ticket procedure of the public mnist1d notebook, reimplemented.

What differs from prunekit's IMP (prunekit.lottery.imp), each a reason the two disagree:

  * model: a residual MLP, h₁ = relu(L₁x), h = h₁ + relu(L₂h₁), logits = L₃h, hidden 500;
  * masks cover every parameter, biases included, and are chosen per layer (each Linear's
    weight and bias ranked together by |w|), not by one global ranking of weights;
  * schedule: round i prunes to sparsity s_i of a fixed list (the notebook: 100 values
    evenly spaced in [0, 1]); the ranking includes entries already pruned (they are zero,
    so they stay pruned), and every round rewinds to the same initialisation w₀;
  * the next round's mask comes from the weights at step `mask_step` (the notebook keeps
    its last checkpoint, step 1000 of 1501), not the final ones;
  * training: Adam (lr 2e-2, no weight decay), batches of 100 taken in order from the
    *unshuffled* training set, steps 0 … T (T + 1 updates); the test set is evaluated every
    100 steps and the notebook's figures are the *maximum* of those test accuracies (an
    optimistic, test-selected number), reported here next to the final accuracy;
  * the random control draws fresh random scores every round (a uniformly random mask
    with the same per-layer sparsity) on the same w₀.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PrunekitError
from ..masks import named_parameters
from ..modes import evaluation_mode


class ResidualMLP(nn.Module):
    """h₁ = relu(L₁x); h = h₁ + relu(L₂h₁); logits = L₃h."""

    def __init__(self, in_features: int = 40, hidden: int = 500, num_classes: int = 10):
        super().__init__()
        self.linear1 = nn.Linear(in_features, hidden)
        self.linear2 = nn.Linear(hidden, hidden)
        self.linear3 = nn.Linear(hidden, num_classes)

    def forward(self, x):
        h = torch.relu(self.linear1(x.flatten(1)))
        h = h + torch.relu(self.linear2(h))
        return self.linear3(h)


@dataclass(frozen=True)
class NotebookConfig:
    hidden: int = 500
    lr: float = 2e-2
    batch_size: int = 100
    steps: int = 1501            # the last step index: steps + 1 updates
    mask_step: int = 1000        # whose weights rank the next mask
    eval_every: int = 100
    sparsities: tuple = tuple(i / 99 for i in range(100))
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.mask_step <= self.steps:
            raise PrunekitError(f"mask_step must lie in [0, {self.steps}], not {self.mask_step}.")
        if any(not 0 <= s <= 1 for s in self.sparsities) or list(self.sparsities) != sorted(self.sparsities):
            raise PrunekitError("sparsities must be non-decreasing values in [0, 1].")


def layer_groups(model: nn.Module) -> dict[str, list[str]]:
    """{Linear name: [its weight, its bias]}: the units of per-layer ranking."""
    return {name: [f"{name}.{p}" for p, _ in module.named_parameters()]
            for name, module in model.named_modules() if isinstance(module, nn.Linear)}


def layer_masks(scores: dict[str, torch.Tensor], groups: dict[str, list[str]], sparsity: float) -> dict:
    """Per layer, drop the floor(sparsity · n) entries with the lowest score (weight and bias ranked together)."""
    out = {}
    for names in groups.values():
        flat = torch.cat([scores[n].flatten() for n in names])
        drop = int(sparsity * flat.numel())
        keep = torch.ones_like(flat, dtype=torch.bool)
        keep[torch.argsort(flat, stable=True)[:drop]] = False
        start = 0
        for n in names:
            size = scores[n].numel()
            out[n] = keep[start:start + size].reshape(scores[n].shape)
            start += size
    return out


def train_notebook(model: nn.Module, masks: dict, data, config: NotebookConfig) -> dict:
    """Train `model` (its pruned entries zeroed and kept at zero) the notebook's way; returns
    test accuracies every eval_every steps, the final accuracy, and the weights at mask_step."""
    params = named_parameters(model)
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)
    # Pruned entries get zero gradients: Adam then never moves them (its update is 0 for a
    # zero moment), so they stay exactly zero without a parametrization in the loop.
    hooks = [params[n].register_hook(lambda g, m=m: g * m) for n, m in masks.items()]
    optimizer = torch.optim.Adam(model.parameters(), config.lr)
    x, y = data.train.tensors
    x_test, y_test = data.test.tensors
    accuracies, at_mask_step = [], None
    try:
        for step in range(config.steps + 1):
            start = (step * config.batch_size) % len(x)
            loss = F.cross_entropy(model(x[start:start + config.batch_size]), y[start:start + config.batch_size])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step % config.eval_every == 0:
                accuracies.append(_accuracy(model, x_test, y_test))
            if step == config.mask_step:
                at_mask_step = {n: p.detach().clone() for n, p in named_parameters(model).items()}
    finally:
        for hook in hooks:
            hook.remove()
    return {"accuracies": accuracies, "final": _accuracy(model, x_test, y_test), "max": max(accuracies),
            "weights": at_mask_step}


def _accuracy(model, x, y) -> float:
    with evaluation_mode(model), torch.no_grad():
        return (model(x).argmax(-1) == y).float().mean().item()


def notebook_lottery(data, config: NotebookConfig, *, report_at=None, log=print) -> list[dict]:
    """Run the magnitude (ticket) and random procedures; one row per round in `report_at`
    (indices into config.sparsities; all rounds when None)."""
    torch.manual_seed(config.seed)
    init = ResidualMLP(data.input_shape[0], config.hidden, data.num_classes)
    w0 = {n: p.detach().clone() for n, p in named_parameters(init).items()}
    groups = layer_groups(init)
    generator = torch.Generator().manual_seed(config.seed + 10_007)
    report_at = set(range(len(config.sparsities)) if report_at is None else report_at)
    last = {"ticket": w0, "random": w0}
    rows = []
    for i, sparsity in enumerate(config.sparsities):
        if i > max(report_at):
            break
        row = {"round": i, "sparsity": sparsity}
        for variant in ("ticket", "random"):
            scores = ({n: w.abs() for n, w in last[variant].items()} if variant == "ticket"
                      else {n: torch.rand(w.shape, generator=generator) for n, w in w0.items()})
            if variant == "random" and (i not in report_at or sparsity == 0):
                # a random mask depends on no earlier round: train it only where it is reported
                # (at sparsity 0 it is the ticket's run: same weights, no mask)
                row["random final"], row["random max"] = row["ticket final"], row["ticket max"]
                continue
            masks = layer_masks(scores, groups, sparsity)
            model = ResidualMLP(data.input_shape[0], config.hidden, data.num_classes)
            model.load_state_dict(w0)
            result = train_notebook(model, masks, data, config)
            last[variant] = result["weights"]
            row[f"{variant} final"], row[f"{variant} max"] = result["final"], result["max"]
        if i in report_at:
            rows.append(row)
            log(f"[notebook] seed {config.seed} round {i} sparsity {sparsity:.3f}: ticket {row['ticket final']:.3f} "
                f"(max {row['ticket max']:.3f}), random {row['random final']:.3f} (max {row['random max']:.3f})")
        elif i % 10 == 0:  # a long schedule between reported rounds: show it moving
            log(f"[notebook] seed {config.seed} round {i} sparsity {sparsity:.3f}: ticket {row['ticket final']:.3f}")
    return rows
