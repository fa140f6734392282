"""Attention-head criteria: how specialised each head is (entropy) and whether another head already
does the same job (similarity).

For a head h with attention map A^h ∈ ℝ^{L×S} (rows are distributions over the S keys) on
example n:

    entropy   E_h = mean_{n, query i} −Σ_j A^h_{ij} log A^h_{ij}        (0 = one key, log S = uniform)
    similarity C_{hk} = mean_n ⟨A^h, A^k⟩_F / (‖A^h‖_F ‖A^k‖_F)          (cosine of the flattened maps)

A low-entropy head is a specialist; two heads with C ≈ 1 are redundant and one of them can go.
Scores (higher = keep), `kind=`:
    "redundancy" (default) greedy elimination: repeatedly remove the head most similar to any
                 remaining head (ties: the higher-entropy one, then the later index); a head's
                 score is (its removal step + 1) / H. Of two duplicates the first removed scores
                 lowest, and its twin, now unique, survives.
    "entropy"    −E_h: generalists (spread-out attention) go first.
    "similarity" 1 − max_{k≠h} C_hk (no greedy update: both duplicates score low).

How maps are captured: a forward pre-hook on every nn.MultiheadAttention asks for per-head
weights (need_weights=True, average_attn_weights=False) and a forward hook records them, then
returns what the caller originally asked for; hooks are removed afterwards. Models with their
own attention modules can compute maps themselves and use `head_entropy` / `head_similarity` /
`redundancy_scores` directly.

A head's score is broadcast over its slices: rows h·d … (h+1)·d − 1 of each of the query, key
and value projections (in_proj_weight / in_proj_bias or q/k/v_proj_weight) and the same columns
of out_proj.weight (d = embed_dim / num_heads).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import PrunekitError
from ..modes import evaluation_mode
from .base import Criterion
from .calibration import batch_list
from .channels import owner_name

KINDS = ("redundancy", "entropy", "similarity")


def _check_maps(maps: torch.Tensor) -> torch.Tensor:
    if maps.dim() != 4:
        raise PrunekitError(f"Attention maps must be (batch, heads, queries, keys), not {tuple(maps.shape)}.")
    return maps.detach().to(torch.float64)


def entropy_sums(maps: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(Σ over examples and queries of each head's row entropy, number of rows per head)."""
    maps = _check_maps(maps)
    rows = -torch.special.xlogy(maps, maps).sum(-1)  # 0·log 0 = 0 (masked keys)
    return rows.sum((0, 2)), maps.shape[0] * maps.shape[2]


def similarity_sums(maps: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(Σ over examples of the heads' cosine-similarity matrices, number of examples)."""
    maps = _check_maps(maps)
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
            return -stats["entropy"]
        sim = stats["similarity"]
        if self.kind == "similarity":
            off = sim - torch.diag(torch.full((sim.shape[0],), float("inf"), dtype=sim.dtype))
            return 1.0 - off.max(1).values if sim.shape[0] > 1 else torch.ones(1, dtype=sim.dtype)
        return redundancy_scores(sim, stats["entropy"])

    def scores(self, model, params, *, batches=None, loss_fn=None):
        batches = batch_list(batches, self.name, self.max_batches, targets=False)
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
