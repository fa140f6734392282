"""Attention-head criteria: how specialised each head is (entropy) and whether another head already
does the same job (similarity).

For a head h with attention map A^h ∈ ℝ^{L×S} (rows are distributions over the S keys) on
example n, over the valid (non-padding) query rows i:

    entropy   E_h = mean_{n, valid i} −Σ_j A^h_{ij} log A^h_{ij}     (0 = one key, log S = uniform)
    similarity C_{hk} = mean_n ⟨A^h, A^k⟩_F / (‖A^h‖_F ‖A^k‖_F)       (cosine of the flattened maps,
                                                                      padding rows zeroed)

A low-entropy head is a specialist; two heads with C ≈ 1 are redundant and one of them can go.
Scores (higher = keep, all positive so that unit aggregation by a norm keeps their order), `kind=`:
    "redundancy" (default) greedy elimination: repeatedly remove the head most similar to any
                 remaining head (ties: the higher-entropy one, then the later index); a head's
                 score is (its removal step + 1) / H. Of two duplicates the first removed scores
                 lowest, and its twin, now unique, survives.
    "entropy"    exp(−E_h): generalists (spread-out attention) go first.
    "similarity" 1 − max_{k≠h} C_hk (no greedy update: both duplicates score low).

How maps are captured:
- nn.MultiheadAttention: a forward pre-hook asks for per-head weights (need_weights=True,
  average_attn_weights=False) and a forward hook records them, then returns what the caller
  originally asked for.
- HuggingFace attention (prunekit.criteria.attention_sites: BERT, MiniLM, RoBERTa, ViT …): the
  model runs with the eager attention implementation, whose attention modules return the
  probabilities; a forward hook records them. Calibration batches are then dicts of keyword
  inputs (a tokenizer's output); their `attention_mask` marks the padding query rows left out.
Hooks are removed and the attention implementation restored afterwards. Other models can compute
maps themselves and use `head_entropy` / `head_similarity` / `redundancy_scores` directly.

A head's score is broadcast over its slices: rows h·d … (h+1)·d − 1 of each of the query, key
and value projections (in_proj_weight / in_proj_bias or q/k/v_proj_weight) and the same columns
of the output projection (d = embed_dim / num_heads).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import PrunekitError
from ..modes import evaluation_mode
from ..nested import model_inputs
from .attention_sites import AttentionSite, eager_attention, per_head_scores
from .base import Criterion
from .calibration import batch_list
from .channels import owner_name

KINDS = ("redundancy", "entropy", "similarity")


def _check_maps(maps: torch.Tensor) -> torch.Tensor:
    if maps.dim() != 4:
        raise PrunekitError(f"Attention maps must be (batch, heads, queries, keys), not {tuple(maps.shape)}.")
    return maps.detach().to(torch.float64)


def _valid_rows(maps: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """(batch, queries) weights: 1 for a real query row, 0 for padding."""
    if valid is None:
        return torch.ones(maps.shape[0], maps.shape[2], dtype=maps.dtype)
    valid = valid.detach().to(maps.dtype)
    if valid.shape != (maps.shape[0], maps.shape[2]):
        raise PrunekitError(f"An attention mask of shape {tuple(valid.shape)} does not match maps of shape "
                            f"{tuple(maps.shape)}; it must be (batch, queries).")
    return valid


def entropy_sums(maps: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """(Σ over examples and valid queries of each head's row entropy, number of valid rows per head)."""
    maps = _check_maps(maps)
    weights = _valid_rows(maps, valid)
    rows = -torch.special.xlogy(maps, maps).sum(-1)  # 0·log 0 = 0 (masked keys)
    return (rows * weights[:, None, :]).sum((0, 2)), int(weights.sum())


def similarity_sums(maps: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """(Σ over examples of the heads' cosine-similarity matrices, number of examples); padding rows zeroed."""
    maps = _check_maps(maps)
    maps = maps * _valid_rows(maps, valid)[:, None, :, None]
    flat = maps.reshape(maps.shape[0], maps.shape[1], -1)
    unit = flat / flat.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    return torch.einsum("nhx,nkx->hk", unit, unit), maps.shape[0]


def head_entropy(maps: torch.Tensor) -> torch.Tensor:
    total, count = entropy_sums(maps)
    return total / count


def head_similarity(maps: torch.Tensor) -> torch.Tensor:
    total, count = similarity_sums(maps)
    return total / count


def redundancy_scores(similarity: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
    """Greedy elimination order as a score in (0, 1]: the first head removed scores 1/H."""
    heads = similarity.shape[0]
    remaining = list(range(heads))
    scores = torch.zeros(heads, dtype=torch.float64)
    for step in range(heads):
        def key(h):
            others = [k for k in remaining if k != h]
            redundancy = max((float(similarity[h, k]) for k in others), default=0.0)
            return (redundancy, float(entropy[h]), h)

        victim = max(remaining, key=key)
        scores[victim] = (step + 1) / heads
        remaining.remove(victim)
    return scores


def capture_statistics(model: nn.Module, batches) -> dict[str, dict]:
    """{MultiheadAttention name: {"entropy": (H,), "similarity": (H, H)}} over the batches."""
    modules = {n: m for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}
    if not modules:
        raise PrunekitError("The model has no nn.MultiheadAttention; compute attention maps yourself and use "
                            "prunekit.criteria.heads.head_entropy / head_similarity / redundancy_scores.")
    sums = {n: {"entropy": 0.0, "rows": 0, "similarity": 0.0, "examples": 0} for n in modules}
    requested: dict[str, tuple] = {}
    handles = []

    def before(name):
        def hook(module, args, kwargs):
            requested[name] = (kwargs.get("need_weights", True), kwargs.get("average_attn_weights", True))
            return args, {**kwargs, "need_weights": True, "average_attn_weights": False}
        return hook

    def after(name):
        def hook(module, args, kwargs, output):
            attn_out, maps = output
            if maps.dim() == 3:  # unbatched input: (H, L, S)
                maps = maps.unsqueeze(0)
            e, rows = entropy_sums(maps)
            s, examples = similarity_sums(maps)
            acc = sums[name]
            acc["entropy"] += e
            acc["rows"] += rows
            acc["similarity"] += s
            acc["examples"] += examples
            need, average = requested[name]
            if not need:
                return attn_out, None
            return attn_out, maps.mean(1).to(attn_out.dtype) if average else maps.to(attn_out.dtype)
        return hook

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_pre_hook(before(name), with_kwargs=True))
            handles.append(module.register_forward_hook(after(name), with_kwargs=True))
        # grad enabled on purpose: PyTorch's fused inference path for Transformer layers bypasses
        # the attention module's forward (and so the hooks) only under no_grad.
        with evaluation_mode(model), torch.enable_grad():
            for batch in batches:
                model(batch[0])
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name, acc in sums.items():
        if acc["examples"] == 0:
            continue
        out[name] = {"entropy": acc["entropy"] / acc["rows"], "similarity": acc["similarity"] / acc["examples"]}
    return out


def capture_site_statistics(model: nn.Module, sites: list[AttentionSite], batches) -> dict[str, dict]:
    """{site name: {"entropy": (H,), "similarity": (H, H)}} over the batches, from the probabilities
    the attention modules return under the eager implementation."""
    sums = {s.name: {"entropy": 0.0, "rows": 0, "similarity": 0.0, "examples": 0} for s in sites}
    valid: list[torch.Tensor | None] = [None]
    handles = []

    def hook_for(site):
        def hook(module, args, output):
            maps = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if maps is None:
                raise PrunekitError(f"'{site.maps}' returned no attention probabilities even with the eager "
                                    "attention implementation; this attention module cannot be scored by maps.")
            e, rows = entropy_sums(maps, valid[0])
            c, examples = similarity_sums(maps, valid[0])
            acc = sums[site.name]
            acc["entropy"] += e
            acc["rows"] += rows
            acc["similarity"] += c
            acc["examples"] += examples
        return hook

    try:
        for site in sites:
            handles.append(model.get_submodule(site.maps).register_forward_hook(hook_for(site)))
        with evaluation_mode(model), eager_attention(model), torch.no_grad():
            for batch in batches:
                call = model_inputs(batch[0])
                mask = call.kwargs.get("attention_mask")
                valid[0] = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
                call(model)
    finally:
        for h in handles:
            h.remove()
    return {name: {"entropy": acc["entropy"] / max(acc["rows"], 1), "similarity": acc["similarity"] / acc["examples"]}
            for name, acc in sums.items() if acc["examples"]}


def head_slices(module: nn.MultiheadAttention, tensor: str, param: torch.Tensor) -> tuple[int, int]:
    """(dimension, period): head h owns indices [h·d, (h+1)·d) modulo `period` along `dimension`."""
    e = module.embed_dim
    if tensor in ("in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
        return 0, e
    if tensor == "out_proj.weight":
        return 1, e
    raise PrunekitError(f"'{tensor}' of a MultiheadAttention is shared by all heads; select only in_proj_weight, "
                        "in_proj_bias, q/k/v_proj_weight and out_proj.weight for head criteria.")


def broadcast_heads(values: torch.Tensor, module: nn.MultiheadAttention, tensor: str,
                    param: torch.Tensor) -> torch.Tensor:
    dim, period = head_slices(module, tensor, param)
    d = module.embed_dim // module.num_heads
    index = (torch.arange(param.shape[dim]) % period) // d
    per = values.to(param.dtype)[index]
    shape = [1] * param.dim()
    shape[dim] = -1
    return per.reshape(shape).expand_as(param).clone()


class HeadImportance(Criterion):
    name = "heads"
    needs_data = True

    def __init__(self, kind: str = "redundancy", *, max_batches: int | None = None):
        if kind not in KINDS:
            raise PrunekitError(f"kind must be one of {KINDS}, not {kind!r}.")
        self.kind, self.max_batches = kind, max_batches

    def head_scores(self, stats: dict) -> torch.Tensor:
        if self.kind == "entropy":
            return torch.exp(-stats["entropy"])
        sim = stats["similarity"]
        if self.kind == "similarity":
            off = sim - torch.diag(torch.full((sim.shape[0],), float("inf"), dtype=sim.dtype))
            return 1.0 - off.max(1).values if sim.shape[0] > 1 else torch.ones(1, dtype=sim.dtype)
        return redundancy_scores(sim, stats["entropy"])

    def scores(self, model, params, *, batches=None, loss_fn=None):
        batches = batch_list(batches, self.name, self.max_batches, targets=False)
        if not any(isinstance(m, nn.MultiheadAttention) for m in model.modules()):
            return self._site_scores(model, params, batches)
        placed = {}
        for name in params:
            module_name, tensor = _attention_owner(model, name)
            placed[name] = (module_name, tensor)
        stats = capture_statistics(model, batches)
        out = {}
        for name, p in params.items():
            module_name, tensor = placed[name]
            if module_name not in stats:
                raise PrunekitError(f"The forward pass never called '{module_name}'; pass batches that reach it.")
            values = self.head_scores(stats[module_name])
            out[name] = broadcast_heads(values, model.get_submodule(module_name), tensor, p.detach())
        return out

    def _site_scores(self, model, params, batches):
        """HuggingFace-style attention blocks (prunekit.criteria.attention_sites)."""
        def head_scores(sites):
            stats = capture_site_statistics(model, sites, batches)
            return {name: self.head_scores(values) for name, values in stats.items()}
        return per_head_scores(model, params, self.name, head_scores)

    def __repr__(self):
        return f"HeadImportance(kind={self.kind!r})"


def _attention_owner(model: nn.Module, name: str) -> tuple[str, str]:
    """The MultiheadAttention a parameter belongs to, and its tensor path inside it."""
    owner, tensor = owner_name(name), name.rpartition(".")[2]
    module = model.get_submodule(owner) if owner else model
    if isinstance(module, nn.MultiheadAttention):
        return owner, tensor
    parent = owner_name(owner)
    if owner.endswith("out_proj") and isinstance(model.get_submodule(parent) if parent else model,
                                                 nn.MultiheadAttention):
        return parent, f"out_proj.{tensor}"
    raise PrunekitError(f"'{name}' is not an attention-head parameter; head criteria score the parameters of "
                        "nn.MultiheadAttention modules (select them with "
                        "prunekit.criteria.heads.attention_parameters).")


def attention_parameters(model: nn.Module) -> list[str]:
    """The per-head parameters of every nn.MultiheadAttention (for params=…)."""
    names = []
    for module_name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            prefix = f"{module_name}." if module_name else ""
            for tensor in ("in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
                if getattr(module, tensor, None) is not None:
                    names.append(prefix + tensor)
            names.append(prefix + "out_proj.weight")
    return names
