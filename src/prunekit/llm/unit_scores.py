"""Calibration-aware scores of structured units (GQA head groups, FFN channels) of a decoder.

A unit u owns slices of several Linear weights — a head group: its rows of q_proj, k_proj,
v_proj and its columns of o_proj; an FFN channel: its rows of gate_proj and up_proj and its
column of down_proj; a channel of the residual width: its q/k/v/gate/up columns and o_proj /
down_proj rows in every block, summed over the blocks (the dependency graph lists them). With X
the calibration inputs of the Linear layer that holds W (tokens × in_features):

    wanda:      s_u = Σ_{W_ij ∈ u} |W_ij| · ‖X_j‖₂     (Wanda's element score, summed over the unit)
    wanda-out:  the same sum over the unit's output-side columns only (o_proj / down_proj)
    magnitude:  s_u = Σ_{W_ij ∈ u} |W_ij|
    activation: s_u = Σ ‖X_j‖₂ over the inputs that carry the unit, each distinct input once
                (a head's or FFN channel's own activation at o_proj / down_proj; for a channel of
                the residual width, the normalised hidden state read by q/k/v and by gate/up in
                every block — Minitron's activation importance, no weights)

For the output-side slice (o_proj / down_proj columns) ‖X_j‖ is the norm of the unit's own
activation, so a head or channel that is rarely active scores low even with large weights;
on the input side every unit of a block sees the same ‖X_j‖ (the block's normalised hidden
state), so there the score is mostly |W| weighted by the outlier channels. "wanda-out" keeps
only the part that measures the unit's own activity.
The activation norms come from the dense model, block by block (prunekit.llm.engine), so the
memory beyond the model is one block's calibration activations.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import PrunekitError
from ..graph import DependencyGraph
from ..structured import group_scores
from .engine import run_blockwise

CRITERIA = ("wanda", "wanda-out", "magnitude", "activation")
# Units are scored by their activations alone by default: on SmolLM2-135M (benchmarks/
# llm_structured.py, perplexity, dense 24.2) "activation" against "wanda" gave one KV group of
# three 39.4 against 612; the residual width at 10 % of the parameters 46.5 against 119.5; FFN
# channels at 10 / 20 / 30 % 28.9 / 43.2 / 134 against 31.2 / 51.4 / 123.
DEFAULT_CRITERION = "activation"


def unit_scores(model: nn.Module, graph: DependencyGraph, block_groups: list[str], tokens: torch.Tensor, *,
                criterion: str = DEFAULT_CRITERION, layers_path: str, batch_size: int = 8, device="cpu",
                progress: bool | None = None) -> dict[str, torch.Tensor]:
    """{group name: Tensor[units]} for the group of each decoder block (block_groups[i] lies in block i;
    a group listed for several blocks — the residual width — gets the sum of its blocks' scores)."""
    if criterion not in CRITERIA:
        raise PrunekitError(f"Unknown structured criterion {criterion!r}; choose one of {', '.join(CRITERIA)}.")
    scores: dict[str, torch.Tensor] = {}

    def score_block(index: int, block: nn.Module, stats) -> None:
        group = graph[block_groups[index]]
        prefix = f"{layers_path}.{index}."
        element, inputs_seen = {}, set()
        for s in group.slices:
            if s.kind != "param" or not s.name.startswith(prefix) or (criterion in ("wanda-out", "activation")
                                                                     and s.dim != 1):
                continue
            layer_name, _, tensor = s.name[len(prefix):].rpartition(".")
            layer = block.get_submodule(layer_name)
            if not isinstance(layer, nn.Linear):
                continue  # the width's norm scales: a unit's Linear weights score it
            weight = layer.get_parameter(tensor).detach().abs().float()
            if criterion == "activation":
                if tensor != "weight" or id(stats[layer_name]) in inputs_seen:
                    continue  # q/k/v (gate/up) read one input: counted once
                inputs_seen.add(id(stats[layer_name]))
                weight = torch.zeros_like(weight)
                weight[0] = stats[layer_name].norms.to(weight.device)  # one ‖X_j‖ per column: summed as is
            elif stats is not None and tensor == "weight":
                weight = weight * stats[layer_name].norms.to(weight.device)
            element[s.name] = weight
        for name, score in group_scores(model, graph, element, how="l1", groups=[group]).items():
            scores[name] = scores[name] + score if name in scores else score  # the width: summed over blocks

    if criterion == "magnitude":  # no activations needed
        for index, block in enumerate(model.get_submodule(layers_path)):
            score_block(index, block, None)
        return scores

    def score_run(run):
        score_block(run.index, run.block, run.input_statistics(gram=False))
        return None  # the dense block propagates: every block is scored on the dense model's activations

    run_blockwise(model, tokens, score_run, batch_size=batch_size, device=device, progress=progress,
                  description="wanda scores")
    return scores

__all__ = ["CRITERIA", "unit_scores"]
