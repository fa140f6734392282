"""Brief recovery fine-tuning of a masked language model on its calibration text.

Next-token cross-entropy on the calibration sequences, AdamW on the masked Linear weights
only (embeddings, norms and the output head stay frozen, so a few hundred sequences cannot
overfit the vocabulary). The masks are parametrizations: pruned weights receive zero
gradient and the forward pass sees exact zeros throughout, so the sparsity holds.
"""

from __future__ import annotations

import sys

import torch

from ..errors import PrunekitError
from ..masks import get_masks, named_parameters
from ..modes import training_mode
from .engine import check_calibration


def recover(model, tokens: torch.Tensor, *, steps: int = 100, lr: float = 1e-4, batch_size: int = 4, seed: int = 0,
            progress: bool | None = None) -> list[float]:
    """Fine-tune the masked weights for `steps` steps; returns the training losses."""
    from tqdm.auto import tqdm

    tokens = check_calibration(tokens)
    if tokens.shape[1] < 2:
        raise PrunekitError("Recovery needs sequences of at least 2 tokens to predict a next token.")
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise PrunekitError(f"Recovery needs steps ≥ 1, batch_size ≥ 1 and lr > 0, got {steps}, {batch_size}, {lr}.")
    masked = list(get_masks(model))
    if not masked:
        raise PrunekitError("The model carries no prunekit masks; prune it first (prune_oneshot).")
    params = named_parameters(model)
    trainable = [params[name] for name in masked]
    flags = {p: p.requires_grad for p in model.parameters()}
    generator = torch.Generator().manual_seed(seed)
    losses = []
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in trainable:
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
        show = sys.stderr.isatty() if progress is None else progress
        with training_mode(model):
            for _ in tqdm(range(steps), desc="recovery", disable=not show, leave=False):
                batch = tokens[torch.randint(0, tokens.shape[0], (batch_size,), generator=generator)]
                loss = model(input_ids=batch, labels=batch, use_cache=False).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = None
    return losses
