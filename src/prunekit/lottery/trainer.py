"""Training from iteration `start` to `config.steps` with the dense run's data order.

The batch stream is the one `prunekit.training.train` draws (a torch.Generator seeded with
config.seed, a fresh permutation per epoch); a ticket rewound to iteration k skips the
first k batches, so it sees batches k+1 … T exactly as the dense run did. With start=0, no
augmentation and no validation this loop is bit-for-bit `prunekit.training.train` (tested).

A masked model is trained with its masks lifted for speed (the parametrization costs about a
third of a small MLP's step): the pruned entries are already exactly zero and their
gradients are zeroed by a hook, so SGD, Adam and AdamW leave them at zero, every kept
entry sees the same arithmetic, and the masks are reinstalled at the end (tested equal to
training through the parametrization, bit for bit).

Every `eval_every` steps (and at the last step) the validation loss is measured; the
early-stopping iteration is the step with the minimum validation loss.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import PrunekitError
from ..masks import apply_masks, get_masks, named_parameters, remove_masks
from ..modes import training_mode
from ..training import TrainConfig, batches, evaluate, make_optimizer, train_step

AUGMENT_SEED = 1_000_003  # decorrelates the augmentation stream from the batch order


def train_segment(model: nn.Module, dataset, config: TrainConfig, *, start: int = 0, validation=None,
                  test=None, eval_every: int = 100, augment=None, on_step=None) -> dict:
    """Train steps start+1 … config.steps. Returns train_loss, es_step, es_val_loss,
    es_accuracy (test accuracy at es_step, when `test` is given) and the evaluation log."""
    if not 0 <= start <= config.steps:
        raise PrunekitError(f"start iteration {start} is outside [0, {config.steps}].")
    generator = torch.Generator().manual_seed(config.seed)
    stream = batches(dataset, config.batch_size, generator)
    for _ in range(start):  # the dense run's first `start` batches
        next(stream)
    masks = get_masks(model)
    remove_masks(model)
    params = named_parameters(model)
    hooks = [params[name].register_hook(lambda g, m=mask: torch.where(m, g, g.new_zeros(())))
             for name, mask in masks.items()]
    try:
        return _loop(model, dataset, config, stream, start, validation, test, eval_every, augment, on_step)
    finally:
        for hook in hooks:
            hook.remove()
        if len(masks):
            apply_masks(model, masks)


def _loop(model, dataset, config, stream, start, validation, test, eval_every, augment, on_step) -> dict:
    optimizer = make_optimizer(model, config)
    recent: list[float] = []
    log: list[dict] = []
    with training_mode(model):
        for step in range(start + 1, config.steps + 1):
            x, y = next(stream)
            if augment is not None:
                x = augment(x, torch.Generator().manual_seed(config.seed * AUGMENT_SEED + step))
            loss = train_step(model, optimizer, x, y, grad_clip=config.grad_clip, step=step)
            recent = (recent + [loss])[-100:]
            if on_step is not None:
                on_step(step, model)
            if validation is not None and (step % eval_every == 0 or step == config.steps):
                entry = {"step": step, "val_loss": evaluate(model, validation)["loss"]}
                if test is not None:
                    entry["test_accuracy"] = evaluate(model, test)["accuracy"]
                log.append(entry)
    out = {"train_loss": sum(recent) / len(recent) if recent else float("nan"), "log": log}
    if log:
        best = min(log, key=lambda e: e["val_loss"])  # first minimum on ties
        out.update(es_step=best["step"], es_val_loss=best["val_loss"], es_accuracy=best.get("test_accuracy"))
    return out
