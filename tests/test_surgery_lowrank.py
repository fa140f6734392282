"""Truncated SVD: Eckart–Young error, optimality against other factorisations, layers, rank allocation."""

import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.allocate import GreedyAllocator
from prunekit.data import load_dataset
from prunekit.errors import PrunekitError
from prunekit.allocate import RankProblem
from prunekit.surgery import energy_rank, factorize, low_rank, svd_factors, useful_rank

pytestmark = pytest.mark.usefixtures("one_thread")


def _matrix(m=30, n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, n, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("rank", [1, 5, 19, 20])
def test_truncation_error_is_the_sum_of_discarded_squared_singular_values(rank):
    w = _matrix()
    a, b = svd_factors(w, rank)
    sigma = torch.linalg.svdvals(w)
    error = ((w - a @ b) ** 2).sum()
    assert torch.isclose(error, (sigma[rank:] ** 2).sum(), rtol=1e-9, atol=1e-9)


def _other_factorisations(w, r, g):
    """Rank-r approximations built other ways: each must be no better than the truncated SVD."""
    m, n = w.shape
    a = torch.randn(m, r, generator=g, dtype=w.dtype)
    yield "random A, least-squares B", a @ torch.linalg.lstsq(a, w).solution
    q, _ = torch.linalg.qr(w @ torch.randn(n, r, generator=g, dtype=w.dtype))
    yield "randomised range finder", q @ (q.T @ w)
    cols = torch.randperm(n, generator=g)[:r]
    c = w[:, cols]
    yield "column subset", c @ torch.linalg.lstsq(c, w).solution
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    yield "largest-but-one singular values", (u[:, 1:r + 1] * s[1:r + 1]) @ vh[1:r + 1]
    yield "perturbed SVD factors", (u[:, :r] + 0.01 * torch.randn(m, r, generator=g, dtype=w.dtype)) * s[:r] @ vh[:r]
    a = torch.randn(m, r, generator=g, dtype=w.dtype)
    for _ in range(5):  # a few alternating least-squares sweeps from a random start
        b = torch.linalg.lstsq(a, w).solution
        a = torch.linalg.lstsq(b.T, w.T).solution.T
    yield "alternating least squares", a @ b


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_svd_is_never_worse_than_any_other_rank_r_factorisation_tried(seed):
    w = _matrix(seed=seed) @ torch.diag(torch.logspace(0, -2, 20, dtype=torch.float64))
    g = torch.Generator().manual_seed(seed)
    for r in (1, 4, 10):
        a, b = svd_factors(w, r)
        best = ((w - a @ b) ** 2).sum()
        for name, approx in _other_factorisations(w, r, g):
            assert torch.linalg.matrix_rank(approx) <= r
            assert ((w - approx) ** 2).sum() >= best * (1 - 1e-9), name


def test_energy_rank_is_the_smallest_rank_reaching_the_threshold():
    sigma = torch.tensor([4.0, 2.0, 1.0, 1.0])  # σ² = 16, 4, 1, 1 of 22
    assert energy_rank(sigma, 16 / 22) == 1
    assert energy_rank(sigma, 16 / 22 + 1e-6) == 2
    assert energy_rank(sigma, 0.99) == 4 and energy_rank(sigma, 1.0) == 4
    with pytest.raises(PrunekitError):
        energy_rank(sigma, 0.0)


@pytest.mark.parametrize("layer", [nn.Linear(12, 9), nn.Conv2d(3, 8, 3, stride=2, padding=1),
                                   nn.Conv1d(4, 6, 5, dilation=2, bias=False)])
def test_factorised_layer_computes_the_rank_r_weight(layer):
    torch.manual_seed(0)
    x = torch.randn(2, *{nn.Linear: (12,), nn.Conv2d: (3, 7, 7), nn.Conv1d: (4, 20)}[type(layer)])
    w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
    full = factorize(layer, min(w.shape))
    assert torch.allclose(full(x), layer(x), atol=1e-5)  # full rank: the same layer
    a, b = svd_factors(w, 2)
    reference = copy.deepcopy(layer)
    with torch.no_grad():
        reference.weight.copy_((a @ b).reshape(layer.weight.shape))
    assert torch.allclose(factorize(layer, 2)(x), reference(x), atol=1e-5)


def test_low_rank_by_energy_skips_layers_that_would_grow_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 3))
    pk.prune(model, 0.5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    small, rows = low_rank(model, energy=0.6)
    by = {r["layer"]: r for r in rows}
    assert by["0"]["factorised"] and by["0"]["params_after"] == by["0"]["rank"] * 70
    assert by["0"]["energy_kept"] >= 0.6
    assert not by["2"]["factorised"] or by["2"]["rank"] <= useful_rank(3, 30)
    assert isinstance(small[0], nn.Sequential) and isinstance(model[0], nn.Linear)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with pytest.raises(PrunekitError, match="exactly one"):
        low_rank(model, energy=0.5, ranks={"0": 2})
    with pytest.raises(PrunekitError, match="rank"):
        low_rank(model, ranks={"0": 31})


def test_rank_problem_costs_are_the_factorised_models_parameters_and_greedy_meets_the_budget():
    data = load_dataset("digits")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
    problem = RankProblem(model, data.test)
    for counts in ({}, {"1": 1}, {"1": 5, "3": 2}, problem.max_counts()):
        factored = problem.apply(counts)
        assert problem.cost(counts) == sum(p.numel() for p in factored.parameters())
    allocation = GreedyAllocator(0.6, step=0.2).allocate(problem)
    assert allocation.met
    ranks = problem.ranks(allocation.counts)
    assert sum(p.numel() for p in low_rank(model, ranks=ranks)[0].parameters()) == allocation.achieved


def test_rank_problem_flops_are_the_factorised_models_flops():
    from prunekit.accounting import count_flops

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 24, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(24 * 6 * 6, 10))
    x = torch.randn(1, 3, 16, 16)
    problem = RankProblem(model, None, x, metric="flops")
    assert {l.name for l in problem.layers} == {"0", "2", "5"}
    for counts in ({}, {"0": 1}, {"2": 3, "5": 2}, problem.max_counts()):
        assert problem.cost(counts) == count_flops(problem.apply(counts), x)["dense_flops"]
    with pytest.raises(PrunekitError, match="example_input"):
        RankProblem(model, None, metric="flops")
