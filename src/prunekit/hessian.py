"""Second-order quantities of a scalar loss L(θ) through automatic differentiation.

Every function takes `loss_of_params`, a callable mapping a sequence of tensors θ = (θ₁, …, θₖ)
to a scalar, and the point `params` at which to evaluate. The given tensors are never
modified and never receive a `.grad`: each function works on detached copies.

    hvp(f, θ, v)                 H v                   (double backward: ∇θ ⟨∇θ f, v⟩)
    gradient_and_hvp(f, θ, v)    (g, H v) from one forward pass; v = g when v is None (GraSP's Hg)
    exact_diagonal(f, θ)         diag H, one backward pass per element (small models only)
    hutchinson_diagonal(f, θ)    E_v[v ⊙ H v] with Rademacher v (±1): unbiased, since E[v vᵀ] = I

Both Hessian-vector products cost one forward pass, one backward pass that keeps its graph
(create_graph=True) and one backward pass through that graph: about 2–4 gradient computations,
independent of the number of parameters. The exact diagonal costs one extra backward pass per
element, so it refuses more than `max_elements` elements.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from .errors import PrunekitError

EXACT_DIAGONAL_LIMIT = 20_000


def _leaves(params) -> tuple[list[str] | None, list[torch.Tensor]]:
    """Detached copies that require grad; names when `params` is a mapping."""
    if isinstance(params, Mapping):
        names = list(params)
        values = [params[n] for n in names]
    elif isinstance(params, torch.Tensor):
        raise PrunekitError("params must be a sequence (or dict) of tensors, not a single tensor; wrap it: [w].")
    else:
        names, values = None, list(params)
    if not values:
        raise PrunekitError("params is empty; pass the tensors to differentiate with respect to.")
    for v in values:
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            raise PrunekitError("Every entry of params must be a floating-point tensor.")
    return names, [v.detach().clone().requires_grad_(True) for v in values]


def _call(f, names, leaves):
    loss = f(dict(zip(names, leaves)) if names is not None else leaves)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise PrunekitError("loss_of_params must return a scalar tensor.")
    return loss.reshape(())


def _pack(names, tensors):
    return dict(zip(names, tensors)) if names is not None else list(tensors)


def _vectors(names, leaves, vectors) -> list[torch.Tensor]:
    if isinstance(vectors, Mapping):
        if names is None:
            raise PrunekitError("vectors is a dict but params is a sequence; pass both the same way.")
        vectors = [vectors[n] for n in names]
    else:
        vectors = list(vectors)
    if len(vectors) != len(leaves) or any(v.shape != p.shape for v, p in zip(vectors, leaves)):
        raise PrunekitError("vectors must match params one to one, with the same shapes.")
    return [v.detach().to(p.dtype) for v, p in zip(vectors, leaves)]


def _grads(loss, leaves, create_graph: bool):
    grads = torch.autograd.grad(loss, leaves, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(leaves, grads)]


def _second(grads, leaves, vectors, retain: bool = False):
    """∇θ ⟨g(θ), v⟩ = H v for constant v; `retain` keeps the graph for further products."""
    dot = sum((g * v).sum() for g, v in zip(grads, vectors) if g.requires_grad)
    if not isinstance(dot, torch.Tensor) or not dot.requires_grad:  # the loss is linear in θ: H = 0
        return [torch.zeros_like(p) for p in leaves]
    hv = torch.autograd.grad(dot, leaves, retain_graph=retain, allow_unused=True)
    return [torch.zeros_like(p) if h is None else h.detach() for p, h in zip(leaves, hv)]


def gradient(loss_of_params: Callable, params):
    """∇θ L at `params` (same structure as `params`)."""
    names, leaves = _leaves(params)
    return _pack(names, [g.detach() for g in _grads(_call(loss_of_params, names, leaves), leaves, False)])


def hvp(loss_of_params: Callable, params, vectors):
    """H v, the Hessian of L at `params` times `vectors` (double backward, exact)."""
    return gradient_and_hvp(loss_of_params, params, vectors)[1]


def gradient_and_hvp(loss_of_params: Callable, params, vectors=None):
    """(g, H v) from one forward pass; with vectors=None, v = g (detached), i.e. (g, H g)."""
    names, leaves = _leaves(params)
    grads = _grads(_call(loss_of_params, names, leaves), leaves, create_graph=True)
    vecs = [g.detach() for g in grads] if vectors is None else _vectors(names, leaves, vectors)
    return _pack(names, [g.detach() for g in grads]), _pack(names, _second(grads, leaves, vecs))


def exact_diagonal(loss_of_params: Callable, params, *, max_elements: int = EXACT_DIAGONAL_LIMIT):
    """diag H exactly: h_ii = ∂(∂L/∂θ_i)/∂θ_i, one backward pass through the gradient per element."""
    names, leaves = _leaves(params)
    total = sum(p.numel() for p in leaves)
    if total > max_elements:
        raise PrunekitError(f"The exact Hessian diagonal needs one backward pass per element ({total:,} here, "
                            f"limit {max_elements:,}); use the Hutchinson estimate or the empirical Fisher "
                            "for a model this size, or raise max_elements.")
    grads = _grads(_call(loss_of_params, names, leaves), leaves, create_graph=True)
    diagonal = []
    for p, g in zip(leaves, grads):
        d = torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
        if g.requires_grad:
            flat = g.reshape(-1)
            for i in range(flat.numel()):
                (row,) = torch.autograd.grad(flat[i], p, retain_graph=True, allow_unused=True)
                if row is not None:
                    d[i] = row.reshape(-1)[i]
        diagonal.append(d.reshape(p.shape))
    return _pack(names, diagonal)


_SHIFTS = torch.arange(64)


def rademacher_like(tensor: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Independent ±1 entries with probability ½ each.

    Drawn 64 at a time from the bits of random 64-bit integers: drawing one integer per entry
    costs more than the Hessian-vector product itself on a small network.
    """
    n = tensor.numel()
    words = torch.randint(-2 ** 63, 2 ** 63 - 1, ((n + 63) // 64,), generator=generator, dtype=torch.int64)
    bits = ((words.unsqueeze(1) >> _SHIFTS) & 1).reshape(-1)[:n].reshape(tensor.shape)
    return bits.to(dtype=tensor.dtype).mul_(2).sub_(1).to(tensor.device)


def hutchinson_diagonal(loss_of_params: Callable, params, *, samples: int = 1,
                        generator: torch.Generator | None = None):
    """Hutchinson's estimate of diag H: the mean over `samples` Rademacher vectors v of v ⊙ (H v).

    Unbiased because E[v_i v_j] = δ_ij; its variance per entry is Σ_{j≠i} h_ij², so it converges
    at rate 1/√samples and is exact for a diagonal Hessian after a single sample.
    """
    if samples < 1:
        raise PrunekitError(f"samples must be ≥ 1, not {samples}.")
    names, leaves = _leaves(params)
    grads = _grads(_call(loss_of_params, names, leaves), leaves, create_graph=True)
    total = [torch.zeros_like(p) for p in leaves]
    for _ in range(samples):
        vs = [rademacher_like(p, generator) for p in leaves]
        hv = _second(grads, leaves, vs, retain=True)
        for acc, v, h in zip(total, vs, hv):
            acc.add_(v * h)
    return _pack(names, [t / samples for t in total])


__all__ = ["gradient", "hvp", "gradient_and_hvp", "exact_diagonal", "hutchinson_diagonal", "rademacher_like",
           "EXACT_DIAGONAL_LIMIT"]

