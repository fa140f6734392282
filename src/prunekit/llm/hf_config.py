"""Keeping a transformers config (and the size attributes modules copy from it) true to the
weights after structured pruning, so `save_pretrained` → `from_pretrained` rebuilds the model.

The sizes are read back from the weights of every decoder block:

    num_key_value_heads  = k_proj.out_features / head_dim
    num_attention_heads  = q_proj.out_features / head_dim     (head_dim itself never changes)
    intermediate_size    = gate_proj.out_features              (= up_proj.out / down_proj.in)
    hidden_size          = q_proj.in_features                  (the residual width)
    num_hidden_layers    = len(model.model.layers)

Llama and Qwen2 configs hold ONE head count and ONE intermediate size for all blocks, and
transformers 5 has no per-layer field for them, so blocks with different sizes cannot be
described: `proposed_config` raises a PrunekitError instead of writing a config that would
rebuild a different model. A candidate config is built through the config class's own
`from_dict` (what `from_pretrained` calls), so its validators (e.g. Llama's "hidden_size must
be a multiple of num_attention_heads", Qwen2's "one layer type per layer") run before any
weight is touched.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from ..errors import PrunekitError
from .engine import decoder_layers


def _attention(block: nn.Module) -> nn.Module:
    attention = getattr(block, "self_attn", None)
    if attention is None or not all(hasattr(attention, n) for n in ("q_proj", "k_proj", "head_dim")):
        raise PrunekitError(f"Decoder block {type(block).__name__} has no Llama-style self_attn (q_proj, k_proj, "
                            "head_dim); structured pruning of heads supports Llama / Qwen2-style causal LMs.")
    return attention


def _mlp(block: nn.Module) -> nn.Module:
    mlp = getattr(block, "mlp", None)
    if mlp is None or not hasattr(mlp, "gate_proj"):
        raise PrunekitError(f"Decoder block {type(block).__name__} has no SwiGLU mlp (gate_proj, up_proj, "
                            "down_proj); structured FFN pruning supports Llama / Qwen2-style causal LMs.")
    return mlp


def block_sizes(block: nn.Module) -> dict[str, int]:
    """{num_attention_heads, num_key_value_heads, head_dim, intermediate_size, hidden_size} of one decoder
    block's weights."""
    attention, mlp = _attention(block), _mlp(block)
    head_dim = attention.head_dim
    return {"num_attention_heads": attention.q_proj.out_features // head_dim,
            "num_key_value_heads": attention.k_proj.out_features // head_dim,
            "head_dim": head_dim, "intermediate_size": mlp.gate_proj.out_features,
            "hidden_size": attention.q_proj.in_features}


def uniform_sizes(per_block: list[Mapping[str, int]]) -> dict[str, int]:
    """The sizes every block shares, or a PrunekitError naming the ones that differ."""
    differing = sorted({key for sizes in per_block for key in sizes if sizes[key] != per_block[0][key]})
    if differing:
        listed = "; ".join(f"{key}: {[sizes[key] for sizes in per_block]}" for key in differing)
        raise PrunekitError(f"The decoder blocks would have different sizes ({listed}). A transformers "
                            "Llama/Qwen2 config holds one value for all blocks (no per-layer field exists), so "
                            "such a model cannot be saved and reloaded with from_pretrained: use "
                            "allocation='uniform' (the same number of units removed from every block).")
    return dict(per_block[0])


def proposed_config(config, changes: Mapping[str, object]):
    """A new config of the same class with `changes`, validated as from_pretrained would; raises
    a PrunekitError (and changes nothing) if the class rejects it."""
    values = config.to_dict()
    values.update(changes)
    try:
        return type(config).from_dict(values)
    except Exception as error:  # noqa: BLE001 - any validator's complaint means: cannot be reloaded
        raise PrunekitError(f"transformers' {type(config).__name__} rejects the pruned sizes {dict(changes)}: "
                            f"{str(error).strip().splitlines()[-1].strip()} — the model could not be reloaded. "
                            "Remove a different number of units (e.g. heads so that hidden_size stays a multiple "
                            "of the head count).") from None


def layer_type_changes(config, kept_layers: list[int]) -> dict[str, object]:
    """num_hidden_layers and, where the config lists one per layer, the kept layers' layer_types."""
    changes: dict[str, object] = {"num_hidden_layers": len(kept_layers)}
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        changes["layer_types"] = [layer_types[i] for i in kept_layers]
    return changes


def sync_config(model: nn.Module) -> dict[str, object]:
    """Write the sizes of `model`'s weights into model.config and into every module attribute
    that copies them, and number the blocks' layer_idx 0, 1, …; returns the config fields that
    changed. Raises (changing nothing) when the
    blocks differ or the config class rejects the sizes."""
    _, layers = decoder_layers(model)
    sizes = uniform_sizes([block_sizes(block) for block in layers])
    config = model.config
    if len(layers) != config.num_hidden_layers:
        raise PrunekitError(f"The model has {len(layers)} decoder blocks but its config says "
                            f"{config.num_hidden_layers}; remove blocks with prunekit.llm.remove_layers, which "
                            "updates the config.")
    changes = {key: value for key, value in sizes.items() if getattr(config, key, None) != value}
    proposed_config(config, changes)  # validate first
    for key, value in changes.items():
        setattr(config, key, value)
    for index, block in enumerate(layers):
        attention, mlp = _attention(block), _mlp(block)
        attention.num_key_value_groups = sizes["num_attention_heads"] // sizes["num_key_value_heads"]
        for attr, key in (("num_heads", "num_attention_heads"), ("num_key_value_heads", "num_key_value_heads")):
            if hasattr(attention, attr):  # older transformers keep these per module
                setattr(attention, attr, sizes[key])
        for attr in ("intermediate_size", "hidden_size"):
            if hasattr(mlp, attr):
                setattr(mlp, attr, sizes[attr])
        attention.layer_idx = index
        if hasattr(block, "layer_idx"):
            block.layer_idx = index
    return changes


__all__ = ["block_sizes", "layer_type_changes", "proposed_config", "sync_config", "uniform_sizes"]
