"""Brief recovery fine-tuning of a pruned language model on its calibration text.

Next-token cross-entropy on the calibration sequences, AdamW on the masked Linear weights
only (embeddings, norms and the output head stay frozen, so a few hundred sequences cannot
overfit the vocabulary). The masks are parametrizations: pruned weights receive zero
gradient and the forward pass sees exact zeros throughout, so the sparsity holds.
A model without masks — structurally pruned, its units already removed — trains the weights
of every Linear layer of its decoder blocks instead (the same layers, nothing to hold).

With `teacher` (the dense model) the loss is distillation instead: the mean over tokens of
KL(p_teacher ‖ p_student) = Σ_v p_t(v) (log p_t(v) − log p_s(v)) of the next-token
distributions on the same sequences. Cross-entropy pulls the pruned model towards the
calibration text itself (a few hundred licence sequences: it learns their style); the
teacher's full distributions carry what the dense model predicted, on any text.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable

import torch

from ..errors import PrunekitError
from ..masks import get_masks, named_parameters
from ..modes import evaluation_mode, training_mode
from .engine import check_calibration, decoder_layers


MEMORISING_PASSES = 4  # more passes over the calibration sequences than this: warn


def recover(model, tokens: torch.Tensor, *, steps: int = 100, lr: float = 1e-4, batch_size: int = 4, seed: int = 0,
            teacher=None, progress: bool | None = None) -> list[float]:
    """Fine-tune the masked weights for `steps` steps; returns the training losses (cross-entropy,
    or with `teacher` — the dense model, same tokenizer — the distillation KL)."""
    tokens = check_calibration(tokens)
    if tokens.shape[1] < 2:
        raise PrunekitError("Recovery needs sequences of at least 2 tokens to predict a next token.")
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise PrunekitError(f"Recovery needs steps ≥ 1, batch_size ≥ 1 and lr > 0, got {steps}, {batch_size}, {lr}.")
    passes = steps * batch_size / tokens.shape[0]
    if passes > MEMORISING_PASSES:
        warnings.warn(f"Recovery would show each of the {tokens.shape[0]} calibration sequences about {passes:.0f} "
                      "times and can memorise them (SmolLM2-135M, 32 sequences, 100 steps: training loss 3.7 → 0.09, "
                      "held-out perplexity 46 → 77). Give more sequences or fewer steps.", stacklevel=2)
    params = named_parameters(model)
    masked = list(get_masks(model)) or _decoder_linear_weights(model)

    def loss(generator: torch.Generator) -> torch.Tensor:
        batch = tokens[torch.randint(0, tokens.shape[0], (batch_size,), generator=generator)]
        if teacher is None:
            return model(input_ids=batch, labels=batch, use_cache=False).loss
        with torch.no_grad(), evaluation_mode(teacher):
            target = teacher(input_ids=batch, use_cache=False).logits.log_softmax(-1)
        student = model(input_ids=batch, use_cache=False).logits.log_softmax(-1)
        return torch.nn.functional.kl_div(student.flatten(0, 1), target.flatten(0, 1), log_target=True,
                                          reduction="batchmean")

    return optimise(model, [params[name] for name in masked], loss, steps=steps, lr=lr, seed=seed,
                    mode=training_mode, description="recovery", progress=progress)


def _decoder_linear_weights(model) -> list[str]:
    """The weights of every Linear layer inside the decoder blocks (a structurally pruned model)."""
    path, layers = decoder_layers(model)
    return [f"{path}.{index}.{name}.weight" for index, block in enumerate(layers)
            for name, layer in block.named_modules() if isinstance(layer, torch.nn.Linear)]


def optimise(model, trainable: list[torch.nn.Parameter], loss: Callable[[torch.Generator], torch.Tensor], *,
             steps: int, lr: float, seed: int, mode, description: str, progress: bool | None) -> list[float]:
    """`steps` AdamW updates of `trainable` only (every other parameter frozen for the duration)
    on `loss(generator)`, which draws its batch from a generator seeded with `seed`, inside
    `mode(model)` (training_mode / evaluation_mode). The parameters' requires_grad flags are
    restored and their gradients dropped afterwards. Returns the losses."""
    from tqdm.auto import tqdm

    chosen = {id(p) for p in trainable}
    flags = {p: p.requires_grad for p in model.parameters()}
    generator = torch.Generator().manual_seed(seed)
    losses = []
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in chosen)
        optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
        show = sys.stderr.isatty() if progress is None else progress
        with mode(model):
            for _ in tqdm(range(steps), desc=description, disable=not show, leave=False):
                value = loss(generator)
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                optimizer.step()
                losses.append(value.item())
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = None
    return losses
