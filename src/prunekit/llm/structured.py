"""Structured pruning of a transformers decoder LM: GQA head groups, FFN channels or the residual
width, removed physically, with a config that `save_pretrained` / `from_pretrained` round-trips.

    result = prune_structure(model, tokens, "heads", remove=1/3)    # or "ffn", "width", "layers"
    model.save_pretrained(folder)                                   # AutoModelForCausalLM reloads it

Pipeline (each stage is prunekit's own):
1. the dependency graph (prunekit.graph) finds every block's unit group — a KV head with the
   query heads that share it ("head" group: its q/k/v rows and o_proj columns), an FFN
   channel ("channel" group of mlp: its gate/up rows and down_proj column), or one channel of
   the residual width — one group for the whole model: its embedding column, every norm's
   scale, every block's q/k/v/gate/up input column and o_proj/down_proj row, the LM head's
   column (the masked RMSNorms normalise over the kept width only, prunekit.feature_norms);
2. every unit is scored on calibration tokens (prunekit.llm.unit_scores: by default the norms of
   the unit's own activations; Wanda-style Σ |W|·‖X‖ over its weights, or magnitude);
3. allocation is uniform: the same number of units, the lowest-scoring ones, goes in every
   block — the only allocation a Llama/Qwen2 config (one head count, one intermediate size for
   all blocks) can describe; the width's score sums every block's, and the kept width stays a
   multiple of the head count (the config class requires it);
4. masks on every coupled slice (prunekit.structured.group_masks), then prunekit.compact
   removes them in place — it checks that the compacted model computes what the masked one did;
5. the config and the modules' size attributes follow the weights (prunekit.llm.hf_config).

Everything that can be refused — the amount, the criterion, the tokens, sizes the config class
would reject — is checked before the model is touched.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from ..compaction import compact
from ..errors import PrunekitError
from ..graph import build_graph
from ..masks import apply_masks, discard_masks, get_masks, named_parameters
from ..structured import group_masks
from .engine import check_calibration, decoder_layers
from .hf_config import block_sizes, proposed_config, sync_config, uniform_sizes
from .layers import remove_layers
from .structure_result import StructuredResult, parameter_count, units_to_remove
from .undo import DiskUndo
from .unit_scores import CRITERIA, DEFAULT_CRITERION, unit_scores

UNIT_STRUCTURES = ("heads", "ffn", "width")
STRUCTURES = UNIT_STRUCTURES + ("layers",)
# The compacted o_proj / down_proj sum fewer terms than the masked ones (the zeros are gone), so
# float32 rounding differs; through SmolLM2's 30 residual blocks the logits then differ by
# 1.0e-5 to 1.4e-5 relative (measured), above compact's default check of 1e-5. A wrong unit
# would show as an error of order 1.
COMPACTION_RTOL = 1e-4


def _block_groups(graph, model, layers_path: str, blocks: int, structure: str) -> list[str]:
    """The graph group of `structure` in every decoder block, in block order (the width: the one
    group of the embedding's columns, shared by every block)."""
    if structure == "width":
        embedding = next(name for name, m in model.named_modules() if m is model.get_input_embeddings())
        found = [g.name for g in graph.prunable() if any(s.name == f"{embedding}.weight" and s.dim == 1
                                                         for s in g.slices)]
        if len(found) != 1:
            raise PrunekitError(f"The dependency graph found no prunable residual width (the columns of "
                                f"'{embedding}.weight'); see print(prunekit.build_graph(model, x)).")
        return found * blocks
    names = []
    for index in range(blocks):
        prefix = f"{layers_path}.{index}." + ("self_attn." if structure == "heads" else "mlp.")
        kind = "head" if structure == "heads" else "channel"
        found = [g.name for g in graph.prunable() if g.kind == kind and g.name.startswith(prefix)]
        if len(found) != 1:
            raise PrunekitError(f"The dependency graph found {len(found)} prunable {kind} groups under "
                                f"'{prefix[:-1]}' (expected one); see print(prunekit.build_graph(model, x)).")
        names.append(found[0])
    return names


def _new_sizes(sizes: dict, structure: str, kept_units: int) -> dict:
    if structure == "width":
        return {"hidden_size": kept_units}
    if structure == "ffn":
        return {"intermediate_size": kept_units}
    queries_per_kv = sizes["num_attention_heads"] // sizes["num_key_value_heads"]
    return {"num_attention_heads": kept_units * queries_per_kv, "num_key_value_heads": kept_units,
            "head_dim": sizes["head_dim"]}


def prune_units(model: nn.Module, tokens: torch.Tensor, structure: str, remove: float, *,
                criterion: str = DEFAULT_CRITERION, batch_size: int = 8, device="cpu",
                progress: bool | None = None) -> StructuredResult:
    """Remove round(remove · units) head groups or FFN channels from every block, or channels of
    the residual width (module docstring)."""
    if structure not in UNIT_STRUCTURES:
        raise PrunekitError(f"Unknown unit structure {structure!r}; choose one of {', '.join(UNIT_STRUCTURES)} "
                            "(whole blocks: prunekit.llm.remove_layers).")
    if criterion not in CRITERIA:
        raise PrunekitError(f"Unknown structured criterion {criterion!r}; choose one of {', '.join(CRITERIA)}.")
    tokens = check_calibration(tokens)
    if len(get_masks(model)):
        raise PrunekitError("The model already carries prunekit masks; call prunekit.remove_masks(model) or "
                            "prunekit.compact it first.")
    start = time.perf_counter()
    layers_path, layers = decoder_layers(model)
    sizes = uniform_sizes([block_sizes(block) for block in layers])
    units, what = {"heads": (sizes["num_key_value_heads"], "KV head groups per block"),
                   "ffn": (sizes["intermediate_size"], "FFN channels per block"),
                   "width": (sizes["hidden_size"], "channels of the residual width")}[structure]
    count = units_to_remove(remove, units, what, multiple=sizes["num_attention_heads"] if structure == "width" else 1)
    changes = _new_sizes(sizes, structure, units - count)
    proposed_config(model.config, changes)  # refuses sizes the config class would not reload

    example = {"input_ids": tokens[:1, :16], "use_cache": False}
    graph = build_graph(model, example)
    groups = _block_groups(graph, model, layers_path, len(layers), structure)
    scores = unit_scores(model, graph, groups, tokens, criterion=criterion, layers_path=layers_path,
                         batch_size=batch_size, device=device, progress=progress)
    keep, removed = {}, []
    for name in dict.fromkeys(groups):  # the width: one group for all blocks
        if scores[name].numel() != units:
            raise PrunekitError(f"Group '{name}' has {scores[name].numel()} units, the config {units}.")
        lowest = torch.argsort(scores[name], stable=True)[:count]
        kept = torch.ones(units, dtype=torch.bool)
        kept[lowest] = False
        keep[name] = kept
        removed.append(sorted(lowest.tolist()))

    before = parameter_count(model)
    masks = group_masks(graph, keep)
    params = named_parameters(model)
    with DiskUndo() as undo:  # a failed check restores the dense weights the masks zeroed
        undo.save({name: params[name] for name in masks})
        apply_masks(model, masks)
        try:  # checked on a streamed copy first (memory: the model + its smaller copy)
            compact(model, example, graph=graph, rtol=COMPACTION_RTOL)
        except Exception:
            discard_masks(model)  # the undo puts the zeroed weights back
            raise
    compact(model, example, graph=graph, inplace=True, check=False)
    config_changes = sync_config(model)
    return StructuredResult(structure, criterion, count, units, before, parameter_count(model), config_changes,
                            removed, time.perf_counter() - start)


def prune_structure(model: nn.Module, tokens: torch.Tensor, structure: str, remove: float, *,
                    criterion: str = DEFAULT_CRITERION, batch_size: int = 8, device="cpu",
                    progress: bool | None = None) -> StructuredResult:
    """'heads' / 'ffn' / 'width': prune_units; 'layers': remove_layers (block influence; `criterion` unused)."""
    if structure == "layers":
        return remove_layers(model, tokens, remove, batch_size=batch_size, device=device, progress=progress)
    if structure not in STRUCTURES:
        raise PrunekitError(f"Unknown structure {structure!r}; choose one of {', '.join(STRUCTURES)}.")
    return prune_units(model, tokens, structure, remove, criterion=criterion, batch_size=batch_size, device=device,
                       progress=progress)


__all__ = ["STRUCTURES", "UNIT_STRUCTURES", "prune_structure", "prune_units"]
