import itertools

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit import selection


def brute_force_projection(w: torch.Tensor, keep: int) -> torch.Tensor:
    """argmin over all supports of size `keep` of ‖w − v‖₂ with v supported there."""
    best, best_err = None, float("inf")
    flat = w.reshape(-1)
    for support in itertools.combinations(range(flat.numel()), keep):
        v = torch.zeros_like(flat)
        v[list(support)] = flat[list(support)]
        err = float(torch.linalg.vector_norm(flat - v))
        if err < best_err - 1e-12:
            best, best_err = v, err
    return best.reshape(w.shape)


@pytest.mark.parametrize("seed", range(5))
def test_magnitude_is_the_euclidean_projection_onto_k_sparse(seed):
    torch.manual_seed(seed)
    layer = nn.Linear(3, 3, bias=False)
    for k in range(0, 10, 2):
        w = layer.weight.detach().clone()
        model = nn.Sequential(nn.Linear(3, 3, bias=False))
        with torch.no_grad():
            model[0].weight.copy_(w)
        pk.prune(model, k, params=["0.weight"])
        assert torch.equal(pk.effective_weight(model, "0.weight").detach(), brute_force_projection(w, 9 - k))


def test_global_prunes_exact_count_and_local_per_tensor():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 7), nn.ReLU(), nn.Linear(7, 5))
    masks = pk.prune(model, 33)
    assert masks.numel() - masks.kept() == 33
    model2 = nn.Sequential(nn.Linear(10, 7), nn.ReLU(), nn.Linear(7, 5))
    masks2 = pk.prune(model2, 0.4, scope="local")
    assert {n: int((~m).sum()) for n, m in masks2.items()} == {"0.weight": 28, "2.weight": 14}


def test_global_matches_independent_threshold():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10))
    weights = torch.cat([model[0].weight.detach().abs().flatten(), model[2].weight.detach().abs().flatten()])
    k = int(0.7 * weights.numel())
    tau = weights.sort().values[k]  # continuous random weights: no ties
    masks = pk.prune(model, 0.7)
    assert torch.equal(masks["0.weight"], model[0].weight.detach().abs() >= tau)
    assert torch.equal(masks["2.weight"], model[2].weight.detach().abs() >= tau)


def test_ties_broken_by_position_deterministically():
    scores = {"a": torch.ones(2, 3), "b": torch.ones(4)}
    masks = selection.global_masks(scores, 5)
    assert masks["a"].flatten().tolist() == [False] * 5 + [True]
    assert masks["b"].tolist() == [True] * 4


def test_threshold_pruning():
    model = nn.Sequential(nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.05, -0.2], [-0.01, 0.3]]))
    masks = pk.prune_threshold(model, 0.1)
    assert masks["0.weight"].tolist() == [[False, True], [False, True]]


def test_repruning_only_shrinks_masks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    previous = pk.prune(model, 0.3)
    for s in (0.5, 0.8, 0.95):
        with torch.no_grad():  # perturb surviving weights so the ranking changes between rounds
            for p in model.parameters():
                p.add_(0.5 * torch.randn_like(p))
        current = pk.prune(model, s)
        assert current.is_subset_of(previous)
        previous = current


@pytest.mark.parametrize("amount, message", [
    (1.5, "outside"), (-0.1, "outside"), (float("nan"), "outside"), (10_000, "only"), ("0.5", "float fraction"),
    (True, "float fraction"),
])
def test_bad_amounts_raise_and_leave_model_untouched(amount, message):
    model = nn.Sequential(nn.Linear(4, 4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pk.AmountError, match=message):
        pk.prune(model, amount)
    assert len(pk.get_masks(model)) == 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_bad_parameter_selection():
    model = nn.Sequential(nn.Linear(4, 4), nn.Embedding(3, 4))
    with pytest.raises(pk.MaskError, match="Did you mean '0.weight'"):
        pk.prune(model, 0.5, params=["0.wieght"])
    model.register_buffer("counts", torch.zeros(3, dtype=torch.long))
    int_param = nn.Parameter(torch.zeros(3, 3, dtype=torch.long), requires_grad=False)
    model.register_parameter("steps", int_param)
    with pytest.raises(pk.MaskError, match="floating-point"):
        pk.prune(model, 0.5, params=["steps"])
    with pytest.raises(pk.PrunekitError, match="scope"):
        pk.prune(model, 0.5, scope="layer")
    assert len(pk.get_masks(model)) == 0


def test_nan_scores_rejected():
    with pytest.raises(pk.AmountError, match="NaN"):
        selection.global_masks({"a": torch.tensor([1.0, float("nan")])}, 1)


def test_same_seed_same_masks():
    def run():
        torch.manual_seed(3)
        model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
        return pk.prune(model, 0.75)
    assert run() == run()
