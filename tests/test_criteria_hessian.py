"""prunekit.hessian against torch.autograd.functional.hessian and finite differences."""

import pytest
import torch

from prunekit import hessian
from prunekit.errors import PrunekitError

pytestmark = pytest.mark.usefixtures("one_thread")



def _tiny_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (16,), generator=g)
    w1 = torch.randn(4, 3, generator=g, dtype=torch.float64)
    w2 = torch.randn(2, 4, generator=g, dtype=torch.float64)

    def loss(ps):
        a, b = ps
        return torch.nn.functional.cross_entropy(torch.tanh(x @ a.T) @ b.T, y)

    return loss, [w1, w2]


def _full_hessian(loss, params):
    sizes = [p.numel() for p in params]

    def flat_loss(v):
        parts, start = [], 0
        for p, n in zip(params, sizes):
            parts.append(v[start:start + n].reshape(p.shape))
            start += n
        return loss(parts)

    return torch.autograd.functional.hessian(flat_loss, torch.cat([p.reshape(-1) for p in params]))


def test_hvp_equals_full_hessian_times_vector():
    loss, params = _tiny_problem()
    g = torch.Generator().manual_seed(1)
    vs = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]
    hv = hessian.hvp(loss, params, vs)
    expected = _full_hessian(loss, params) @ torch.cat([v.reshape(-1) for v in vs])
    torch.testing.assert_close(torch.cat([h.reshape(-1) for h in hv]), expected)


def test_hvp_accepts_dicts_and_leaves_inputs_untouched():
    loss, params = _tiny_problem()
    named = {"a": params[0], "b": params[1]}
    before = [p.clone() for p in params]
    out = hessian.hvp(lambda d: loss([d["a"], d["b"]]), named, {"a": params[0], "b": params[1]})
    assert set(out) == {"a", "b"}
    assert all(torch.equal(p, q) and p.grad is None for p, q in zip(params, before))


def test_exact_diagonal_equals_autograd_functional_hessian():
    loss, params = _tiny_problem()
    diag = hessian.exact_diagonal(loss, params)
    expected = torch.diagonal(_full_hessian(loss, params))
    torch.testing.assert_close(torch.cat([d.reshape(-1) for d in diag]), expected)


def test_hutchinson_converges_to_exact_diagonal():
    loss, params = _tiny_problem()
    exact = torch.cat([d.reshape(-1) for d in hessian.exact_diagonal(loss, params)])
    errors = []
    for samples in (4, 256, 4096):
        est = hessian.hutchinson_diagonal(loss, params, samples=samples, generator=torch.Generator().manual_seed(2))
        errors.append(float((torch.cat([e.reshape(-1) for e in est]) - exact).norm() / exact.norm()))
    assert errors[2] < errors[0] and errors[2] < 0.1, errors


def test_hutchinson_is_exact_for_a_diagonal_hessian_in_one_sample():
    a = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    est = hessian.hutchinson_diagonal(lambda ps: 0.5 * (a * ps[0] ** 2).sum(), [torch.ones(3, dtype=torch.float64)])
    torch.testing.assert_close(est[0], a)


def test_gradient_and_hg_match_finite_differences_of_the_gradient():
    loss, params = _tiny_problem()
    g, hg = hessian.gradient_and_hvp(loss, params)
    eps = 1e-6
    plus = hessian.gradient(loss, [p + eps * gi for p, gi in zip(params, g)])
    minus = hessian.gradient(loss, [p - eps * gi for p, gi in zip(params, g)])
    for h, a, b in zip(hg, plus, minus):
        torch.testing.assert_close(h, (a - b) / (2 * eps), rtol=1e-5, atol=1e-7)


def test_linear_loss_has_zero_hessian():
    hv = hessian.hvp(lambda ps: (3.0 * ps[0]).sum(), [torch.ones(2)], [torch.ones(2)])
    assert torch.equal(hv[0], torch.zeros(2))


def test_exact_diagonal_refuses_large_problems_and_bad_input():
    with pytest.raises(PrunekitError, match="Hutchinson"):
        hessian.exact_diagonal(lambda ps: ps[0].sum(), [torch.ones(10)], max_elements=5)
    with pytest.raises(PrunekitError, match="single tensor"):
        hessian.hvp(lambda ps: ps[0].sum(), torch.ones(2), [torch.ones(2)])
    with pytest.raises(PrunekitError, match="same shapes"):
        hessian.hvp(lambda ps: (ps[0] ** 2).sum(), [torch.ones(2)], [torch.ones(3)])
    with pytest.raises(PrunekitError, match="scalar"):
        hessian.gradient(lambda ps: ps[0] * 2, [torch.ones(2)])


def test_rademacher_entries_are_balanced_signs_and_seeded():
    t = torch.empty(1000, 100)
    a = hessian.rademacher_like(t, torch.Generator().manual_seed(0))
    b = hessian.rademacher_like(t, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and set(a.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(a.mean())) < 0.01  # 10⁵ fair signs: std of the mean ≈ 0.003
    assert abs(float((a[:, :-1] * a[:, 1:]).mean())) < 0.01  # neighbours independent
