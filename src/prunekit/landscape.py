"""Curvature of the masked problem L_m(w) = L(w ⊙ m), restricted to the surviving weights.

With a fixed mask m only the kept coordinates u = w[m] can move, so the landscape that
training a ticket sees is ℓ(u) = L(embed(u)), where embed puts u into the kept slots and
zeros into the pruned ones (tensors without a mask are free everywhere). Its Hessian is
the principal submatrix H^m = H[m, m] of the full Hessian at w ⊙ m.

    top eigenvalue λmax        power iteration or Lanczos on Hessian-vector products
    smallest eigenvalue λmin   Lanczos (an extreme of the spectrum, so it converges like λmax)
    condition number κ = λmax / |λmin|, the ratio of the extreme curvatures (when λmin < 0
                               the point is a saddle of L_m and κ is still that ratio)

Hessian-vector products come from `prunekit.hessian.hvp` (double backward), one forward
pass each, so nothing of size dim² is ever formed. The model is never modified: the loss
is evaluated with torch.func.functional_call, which swaps tensors in for one call, in eval mode.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .errors import PrunekitError
from .hessian import hvp
from .masks import MaskSet, canonical_name, effective_weight, get_masks, is_mask_buffer, named_parameters
from .modes import evaluation_mode


class RestrictedLoss:
    """ℓ(u) = L(embed(u)) on a fixed batch (x, y); `point` is u at the model's current weights."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, masks: Mapping | None = None, *,
                 loss_fn=F.cross_entropy, params=None):
        masks = MaskSet(masks) if masks is not None else get_masks(model)
        self.model = model
        # The model's own keys: 'a.parametrizations.weight.original' for a masked tensor. Its
        # installed mask is overridden by all-ones, so only `masks` restricts the problem.
        self.keys = {canonical_name(k): k for k, _ in model.named_parameters()}
        self.overrides = {k: torch.ones_like(b) for k, b in model.named_buffers() if is_mask_buffer(k)}
        available = named_parameters(model)
        names = list(available) if params is None else list(params)
        unknown = [n for n in list(names) + list(masks) if n not in available]
        if unknown:
            raise PrunekitError(f"Unknown parameters {unknown[:3]}; see prunekit.named_parameters(model).")
        self.names = names
        self.base = {n: effective_weight(model, n).detach().clone() for n in available}  # w ⊙ m_model
        self.index = {}
        for n in names:
            keep = masks[n].reshape(-1) if n in masks else torch.ones(available[n].numel(), dtype=torch.bool)
            self.index[n] = keep.nonzero().reshape(-1)
        for n in masks:
            self.base[n] = torch.where(masks[n], self.base[n], 0.0)  # evaluate at w ⊙ m
        self.x, self.y, self.loss_fn = x, y, loss_fn
        self.dim = sum(len(i) for i in self.index.values())
        if self.dim == 0:
            raise PrunekitError("Every selected weight is pruned; there is no restricted problem left.")
        self.point = torch.cat([self.base[n].reshape(-1)[self.index[n]] for n in names])

    def embed(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        params, start = dict(self.base), 0
        for n in self.names:
            k = len(self.index[n])
            flat = self.base[n].reshape(-1).index_put((self.index[n],), u[start:start + k])
            params[n] = flat.reshape(self.base[n].shape)
            start += k
        return params

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        tensors = {self.keys[n]: t for n, t in self.embed(u).items()}
        tensors.update(self.overrides)
        # functional_call swaps the tensors in for this call only; evaluation_mode restores
        # every train/eval flag afterwards.
        with evaluation_mode(self.model):
            out = functional_call(self.model, tensors, (self.x,))
        return self.loss_fn(out, self.y)

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """H^m v at `point`."""
        return hvp(lambda leaves: self(leaves[0]), [self.point], [v.to(self.point.dtype)])[0]


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def power_iteration(matvec, dim: int, *, iters: int = 100, tol: float = 1e-6, seed: int = 0,
                    dtype=torch.float32) -> float:
    """The eigenvalue of largest magnitude (λmax for the PSD-dominated Hessians of trained
    networks), as the Rayleigh quotient vᵀHv of the iterate; stops when it changes < tol·|λ|."""
    v = _unit(torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=dtype))
    value = 0.0
    for _ in range(iters):
        hv = matvec(v)
        new = float(v @ hv)
        norm = hv.norm()
        if norm == 0:
            return 0.0
        v = hv / norm
        if abs(new - value) <= tol * max(abs(new), 1e-12):
            return new
        value = new
    return value


def lanczos(matvec, dim: int, *, steps: int = 50, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Ritz values (ascending) of a symmetric operator after `steps` Lanczos steps with full
    reorthogonalisation; with steps ≥ dim they are its exact eigenvalues (up to rounding)."""
    steps = min(steps, dim)
    basis = torch.zeros(steps, dim, dtype=torch.float64)
    alpha, beta = [], []
    q = _unit(torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    for j in range(steps):
        basis[j] = q
        w = matvec(q.to(dtype)).to(torch.float64)
        alpha.append(float(q @ w))
        # Gram-Schmidt twice against every earlier vector: keeps the basis orthogonal, so no
        # spurious copies of converged eigenvalues appear.
        for _ in range(2):
            w = w - basis[:j + 1].T @ (basis[:j + 1] @ w)
        b = float(w.norm())
        if j == steps - 1 or b < 1e-10 * max(1.0, abs(alpha[-1])):
            break
        beta.append(b)
        q = w / b
    k = len(alpha)
    tri = torch.diag(torch.tensor(alpha, dtype=torch.float64))
    if k > 1:
        off = torch.tensor(beta[:k - 1], dtype=torch.float64)
        tri += torch.diag(off, 1) + torch.diag(off, -1)
    return torch.linalg.eigvalsh(tri)


def restricted_spectrum(model: nn.Module, x: torch.Tensor, y: torch.Tensor, masks: Mapping | None = None, *,
                        method: str = "lanczos", steps: int = 60, loss_fn=F.cross_entropy, params=None,
                        seed: int = 0) -> dict:
    """λmax, λmin and κ = λmax/|λmin| of the restricted Hessian H^m at the model's weights ⊙ m.

    method="lanczos" gives all three; method="power" gives λmax only (λmin, κ are NaN).
    """
    if method not in ("lanczos", "power"):
        raise PrunekitError(f"method must be 'lanczos' or 'power', not {method!r}.")
    problem = RestrictedLoss(model, x, y, masks, loss_fn=loss_fn, params=params)
    dtype = problem.point.dtype
    if method == "power":
        top = power_iteration(problem.hvp, problem.dim, iters=steps, seed=seed, dtype=dtype)
        return {"dim": problem.dim, "lambda_max": top, "lambda_min": math.nan, "condition": math.nan,
                "loss": float(problem(problem.point))}
    ritz = lanczos(problem.hvp, problem.dim, steps=steps, seed=seed, dtype=dtype)
    top, bottom = float(ritz[-1]), float(ritz[0])
    return {"dim": problem.dim, "lambda_max": top, "lambda_min": bottom,
            "condition": top / abs(bottom) if bottom != 0 else math.inf, "loss": float(problem(problem.point))}
