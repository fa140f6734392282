import itertools
import math

import pytest
import torch
from torch import nn

from prunekit.errors import AmountError, PrunekitError
from prunekit.granularity import GRANULARITIES, aggregate, nm_mask, unit_ids
from prunekit.prune import prune_granular, prune_nm
from prunekit.masks import get_masks

# An independent definition of each granularity: the tuple of indices that names an element's unit.
UNIT_KEY = {
    "element": lambda idx: idx,
    "kernel_row": lambda idx: idx[:3],
    "kernel_col": lambda idx: (idx[0], idx[1], idx[3]),
    "kernel": lambda idx: idx[:2],
    "in_channel": lambda idx: (idx[1],),
    "out_channel": lambda idx: (idx[0],),
    # blocks tile the (O, I·k_h·k_w) matrix view: column = the element's flat index within its filter
    **{f"block{r}x{c}": (lambda idx, r=r, c=c: (idx[0] // r, (idx[1] * 10 + idx[2] * 5 + idx[3]) // c))
       for r, c in ((4, 4), (8, 8), (16, 16), (1, 4), (4, 1))},
}


@pytest.mark.parametrize("granularity", list(UNIT_KEY))
def test_unit_ids_group_exactly_the_elements_sharing_a_key(granularity):
    shape = (3, 4, 2, 5)
    ids, n_units = unit_ids(shape, granularity)
    by_key = {}
    for idx in itertools.product(*map(range, shape)):
        by_key.setdefault(UNIT_KEY[granularity](idx), set()).add(int(ids[idx]))
    assert len(by_key) == n_units
    assert all(len(v) == 1 for v in by_key.values())  # one key → one id
    assert {next(iter(v)) for v in by_key.values()} == set(range(n_units))  # ids distinct and dense


def test_neuron_is_a_linear_row_and_bad_shapes_are_refused():
    ids, n = unit_ids((4, 3), "neuron")
    assert n == 4 and torch.equal(ids, torch.arange(4)[:, None].expand(4, 3))
    with pytest.raises(PrunekitError, match="rank"):
        unit_ids((4, 3), "kernel_row", "fc.weight")
    with pytest.raises(PrunekitError, match="Known"):
        unit_ids((4, 3), "chanel")


@pytest.mark.parametrize("how", ["l1", "l2", "lp", "sum", "mean", "max"])
def test_aggregate_matches_direct_computation(how):
    torch.manual_seed(0)
    s = torch.randn(6, 3, 2)
    ids, n = unit_ids(s.shape, "out_channel")
    got = aggregate(s, ids, n, how, p=3.0)
    for o in range(6):
        v = s[o].double().reshape(-1)
        want = {"l1": v.abs().sum(), "l2": v.norm(), "lp": v.abs().pow(3).sum() ** (1 / 3), "sum": v.sum(),
                "mean": v.mean(), "max": v.max()}[how]
        assert math.isclose(float(got[o]), float(want), rel_tol=1e-9, abs_tol=1e-12)


def _conv_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 6, 3))


def test_local_filter_pruning_removes_the_lowest_l2_filters_whole():
    model = _conv_net()
    w = model[0].weight.detach().clone()
    prune_granular(model, 3, "out_channel", params=["0.weight"])
    mask = get_masks(model)["0.weight"]
    norms = w.reshape(8, -1).norm(dim=1)
    expected_gone = set(torch.argsort(norms)[:3].tolist())
    gone = {o for o in range(8) if not mask[o].any()}
    assert gone == expected_gone
    assert all(mask[o].all() for o in range(8) if o not in gone)


def test_global_scope_prunes_exact_unit_count_and_masks_only_shrink():
    model = _conv_net()
    prune_granular(model, 0.25, "kernel", scope="global", params=["0.weight", "2.weight"])
    first = get_masks(model)
    n_kernels = 8 * 3 + 6 * 8
    kernels_gone = sum(int((~m.reshape(m.shape[0] * m.shape[1], -1)).all(dim=1).sum()) for m in first.values())
    assert kernels_gone == round(0.25 * n_kernels)
    prune_granular(model, 0.5, "kernel", scope="global", params=["0.weight", "2.weight"])
    assert get_masks(model).is_subset_of(first)


def test_default_selection_takes_the_tensors_that_fit():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 3 * 3, 5))
    prune_granular(model, 0.5, "kernel")
    assert set(get_masks(model)) == {"0.weight"}  # the Linear weight has no kernels


def test_bad_granularity_leaves_model_untouched():
    model = nn.Sequential(nn.Linear(4, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PrunekitError):
        prune_granular(model, 0.5, "kernel_row")
    assert not get_masks(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 8)])
def test_nm_keeps_the_n_largest_of_every_m(n, m):
    torch.manual_seed(1)
    s = torch.randn(5, 16, 3)
    keep = nm_mask(s, n, m, dim=1)
    groups_s = s.movedim(1, -1).reshape(-1, m)
    groups_k = keep.movedim(1, -1).reshape(-1, m)
    assert torch.all(groups_k.sum(dim=1) == n)
    for gs, gk in zip(groups_s, groups_k):
        assert set(torch.topk(gs, n).indices.tolist()) == set(torch.nonzero(gk).reshape(-1).tolist())


def test_prune_nm_on_a_model_and_errors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    prune_nm(model, 2, 4, params=["0.weight", "2.weight"])
    for mask in get_masks(model).values():
        assert torch.all(mask.reshape(-1, 4).sum(dim=1) == 2)
    odd = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 2))
    prune_nm(odd, 2, 4)  # by default only the weights whose input dimension 4 divides
    assert set(get_masks(odd)) == {"1.weight"}
    odd = nn.Sequential(nn.Linear(6, 4))
    with pytest.raises(AmountError, match="divisible"):
        prune_nm(odd, 2, 4, params=["0.weight"])
    assert not get_masks(odd)
    with pytest.raises(AmountError, match="0 < N < M"):
        prune_nm(odd, 4, 4)


def test_every_granularity_is_tested():
    assert set(GRANULARITIES) == set(UNIT_KEY) | {"neuron"}
