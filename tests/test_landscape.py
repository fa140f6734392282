import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit import PrunekitError, get_masks, named_parameters, prune
from prunekit.landscape import RestrictedLoss, lanczos, power_iteration, restricted_spectrum


def tiny(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(30, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (30,))
    return model, x, y


def dense_masked_hessian(model, x, y, masks):
    """Independent truth: the full Hessian of a hand-written forward pass over all 43
    parameters at w ⊙ m, then its rows/columns of the unmasked coordinates."""
    shapes = [(5, 4), (5,), (3, 5), (3,)]
    names = ["0.weight", "0.bias", "2.weight", "2.bias"]
    params = named_parameters(model)  # canonical names, dense tensors
    values = {n: torch.where(masks[n], params[n].detach(), 0.0) if n in masks else params[n].detach()
              for n in names}
    flat = torch.cat([values[n].reshape(-1) for n in names])
    keep = torch.cat([masks[n].reshape(-1) if n in masks else torch.ones(values[n].numel(), dtype=torch.bool)
                      for n in names])

    def loss(theta):
        parts, start = [], 0
        for s in shapes:
            k = torch.Size(s).numel()
            parts.append(theta[start:start + k].reshape(s))
            start += k
        w1, b1, w2, b2 = parts
        return F.cross_entropy(torch.tanh(x @ w1.T + b1) @ w2.T + b2, y)

    full = torch.autograd.functional.hessian(loss, flat)
    idx = keep.nonzero().reshape(-1)
    return full[idx][:, idx]


def test_restricted_eigenvalues_match_dense_eigendecomposition():
    model, x, y = tiny()
    prune(model, 0.5, scope="local")
    masks = get_masks(model)
    truth = torch.linalg.eigvalsh(dense_masked_hessian(model, x, y, masks))
    problem = RestrictedLoss(model, x, y)
    assert problem.dim == truth.numel() == 43 - 10 - 8  # half of 20 and of 15 (rounded) pruned
    ritz = lanczos(problem.hvp, problem.dim, steps=problem.dim, dtype=torch.float64)
    # A Krylov space holds one copy of a repeated eigenvalue (several zeros here), so compare
    # as sets: every Ritz value is an eigenvalue, and both extremes are found.
    assert all((truth - r).abs().min() < 1e-9 for r in ritz)
    assert ritz[0] == pytest.approx(truth[0].item(), abs=1e-9) and ritz[-1] == pytest.approx(truth[-1].item())
    spec = restricted_spectrum(model, x, y, steps=100)
    assert spec["lambda_max"] == pytest.approx(truth[-1].item(), rel=1e-9)
    assert spec["lambda_min"] == pytest.approx(truth[0].item(), rel=1e-6, abs=1e-9)
    assert spec["condition"] == pytest.approx(truth[-1].item() / abs(truth[0].item()), rel=1e-6)
    dominant = truth[truth.abs().argmax()].item()
    top = power_iteration(problem.hvp, problem.dim, iters=5000, tol=1e-13, dtype=torch.float64)
    assert top == pytest.approx(dominant, rel=1e-5)


def test_few_lanczos_steps_already_bound_the_extremes():
    model, x, y = tiny(1)
    prune(model, 0.3)
    truth = torch.linalg.eigvalsh(dense_masked_hessian(model, x, y, get_masks(model)))
    spec = restricted_spectrum(model, x, y, steps=12)
    # Ritz values lie inside the spectrum and the extremes converge first.
    assert truth[0] - 1e-12 <= spec["lambda_min"] and spec["lambda_max"] <= truth[-1] + 1e-12
    assert spec["lambda_max"] == pytest.approx(truth[-1].item(), rel=1e-3)


def test_explicit_masks_override_and_model_is_untouched():
    model, x, y = tiny(2)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = {"0.weight": torch.rand(5, 4, generator=torch.Generator().manual_seed(0)) > 0.5}
    full = {"0.weight": masks["0.weight"], "2.weight": torch.ones(3, 5, dtype=torch.bool)}
    truth = torch.linalg.eigvalsh(dense_masked_hessian(model_with_masks(model, full), x, y, full))
    spec = restricted_spectrum(model, x, y, masks, steps=100)
    assert spec["lambda_max"] == pytest.approx(truth[-1].item(), rel=1e-9)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and all(p.grad is None for p in model.parameters())
    assert len(get_masks(model)) == 0


def model_with_masks(model, masks):
    import copy
    from prunekit import apply_masks
    other = copy.deepcopy(model)
    apply_masks(other, masks)
    return other


def test_bad_input():
    model, x, y = tiny()
    with pytest.raises(PrunekitError):
        restricted_spectrum(model, x, y, method="arnoldi")
    with pytest.raises(PrunekitError):
        RestrictedLoss(model, x, y, {"0.weight": torch.zeros(5, 4, dtype=torch.bool)}, params=["0.weight"])
    with pytest.raises(PrunekitError):
        RestrictedLoss(model, x, y, params=["nope"])
