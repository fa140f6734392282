"""The one-shot layer methods against independent computations (pure torch, no transformers)."""

import pytest
import torch

from prunekit.errors import PrunekitError
from prunekit.llm import NM, InputStatistics, Magnitude, Wanda, owl_sparsities, parse_nm, sparsegpt_prune, wanda_scores
from prunekit.llm.owl import outlier_ratio
from prunekit.llm.targets import check_fits, nm_mask, parse_target, row_mask

pytestmark = pytest.mark.usefixtures("one_thread")


def correlated_inputs(tokens, features, seed=0):
    """Inputs with correlated features and unequal scales, as real activations have."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=g) / features ** 0.5 + torch.eye(features)
    scales = torch.logspace(-1, 1, features)[torch.randperm(features, generator=g)]  # not sorted by column
    return (torch.randn(tokens, features, generator=g) @ mixing) * scales


def statistics(x, gram=True, batches=3):
    stats = InputStatistics(x.shape[1], gram=gram)
    for part in x.chunk(batches):  # statistics are sums: batches must add up exactly
        stats.add(part)
    return stats


def output_error(weight, new_weight, x):
    x = x.double()
    return float((x @ weight.double().T - x @ new_weight.double().T).square().sum())


# ---------------------------------------------------------------------------------------- masks

@pytest.mark.parametrize("sparsity", [0.5, 0.6, 0.7])
def test_row_mask_prunes_the_same_count_of_lowest_scores_in_every_row(sparsity):
    scores = torch.randn(7, 40)
    mask = row_mask(scores, sparsity)
    assert (mask.sum(1) == 40 - round(sparsity * 40)).all()
    for row, keep in zip(scores, mask):  # every kept score ≥ every pruned score in its row
        assert row[keep].min() >= row[~keep].max()


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_nm_mask_keeps_the_n_largest_of_every_group(pattern):
    nm = parse_nm(pattern)
    scores = torch.randn(5, 32)
    mask = nm_mask(scores, nm).reshape(5, -1, nm.m)
    groups = scores.reshape(5, -1, nm.m)
    assert (mask.sum(-1) == nm.n).all()
    expected = groups.argsort(-1, descending=True)[..., :nm.n]
    assert torch.equal(mask, torch.zeros_like(mask).scatter_(-1, expected, True))


def test_magnitude_is_row_wise_top_magnitude():
    w = torch.randn(6, 16)
    mask = Magnitude().prune(w, None, 0.5).mask
    assert torch.equal(mask, row_mask(w.abs(), 0.5))


# ---------------------------------------------------------------------------------------- Wanda

def test_wanda_scores_equal_a_direct_loop():
    w, x = torch.randn(5, 8), correlated_inputs(50, 8)
    scores = wanda_scores(w, statistics(x, gram=False).norms)
    for i in range(5):
        for j in range(8):
            direct = abs(float(w[i, j])) * sum(float(x[t, j]) ** 2 for t in range(50)) ** 0.5
            assert scores[i, j].item() == pytest.approx(direct, rel=1e-5)


def test_wanda_masks_compare_scores_per_output_row():
    w, x = torch.randn(6, 16), correlated_inputs(64, 16)
    stats = statistics(x, gram=False)
    for target in (0.5, NM(2, 4)):
        mask = Wanda().prune(w, stats, target).mask
        expected = row_mask(w.abs() * x.norm(dim=0), 0.5) if target == 0.5 else nm_mask(w.abs() * x.norm(dim=0), target)
        assert torch.equal(mask, expected)


# ---------------------------------------------------------------------------------------- SparseGPT

def sequential_least_squares(weight, hessian, mask):
    """Brute force of SparseGPT's sweep: for each pruned column j (left to right) set w_j = 0 and
    re-solve the columns right of j by least squares, min (w − ŵ) H (w − ŵ)ᵀ, with columns ≤ j fixed."""
    w = weight.double().clone()
    original = w.clone()
    h = hessian.double()
    columns = w.shape[1]
    for j in range(columns):
        pruned = ~mask[:, j]
        if not pruned.any():
            continue
        w[pruned, j] = 0.0
        right = slice(j + 1, columns)
        if j + 1 < columns:
            # stationarity in the free columns F: H_FF (ŵ_F − w_F) = − H_F,fixed (ŵ_fixed − w_fixed)
            delta_fixed = w[pruned, :j + 1] - original[pruned, :j + 1]
            rhs = -(delta_fixed @ h[:j + 1, right])
            w[pruned, right] = original[pruned, right] + torch.linalg.solve(h[right, right], rhs.T).T
    return w


def damped_hessian(x, dampening):
    h = 2 * x.double().T @ x.double()
    return h + dampening * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)


def test_sparsegpt_equals_sequential_least_squares_for_any_mask():
    x, w = correlated_inputs(200, 12), torch.randn(5, 12)
    mask = torch.rand(5, 12, generator=torch.Generator().manual_seed(1)) > 0.5
    _, new = sparsegpt_prune(w, x.T @ x, mask=mask, block_size=4, dampening=0.01)
    expected = sequential_least_squares(w, damped_hessian(x, 0.01), mask)
    assert torch.allclose(new.double(), expected, atol=1e-4, rtol=1e-4)
    assert (new[~mask] == 0).all()


def test_sparsegpt_error_is_the_closed_form_obs_error_when_pruned_columns_come_first():
    """Removing a set P of weights optimally (the kept ones free) costs w_P [(H⁻¹)_PP]⁻¹ w_Pᵀ."""
    x, w = correlated_inputs(300, 10), torch.randn(4, 10)
    mask = torch.ones(4, 10, dtype=torch.bool)
    mask[:, :4] = False  # SparseGPT's sweep reaches the kept columns only after every pruned one
    h = damped_hessian(x, 0.01)
    _, new = sparsegpt_prune(w, x.T @ x, mask=mask, dampening=0.01)
    inverse = torch.linalg.inv(h)
    for row in range(4):
        delta = w[row].double() - new[row].double()
        achieved = float(delta @ h @ delta)
        wp = w[row, :4].double()
        closed_form = float(wp @ torch.linalg.solve(inverse[:4, :4], wp))
        assert achieved == pytest.approx(closed_form, rel=1e-4)
        # and it is the least-squares optimum over the kept weights (brute force by lstsq)
        chol = torch.linalg.cholesky(h)  # h = L Lᵀ: (w − ŵ) h (w − ŵ)ᵀ = ‖Lᵀ(w − ŵ)ᵀ‖²
        a, b = chol.T[:, 4:], chol.T @ w[row].double()
        best = torch.linalg.lstsq(a, b.unsqueeze(1)).solution.squeeze(1)
        assert float((b - a @ best).square().sum()) == pytest.approx(closed_form, rel=1e-4)


def test_sparsegpt_lazy_block_updates_equal_column_by_column_updates():
    x, w = correlated_inputs(100, 16), torch.randn(6, 16)
    gram = x.T @ x
    mask = torch.rand(6, 16, generator=torch.Generator().manual_seed(2)) > 0.4
    for options in (dict(mask=mask), dict(target=NM(2, 4))):  # float masks depend on the block by design
        mask_one, one_block = sparsegpt_prune(w, gram, block_size=16, **options)
        mask_lazy, lazy = sparsegpt_prune(w, gram, block_size=4, **options)
        assert torch.equal(mask_one, mask_lazy)
        assert torch.allclose(one_block, lazy, atol=1e-5)


@pytest.mark.parametrize("target", [0.5, 0.7, NM(2, 4), NM(4, 8)])
def test_sparsegpt_reconstructs_better_than_magnitude_with_exact_sparsity(target):
    x, w = correlated_inputs(512, 64), torch.randn(32, 64)
    mask, new = sparsegpt_prune(w, x.T @ x, target, block_size=32)
    if isinstance(target, NM):
        assert (mask.reshape(32, -1, target.m).sum(-1) == target.n).all()
    else:
        assert int((~mask).sum()) == round(target * w.numel())
    assert (new[~mask] == 0).all()
    magnitude = Magnitude().prune(w, None, target).mask
    assert output_error(w, new, x) < 0.5 * output_error(w, w * magnitude, x)


def test_sparsegpt_handles_inputs_that_are_never_active():
    x = correlated_inputs(100, 8)
    x[:, 3] = 0.0
    mask, new = sparsegpt_prune(torch.randn(4, 8), x.T @ x, 0.5, block_size=8)
    assert torch.isfinite(new).all() and int((~mask).sum()) == 16


# ---------------------------------------------------------------------------------------- OWL

def test_owl_sparsities_average_to_the_target_within_the_spread():
    ratios = [0.01, 0.03, 0.02, 0.09, 0.05]
    sparsities = owl_sparsities(ratios, 0.6, 0.08)
    assert sum(sparsities) / len(sparsities) == pytest.approx(0.6, abs=1e-12)
    assert max(sparsities) - min(sparsities) == pytest.approx(0.16)
    order = sorted(range(5), key=ratios.__getitem__)  # more outliers → pruned less
    assert [sparsities[i] for i in order] == sorted(sparsities, reverse=True)
    assert owl_sparsities([0.02, 0.02], 0.5, 0.08) == [0.5, 0.5]


def test_outlier_ratio_counts_scores_above_the_multiple_of_the_mean():
    scores = [torch.tensor([[1.0, 1.0], [1.0, 30.0]]), torch.tensor([2.0, 1.0, 1.0, 1.0])]
    mean = (38 + 5) / 8
    assert outlier_ratio(scores, 2.0) == pytest.approx(sum(v > 2 * mean for v in [1, 1, 1, 30, 2, 1, 1, 1]) / 8)


# ---------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs", [dict(sparsity=1.0), dict(sparsity=-0.1), dict(sparsity=True), dict(nm="3:3"),
                                    dict(nm="2-4"), dict(nm="a:b"), dict(), dict(sparsity=0.5, nm="2:4")])
def test_bad_targets_raise(kwargs):
    with pytest.raises(PrunekitError):
        parse_target(**kwargs)


def test_nm_must_divide_the_input_features():
    with pytest.raises(PrunekitError, match="multiple of m=8"):
        check_fits(NM(4, 8), (16, 36), "layer.weight")


def test_owl_spread_too_wide_raises():
    with pytest.raises(PrunekitError):
        owl_sparsities([0.0, 1.0], 0.95, 0.08)


def test_peak_rss_sees_a_temporary_allocation():
    from prunekit.llm import PeakRSS

    with PeakRSS(interval=0.005) as peak:
        block = torch.ones(50_000_000, dtype=torch.float32)  # 200 MB, touched
        del block
    assert peak.bytes - peak.start > 150e6
