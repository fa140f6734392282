"""Whole decoder blocks removed by block influence (ShortGPT, Men et al. 2024).

With x_t the hidden state entering block i at calibration token t and y_t the one leaving it:

    BI_i = 1 − (1/N) Σ_t  x_tᵀ y_t / (‖x_t‖ ‖y_t‖)        (N: every token of every sequence)

A block that barely turns the residual stream (y ≈ x up to scale) has BI near 0 and goes
first. The scores come from one pass of the dense model (prunekit.llm.engine, one block's
activations in memory); the lowest-scoring blocks are removed together, not re-scored in
between, as in the paper. The config follows: num_hidden_layers, layer_types where the config
lists one per layer (Qwen2), and every kept block's layer_idx (the KV-cache slot) renumbered.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from .engine import check_calibration, decoder_layers, run_blockwise
from .hf_config import block_sizes, layer_type_changes, proposed_config, sync_config, uniform_sizes
from .structure_result import StructuredResult, parameter_count, units_to_remove


def block_influence(model: nn.Module, tokens: torch.Tensor, *, batch_size: int = 8, device="cpu",
                    progress: bool | None = None) -> torch.Tensor:
    """BI of every decoder block (float64 tensor, one entry per block), see the module docstring."""
    _, layers = decoder_layers(model)
    influence = torch.zeros(len(layers), dtype=torch.float64)

    def measure(run):
        cosine_sum, count = 0.0, 0
        for x, y in zip(run.inputs, run.outputs()):
            cosine = F.cosine_similarity(x.double(), y.double(), dim=-1)
            cosine_sum += float(cosine.sum())
            count += cosine.numel()
        influence[run.index] = 1.0 - cosine_sum / count
        return None

    run_blockwise(model, check_calibration(tokens), measure, batch_size=batch_size, device=device,
                  progress=progress, description="block influence")
    return influence


def remove_layers(model: nn.Module, tokens: torch.Tensor, remove: float, *, batch_size: int = 8, device="cpu",
                  progress: bool | None = None) -> StructuredResult:
    """Remove the round(remove · blocks) blocks of lowest influence, in place; result.removed lists them."""
    start = time.perf_counter()
    tokens = check_calibration(tokens)
    path, layers = decoder_layers(model)
    uniform_sizes([block_sizes(block) for block in layers])  # a Llama-style model whose config can follow
    count = units_to_remove(remove, len(layers), "decoder blocks")
    influence = block_influence(model, tokens, batch_size=batch_size, device=device, progress=progress)
    gone = sorted(torch.argsort(influence, stable=True)[:count].tolist())
    kept = [i for i in range(len(layers)) if i not in gone]
    changes = layer_type_changes(model.config, kept)
    proposed_config(model.config, changes)  # validated before the model changes

    before = parameter_count(model)
    parent_path, _, attribute = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attribute, nn.ModuleList([layers[i] for i in kept]))
    for key, value in changes.items():
        setattr(model.config, key, value)
    sync_config(model)  # renumbers layer_idx
    return StructuredResult("layers", "block influence", count, len(layers), before, parameter_count(model),
                            changes, gone, time.perf_counter() - start)


__all__ = ["block_influence", "remove_layers"]
