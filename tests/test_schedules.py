import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from prunekit import PrunekitError, get_masks
from prunekit.regularizers import L1, L2, ElasticNet, GroupLasso, with_penalty
from prunekit.schedules import GradualPruning, cubic_sparsity, iterative, iterative_targets, one_shot, sparsity_curve
from prunekit.training import TrainConfig, train


def tiny_problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(200, 6)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return model, TensorDataset(x, y)


def test_cubic_schedule_closed_form_monotone_and_exact_end():
    sched = GradualPruning(0.87, initial=0.1, start=10, frequency=7, events=9)
    curve = sparsity_curve(sched, sched.end + 20)
    assert curve[0] == 0.1 and curve[sched.start] == 0.1
    assert curve[sched.end] == 0.87 and curve[-1] == 0.87  # exactly s_f, not 0.87 ± rounding
    assert bool((curve[1:] >= curve[:-1]).all())
    t = 10 + 3 * 7
    assert math.isclose(curve[t].item(), 0.87 + (0.1 - 0.87) * (1 - 3 / 9) ** 3, rel_tol=1e-12)
    assert cubic_sparsity(5, 0.0, 0.5, 0, 5, 2) == 0.5 * (1 - 0.125)


def test_gradual_pruning_in_training_hits_final_sparsity_and_masks_shrink():
    model, data = tiny_problem()
    sched = GradualPruning(0.8, start=5, frequency=5, events=4)
    seen = []
    def hook(step, m):
        sched(step, m)
        if sched.is_event(step):
            seen.append(get_masks(m))
    train(model, data, TrainConfig(steps=30, batch_size=20, lr=1e-2), on_step=hook, progress=False)
    assert [h[0] for h in sched.history] == [5, 10, 15, 20, 25]
    assert all(a.is_subset_of(b) for b, a in zip(seen, seen[1:]))
    total = sum(p.numel() for n, p in model.named_parameters() if n.endswith("original"))
    assert get_masks(model).kept() == total - round(0.8 * total)
    assert sched.history[-1][2] == pytest.approx(0.8, abs=1 / total)


def test_schedule_rejects_bad_input():
    with pytest.raises(PrunekitError):
        GradualPruning(1.0)
    with pytest.raises(PrunekitError):
        GradualPruning(0.5, initial=0.6)
    with pytest.raises(PrunekitError):
        iterative_targets(0.9, 0)


def test_iterative_targets_and_rounds():
    assert iterative_targets(0.7, 3, first=0.3) == pytest.approx([0.3, 0.5, 0.7])
    geo = iterative_targets(0.936, 3)
    assert geo[-1] == 0.936 and geo[0] == pytest.approx(0.6, abs=1e-3)
    model, data = tiny_problem()
    config = TrainConfig(steps=10, batch_size=20)
    history = iterative(model, [0.3, 0.5, 0.7], data, config)
    assert [round(m.sparsity(), 2) for m in history] == [0.3, 0.5, 0.7]
    assert all(a.is_subset_of(b) for b, a in zip(history, history[1:]))
    with pytest.raises(PrunekitError):
        iterative(model, [0.5, 0.3], data, config)


def test_one_shot_equals_prune():
    model, _ = tiny_problem()
    masks = one_shot(model, 0.5)
    assert masks.sparsity() == pytest.approx(0.5, abs=1e-2)


def _grad(model, reg):
    model.zero_grad()
    reg(model).backward()
    return [p.grad.clone() for p in (model[0].weight, model[2].weight)]


def test_regularizer_values_and_gradients_closed_form():
    model, _ = tiny_problem()
    w1, w2 = model[0].weight.detach(), model[2].weight.detach()
    assert L1(0.3)(model).item() == pytest.approx(0.3 * (w1.abs().sum() + w2.abs().sum()).item(), rel=1e-6)
    assert L2(0.3)(model).item() == pytest.approx(0.15 * (w1.pow(2).sum() + w2.pow(2).sum()).item(), rel=1e-6)
    enet = ElasticNet(0.3, l1_ratio=0.25)
    g1, _ = _grad(model, enet)
    assert torch.allclose(g1, 0.3 * (0.25 * w1.sign() + 0.75 * w1), atol=1e-6)
    # group lasso over output rows: gradient of √n‖w_g‖ is √n w_g / ‖w_g‖
    gl = GroupLasso(0.1, unit_dims=(0,))
    expected = 0.1 * (math.sqrt(6) * w1.norm(dim=1).sum() + math.sqrt(16) * w2.norm(dim=1).sum())
    assert gl(model).item() == pytest.approx(expected.item(), rel=1e-6)
    g1, _ = _grad(model, gl)
    assert torch.allclose(g1, 0.1 * math.sqrt(6) * w1 / w1.norm(dim=1, keepdim=True), atol=1e-6)


def test_group_lasso_on_pruned_group_has_finite_gradient_and_shrinks_groups():
    model, data = tiny_problem()
    with torch.no_grad():
        model[0].weight[3].zero_()
    g1, _ = _grad(model, GroupLasso(1.0))
    assert torch.isfinite(g1).all() and g1[3].abs().sum() == 0
    model, data = tiny_problem()
    before = model[0].weight.detach().norm(dim=1)
    reg = GroupLasso(0.05)
    train(model, data, TrainConfig(steps=60, batch_size=50, lr=1e-2),
          loss_fn=with_penalty(F.cross_entropy, model, reg), progress=False)
    after = model[0].weight.detach().norm(dim=1)
    assert after.median() < 0.5 * before.median()  # rows are driven towards zero as groups


def test_regularizer_rejects_bad_input():
    model, _ = tiny_problem()
    with pytest.raises(PrunekitError):
        L1(-1.0)
    with pytest.raises(PrunekitError):
        ElasticNet(1.0, l1_ratio=2.0)
    with pytest.raises(PrunekitError):
        GroupLasso(1.0, unit_dims=(5,))(model)
    with pytest.raises(PrunekitError):
        with_penalty(F.cross_entropy, model, L1(1.0, params=["nope.weight"]))
