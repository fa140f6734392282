"""SNIP, Taylor, GraSP and OBD, each against a computation that does not use prunekit."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.criteria import OBD, SNIP, GraSP, Taylor
from prunekit.masks import apply_masks, named_parameters, resolve_parameters

pytestmark = pytest.mark.usefixtures("one_thread")



def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def _batches(n=3, size=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (size,), generator=g))
            for _ in range(n)]


def _hand_grads(model, batches):
    """Per-batch gradients by plain loss.backward() on a copy."""
    out = []
    for x, y in batches:
        clone = copy.deepcopy(model)
        F.cross_entropy(clone(x), y).backward()
        out.append({n: p.grad.clone() for n, p in named_parameters(clone).items()})
    return out


def test_snip_is_abs_w_times_mean_gradient():
    model, batches = _net(), _batches()
    params = resolve_parameters(model)
    scores = SNIP().scores(model, params, batches=batches, loss_fn=F.cross_entropy)
    grads = _hand_grads(model, batches)
    for n, p in params.items():
        g = sum(b[n] for b in grads) / len(grads)
        torch.testing.assert_close(scores[n], (p.detach() * g).abs())


def test_snip_on_a_masked_model_uses_the_effective_weight():
    model, batches = _net(), _batches(1)
    mask = torch.rand(6, 5, generator=torch.Generator().manual_seed(3)) > 0.5
    apply_masks(model, {"0.weight": mask})
    params = resolve_parameters(model)
    scores = SNIP().scores(model, params, batches=batches, loss_fn=F.cross_entropy)
    # by hand: a plain copy with the masked weights baked in; the mask variable's gradient is w·∂L/∂w̃
    plain = _net()
    with torch.no_grad():
        plain[0].weight.mul_(mask)
    grads = _hand_grads(plain, batches)[0]
    torch.testing.assert_close(scores["0.weight"], (plain[0].weight.detach() * grads["0.weight"]).abs())
    assert torch.equal(scores["0.weight"][~mask], torch.zeros(int((~mask).sum()), dtype=torch.float64))


def test_taylor_mean_squared_and_unit_sum():
    model, batches = _net(), _batches()
    params = resolve_parameters(model)
    grads = _hand_grads(model, batches)
    w = {n: p.detach() for n, p in params.items()}
    mean = Taylor().scores(model, params, batches=batches, loss_fn=F.cross_entropy)
    squared = Taylor(accumulate="squared").scores(model, params, batches=batches, loss_fn=F.cross_entropy)
    signed = Taylor(signed=True).scores(model, params, batches=batches, loss_fn=F.cross_entropy)
    for n in params:
        gbar = sum(b[n] for b in grads) / len(grads)
        torch.testing.assert_close(mean[n], (w[n] * gbar).abs())
        torch.testing.assert_close(squared[n], sum((w[n] * b[n]) ** 2 for b in grads) / len(grads))
    # a neuron's (row's) Taylor estimate |Σ_i g_i w_i| from the signed contributions
    from prunekit.granularity import aggregate, unit_ids
    ids, n_units = unit_ids(params["0.weight"].shape, "neuron")
    unit = aggregate(signed["0.weight"], ids, n_units, how="sum").abs()
    gbar = sum(b["0.weight"] for b in grads) / len(grads)
    torch.testing.assert_close(unit, (w["0.weight"] * gbar).sum(1).abs())


def test_grasp_hg_equals_finite_differences_of_the_gradient():
    model, batches = _net(), _batches(2)
    params = resolve_parameters(model)
    g, hg = GraSP().hessian_gradient(model, params, batches=batches, loss_fn=F.cross_entropy)
    eps = 1e-5

    def mean_grad(shift):
        m = copy.deepcopy(model)
        with torch.no_grad():
            for (n, p), s in zip(resolve_parameters(m).items(), shift):
                p.add_(s)
        gs = _hand_grads(m, batches)
        return [sum(b[n] for b in gs) / len(gs) for n in params]

    plus, minus = mean_grad([eps * x for x in g]), mean_grad([-eps * x for x in g])
    for h, a, b in zip(hg, plus, minus):
        torch.testing.assert_close(h, (a - b) / (2 * eps), rtol=1e-4, atol=1e-8)


def test_grasp_sign_matches_the_change_of_gradient_norm():
    """Paper: S = −w⊙Hg predicts ΔG = ‖g(θ−εw_i e_i)‖² − ‖g(θ)‖² ≈ 2ε S_i; prunekit returns −S."""
    model, batches = _net(), _batches(1)
    params = resolve_parameters(model)
    crit = GraSP()
    paper = crit.paper_scores(model, params, batches=batches, loss_fn=F.cross_entropy)
    importance = crit.scores(model, params, batches=batches, loss_fn=F.cross_entropy)
    eps = 1e-4

    def grad_norm2(m):
        g = _hand_grads(m, batches)[0]
        return sum((g[n] ** 2).sum() for n in params)

    base = grad_norm2(model)
    for n, idx in [("0.weight", (2, 3)), ("2.weight", (1, 4)), ("0.weight", (5, 0))]:
        m = copy.deepcopy(model)
        with torch.no_grad():
            w = named_parameters(m)[n]
            w[idx] -= eps * w[idx]
        change = grad_norm2(m) - base
        torch.testing.assert_close(change / (2 * eps), paper[n][idx], rtol=1e-3, atol=1e-9)
        assert importance[n][idx] == -paper[n][idx]


def _quadratic_model(target):
    class Direct(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(target.clone())

        def forward(self, x):
            return self.w

    return Direct()


@pytest.mark.parametrize("estimate", ["exact", "hutchinson"])
def test_obd_equals_exact_loss_change_on_a_separable_quadratic(estimate):
    g = torch.Generator().manual_seed(0)
    target = torch.randn(3, 4, generator=g, dtype=torch.float64)
    curvature = torch.rand(3, 4, generator=g, dtype=torch.float64) + 0.1
    model = _quadratic_model(target)
    with torch.no_grad():
        model.w.copy_(target + 0.3)  # the minimum of the loss below is at w = target + 0.3

    def loss_fn(out, y):
        return 0.5 * (curvature * (out - y) ** 2).sum()

    batches = [(torch.zeros(1), target + 0.3)]
    scores = OBD(estimate).scores(model, {"w": model.w}, batches=batches, loss_fn=loss_fn)["w"]
    base = loss_fn(model.w.detach(), target + 0.3)
    exact = torch.empty_like(target)
    for i in range(3):
        for j in range(4):
            w = model.w.detach().clone()
            w[i, j] = 0.0
            exact[i, j] = loss_fn(w, target + 0.3) - base
    torch.testing.assert_close(scores, exact)


def test_obd_exact_diagonal_equals_autograd_functional_hessian():
    model, batches = _net(), _batches(2)
    params = resolve_parameters(model)
    diag = OBD("exact").diagonal(model, params, batches=batches, loss_fn=F.cross_entropy)
    w0, b0, w2, b2 = (p.detach() for p in model.parameters())

    def loss_w0(w):
        return sum(F.cross_entropy(torch.tanh(x @ w.T + b0) @ w2.T + b2, y) for x, y in batches) / len(batches)

    def loss_w2(w):
        return sum(F.cross_entropy(torch.tanh(x @ w0.T + b0) @ w.T + b2, y) for x, y in batches) / len(batches)

    for d, f, w in [(diag[0], loss_w0, w0), (diag[1], loss_w2, w2)]:
        h = torch.autograd.functional.hessian(f, w).reshape(w.numel(), w.numel())
        torch.testing.assert_close(d.reshape(-1), torch.diagonal(h))
    scores = OBD("exact").scores(model, params, batches=batches, loss_fn=F.cross_entropy)
    torch.testing.assert_close(scores["0.weight"], 0.5 * diag[0] * w0 ** 2)


def test_obd_hutchinson_approaches_exact_with_more_samples():
    model, batches = _net(), _batches(1)
    params = resolve_parameters(model)
    exact = torch.cat([d.reshape(-1) for d in OBD("exact").diagonal(model, params, batches=batches,
                                                                   loss_fn=F.cross_entropy)])
    err = []
    for samples in (2, 800):
        est = OBD("hutchinson", samples=samples).diagonal(model, params, batches=batches, loss_fn=F.cross_entropy)
        err.append(float((torch.cat([e.reshape(-1) for e in est]) - exact).norm() / exact.norm()))
    assert err[1] < 0.25 and err[1] < err[0], err


def test_obd_fisher_is_mean_of_per_example_squared_gradients():
    model, batches = _net(), _batches(2, size=5)
    params = resolve_parameters(model)
    fisher = OBD("fisher", fisher_chunk=3).diagonal(model, params, batches=batches, loss_fn=F.cross_entropy)
    singles = [(x[i:i + 1], y[i:i + 1]) for x, y in batches for i in range(len(x))]
    per = _hand_grads(model, singles)
    for d, n in zip(fisher, params):
        torch.testing.assert_close(d, sum(p[n] ** 2 for p in per) / len(per))


def test_obd_exact_refuses_a_large_selection():
    from prunekit.errors import PrunekitError
    model = _net()
    with pytest.raises(PrunekitError, match="hutchinson"):
        OBD("exact", max_elements=10).scores(model, resolve_parameters(model), batches=_batches(1),
                                             loss_fn=F.cross_entropy)
    with pytest.raises(PrunekitError, match="one of"):
        OBD("diagonal")

