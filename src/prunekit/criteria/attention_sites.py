"""Where a model's attention heads live, for head criteria on HuggingFace-style attention.

An `AttentionSite` describes one attention block by what head criteria need from it:

- `head_params`: every per-head parameter and the dimension along which head h owns the
  indices [h·d, (h+1)·d) (query / key / value rows and biases, the output projection's columns);
- `output_projection`: the Linear whose *input* is the concatenation of the heads' outputs
  (o_1 … o_H, each d wide), so a forward pre-hook there reads every head's output and can scale
  it by a gate ξ_h without knowing how the attention itself is computed (eager, SDPA, flash);
- `maps`: the module whose forward returns (context, attention probabilities), which HF
  attention modules do under the eager implementation (see `eager_attention`).

Finders turn a module into a site; `SITE_FINDERS` lists them, and a model family with other
attribute names plugs in by adding one function there. Supported: BERT-style blocks (BERT,
RoBERTa, MiniLM, ELECTRA …: a self-attention child with query/key/value Linear layers and an
output child with a `dense` Linear) and q_proj/k_proj/v_proj/o_proj blocks (ViT; Llama-style
decoders without grouped-query attention).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import PrunekitError


@dataclass(frozen=True)
class AttentionSite:
    name: str                       # the attention block, e.g. "encoder.layer.0.attention"
    num_heads: int
    head_dim: int
    head_params: dict[str, int]     # parameter name → dimension along which the heads' slices run
    output_projection: str          # Linear whose input is [o_1, …, o_H]
    maps: str                       # module returning (context, attention probabilities)


def _linear(module, name):
    child = getattr(module, name, None)
    return child if isinstance(child, nn.Linear) else None


def bert_style(name: str, module: nn.Module) -> AttentionSite | None:
    """A block with a self-attention child (`self` or `attention`: query/key/value Linear layers,
    `attention_head_size`) and an `output.dense` Linear."""
    inner_name = next((c for c in ("self", "attention") if hasattr(getattr(module, c, None), "query")), None)
    output = getattr(module, "output", None)
    if inner_name is None or output is None or _linear(output, "dense") is None:
        return None
    inner = getattr(module, inner_name)
    projections = [_linear(inner, p) for p in ("query", "key", "value")]
    head_dim = getattr(inner, "attention_head_size", None)
    if any(p is None for p in projections) or not isinstance(head_dim, int):
        return None
    width = projections[0].out_features
    if width % head_dim or any(p.out_features != width for p in projections) or output.dense.in_features != width:
        raise PrunekitError(f"Attention block '{name}' has query/key/value/output widths that do not split into "
                            f"heads of {head_dim}; was it pruned by something other than whole heads?")
    prefix = f"{name}." if name else ""
    inner_path = prefix + inner_name
    head_params = {}
    for p in ("query", "key", "value"):
        head_params[f"{inner_path}.{p}.weight"] = 0
        if getattr(inner, p).bias is not None:
            head_params[f"{inner_path}.{p}.bias"] = 0
    head_params[f"{prefix}output.dense.weight"] = 1
    # the head count is read from the tensors, not the config: a compacted model keeps fewer heads
    return AttentionSite(name, width // head_dim, head_dim, head_params, f"{prefix}output.dense", inner_path)


def projection_style(name: str, module: nn.Module) -> AttentionSite | None:
    """A block with q_proj / k_proj / v_proj / o_proj Linear layers and an int `head_dim` (ViT, and
    Llama-style decoders without grouped-query attention). With fewer key/value heads than query
    heads (GQA) a unit is a key/value head with its query heads, which this finder does not
    describe: it returns None and head criteria refuse those parameters."""
    projections = [_linear(module, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
    head_dim = getattr(module, "head_dim", None)
    if any(p is None for p in projections) or not isinstance(head_dim, int):
        return None
    q, k, v, o = projections
    width = q.out_features
    if width % head_dim or k.out_features != width or v.out_features != width or o.in_features != width:
        return None
    prefix = f"{name}." if name else ""
    head_params = {}
    for p, layer in zip(("q_proj", "k_proj", "v_proj"), (q, k, v)):
        head_params[f"{prefix}{p}.weight"] = 0
        if layer.bias is not None:
            head_params[f"{prefix}{p}.bias"] = 0
    head_params[f"{prefix}o_proj.weight"] = 1
    return AttentionSite(name, width // head_dim, head_dim, head_params, f"{prefix}o_proj", name)


SITE_FINDERS = (bert_style, projection_style)


def find_attention_sites(model: nn.Module) -> list[AttentionSite]:
    """Every attention block a finder in SITE_FINDERS recognises, in module order."""
    sites = []
    for name, module in model.named_modules():
        for finder in SITE_FINDERS:
            site = finder(name, module)
            if site is not None:
                sites.append(site)
                break
    return sites


def site_of_parameter(sites: list[AttentionSite], name: str) -> tuple[AttentionSite, int]:
    """(site, dimension of the head slices) of a per-head parameter."""
    for site in sites:
        if name in site.head_params:
            return site, site.head_params[name]
    raise PrunekitError(f"'{name}' is not a per-head parameter of a recognised attention block (query/key/value "
                        "rows or the output projection's columns); score only those with head criteria, e.g. "
                        "Pruner(model, x, granularity='head', ...).")


def broadcast_head_values(values: torch.Tensor, site: AttentionSite, dim: int, like: torch.Tensor) -> torch.Tensor:
    """values[h] over the indices [h·d, (h+1)·d) of `like` along `dim`."""
    if like.shape[dim] != site.num_heads * site.head_dim:
        raise PrunekitError(f"A tensor of shape {tuple(like.shape)} has no {site.num_heads} × {site.head_dim} head "
                            f"slices along dimension {dim}.")
    per = values.to(like.dtype).repeat_interleave(site.head_dim)
    shape = [1] * like.dim()
    shape[dim] = -1
    return per.reshape(shape).expand_as(like).clone()


@contextmanager
def eager_attention(model: nn.Module):
    """HF models compute attention by the eager implementation inside (their attention modules
    then return the probabilities); every config's previous choice is restored afterwards."""
    configs = {id(c): c for m in model.modules() if hasattr(c := getattr(m, "config", None), "_attn_implementation")}
    before = {key: c._attn_implementation for key, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation = "eager"
        yield model
    finally:
        for key, c in configs.items():
            c._attn_implementation = before[key]


@contextmanager
def head_gates(model: nn.Module, sites: list[AttentionSite], gates: dict[str, torch.Tensor] | None = None,
               record: dict[str, list] | None = None):
    """Forward pre-hooks on the output projections: scale head h's output by gates[site][h]
    (ξ = 1 leaves the model unchanged, ξ_h = 0 removes the head) and/or append each call's
    per-head outputs (batch…, H, d) to record[site]. Hooks are removed on exit."""
    handles = []

    def hook_for(site):
        def hook(module, args):
            heads = args[0].unflatten(-1, (site.num_heads, site.head_dim))
            if record is not None:
                record.setdefault(site.name, []).append(heads.detach())
            if gates is None or site.name not in gates:
                return None
            gated = heads * gates[site.name].to(heads.dtype).unsqueeze(-1)
            return (gated.flatten(-2),) + tuple(args[1:])
        return hook

    try:
        for site in sites:
            handles.append(model.get_submodule(site.output_projection).register_forward_pre_hook(hook_for(site)))
        yield
    finally:
        for h in handles:
            h.remove()


def per_head_scores(model: nn.Module, params, who: str, head_scores) -> dict[str, torch.Tensor]:
    """Element scores for `params` (per-head parameters of recognised blocks) from
    head_scores(sites) → {site name: (H,) values}, called with the sites the parameters belong to."""
    sites = find_attention_sites(model)
    if not sites:
        raise PrunekitError(f"Criterion '{who}' found no attention block it recognises (BERT-style query/key/value "
                            "+ output.dense, q/k/v/o_proj without grouped-query attention, or nn.MultiheadAttention "
                            "for 'heads'); add a finder to prunekit.criteria.attention_sites.SITE_FINDERS.")
    placed = {name: site_of_parameter(sites, name) for name in params}
    used = {site.name for site, _ in placed.values()}
    values = head_scores([s for s in sites if s.name in used])
    out = {}
    for name, (site, dim) in placed.items():
        if site.name not in values:
            raise PrunekitError(f"The forward pass never reached '{site.name}'; pass batches that run through it.")
        out[name] = broadcast_head_values(values[site.name], site, dim, params[name].detach())
    return out
