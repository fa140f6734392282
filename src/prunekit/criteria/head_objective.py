"""What the output-based head criteria (head_taylor, head_ablation) measure a head's effect on:
one vector y_n per example, taken from the model's outputs by `output=`:

    "first"        the first tensor of the outputs (e.g. last_hidden_state), flattened per example
    "mean_pooled"  y_n = Σ_t m_nt h_nt / Σ_t m_nt: the mean of the first output over the tokens
                   the batch's `attention_mask` m keeps (how sentence-transformers pools
                   all-MiniLM-L6-v2); without a mask, the plain mean over tokens
    a callable     output(model_outputs, inputs: prunekit.ExampleInputs) → (batch, …) tensor
"""

from __future__ import annotations

import torch

from ..errors import PrunekitError
from ..nested import ExampleInputs, model_inputs, tensors_in


def first_output(outputs, inputs: ExampleInputs) -> torch.Tensor:
    tensor = next(tensors_in(outputs), None)
    if tensor is None:
        raise PrunekitError("The model returned no tensor; pass output=callable(outputs, inputs) → (batch, …).")
    return tensor.flatten(1)


def mean_pooled(outputs, inputs: ExampleInputs) -> torch.Tensor:
    tokens = next(tensors_in(outputs), None)
    if tokens is None or tokens.dim() != 3:
        raise PrunekitError("output='mean_pooled' needs a (batch, tokens, features) first output, e.g. a "
                            "HuggingFace encoder's last_hidden_state.")
    mask = inputs.kwargs.get("attention_mask")
    if mask is None:
        return tokens.mean(1)
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1e-9)


OUTPUTS = {"first": first_output, "mean_pooled": mean_pooled}


def resolve_output(spec):
    if callable(spec):
        return spec
    if spec not in OUTPUTS:
        raise PrunekitError(f"output must be one of {tuple(OUTPUTS)} or a callable (outputs, inputs) → tensor, "
                            f"not {spec!r}.")
    return OUTPUTS[spec]


def example_outputs(model, batch_inputs, output) -> torch.Tensor:
    """(batch, features) float64: y_n for every example of one batch."""
    call = model_inputs(batch_inputs)
    y = output(call(model), call)
    if not isinstance(y, torch.Tensor) or y.dim() < 1:
        raise PrunekitError("output(outputs, inputs) must return a (batch, …) tensor.")
    return y.reshape(y.shape[0], -1).double()
