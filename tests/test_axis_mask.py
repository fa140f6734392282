"""Structured masks stored per channel (AxisMask) behave exactly like the bool tensor they stand for."""

import copy
import itertools

import torch
from torch import nn

import prunekit as pk
from prunekit.axis_mask import AxisMask
from prunekit.masks import MaskSet, WeightMask


def _random_axis_mask(shape, dims, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return AxisMask(shape, {d: torch.rand(shape[d], generator=generator) < 0.6 for d in dims})


def _brute_force(mask: AxisMask) -> torch.Tensor:
    """Entry by entry: kept iff every masked axis keeps that entry's coordinate."""
    out = torch.zeros(mask.shape, dtype=torch.bool)
    for index in itertools.product(*map(range, mask.shape)):
        out[index] = all(bool(v[index[d]]) for d, v in mask.keep.items())
    return out


def test_axis_mask_equals_its_bool_tensor():
    for dims in ([0], [1], [0, 1], [0, 2]):
        mask = _random_axis_mask((4, 5, 3), dims, seed=len(dims))
        truth = _brute_force(mask)
        assert torch.equal(mask.dense(), truth)
        assert mask.kept() == int(truth.sum()) and mask.numel() == truth.numel()
        for d in range(3):
            others = [o for o in range(3) if o != d]
            assert torch.equal(mask.any_along(d), truth.any(dim=others[1]).any(dim=others[0]))
            index = torch.tensor([2, 0, 2])
            assert torch.equal(mask.index_select(d, index).dense(), truth.index_select(d, index))
        tensor = torch.randn(4, 5, 3)
        zeroed = tensor.clone()
        mask.zero_removed(zeroed)
        assert torch.equal(zeroed, tensor.masked_fill(~truth, 0.0))


def test_weight_mask_keeps_vectors_and_saves_the_bool_tensor():
    mask = _random_axis_mask((6, 4), [0, 1])
    parametrization = WeightMask(mask)
    assert parametrization.per_axis and sum(b.numel() for b in parametrization.buffers()) == 6 + 4
    weight = torch.randn(6, 4)
    assert torch.equal(parametrization(weight), torch.where(mask.dense(), weight, 0.0))
    state = parametrization.state_dict()
    assert list(state) == ["mask"] and torch.equal(state["mask"], mask.dense())
    other = WeightMask(torch.ones(6, 4, dtype=torch.bool))
    other.load_state_dict(state)
    assert not other.per_axis and torch.equal(other.mask, mask.dense())


def test_weight_mask_forward_and_gradient_equal_where_for_every_layout():
    """The parametrization takes two routes (one where over the vectors' AND, or where over all
    but the first axis plus its removed slices filled); both must give where(mask, w, 0) exactly,
    NaN in pruned slots included, and the matching gradient."""
    for shape, dims in [((6, 4), [0, 1]), ((5, 4, 3, 3), [0, 1]), ((5, 4, 1, 1), [0, 1]), ((3, 4, 5), [0, 2]),
                        ((6, 4), [1]), ((7,), [0])]:
        mask = _random_axis_mask(shape, dims, seed=len(shape))
        dense = mask.dense()
        weight = torch.randn(shape).masked_fill(~dense & (torch.rand(shape) < 0.3), float("nan"))
        leaf = weight.clone().requires_grad_()
        out = WeightMask(mask)(leaf)
        assert torch.equal(out, torch.where(dense, weight, 0.0)), (shape, dims)
        upstream = torch.randn(shape)
        out.backward(upstream)
        assert torch.equal(leaf.grad, torch.where(dense, upstream, 0.0)), (shape, dims)


def test_weight_mask_follows_a_replaced_mask_a_copy_and_a_move():
    first, second = _random_axis_mask((6, 4), [0, 1], seed=1), _random_axis_mask((6, 4), [0, 1], seed=2)
    weight = torch.randn(6, 4)
    parametrization = WeightMask(first)
    assert torch.equal(parametrization(weight), torch.where(first.dense(), weight, 0.0))
    parametrization.replace(second)  # the removed slices cached for the first mask must not be reused
    assert torch.equal(parametrization(weight), torch.where(second.dense(), weight, 0.0))
    twin = copy.deepcopy(parametrization)
    assert torch.equal(twin(weight), torch.where(second.dense(), weight, 0.0))
    moved = twin.to(torch.float64)  # buffers re-created by _apply: still the same mask
    assert torch.equal(moved(weight.double()), torch.where(second.dense(), weight.double(), 0.0))


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1),
                         nn.BatchNorm2d(12), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5)).eval()


def test_structured_pruning_stores_masks_per_channel_and_stays_exact(tmp_path):
    model, x = _net(), torch.randn(2, 3, 10, 10)
    pk.prune_structured(model, 0.5, x)
    installed = [m for m in model.modules() if isinstance(m, WeightMask)]
    assert installed and all(m.per_axis for m in installed)
    stored = sum(b.numel() for m in installed for b in m.buffers())
    assert stored <= sum(sum(m.shape) for m in installed)  # vectors only, no bool per weight
    masks = pk.get_masks(model)
    for name, mask in masks.items():  # the dense view agrees with what the forward uses
        weight = pk.named_parameters(model)[name]
        assert torch.equal(pk.effective_weight(model, name), torch.where(mask, weight, 0.0))
        assert torch.equal(weight[~mask], torch.zeros_like(weight[~mask]))  # zeroed in the dense tensor too
    assert masks.kept() == sum(int(m.sum()) for m in masks.values())
    with torch.no_grad():
        expected = model(x)
    # The checkpoint holds bool tensors: a fresh model loads it and computes the same.
    fresh = _net()
    pk.load_masked_state_dict(fresh, model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(x), expected)
    assert pk.get_masks(fresh) == masks
    # A copy has its own masks; compaction still equals the masked model.
    replica = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(replica(x), expected)
    small, _ = pk.compact(model, x)
    with torch.no_grad():
        assert torch.allclose(small(x), expected, atol=1e-6)


def test_mask_set_algebra_mixes_axis_masks_and_tensors(tmp_path):
    axis = _random_axis_mask((4, 3), [0])
    tensor = torch.rand(4, 3) < 0.5
    both = MaskSet.adopt({"w": axis}).intersect(MaskSet({"w": tensor}))
    assert torch.equal(both["w"], axis.dense() & tensor)
    path = MaskSet.adopt({"w": axis}).save(tmp_path / "m.pt")
    assert torch.equal(MaskSet.load(path)["w"], axis.dense())


def test_intersection_of_axis_masks_stays_per_channel():
    a, b = _random_axis_mask((5, 4, 2), [0, 1], seed=1), _random_axis_mask((5, 4, 2), [1, 2], seed=2)
    both = MaskSet.adopt({"w": a}).intersect(MaskSet.adopt({"w": b}))
    assert isinstance(both.stored("w"), AxisMask)
    assert torch.equal(both["w"], _brute_force(a) & _brute_force(b))


def test_broadcastable_form_is_small_and_expands_to_the_mask():
    mask = _random_axis_mask((4, 5, 3, 3), [0, 1], seed=3)
    small = mask.broadcastable()
    assert small.shape == (4, 5, 1, 1)
    assert torch.equal(small.expand(mask.shape), _brute_force(mask))
