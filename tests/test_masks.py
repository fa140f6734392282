import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.models import lenet5, mnist1d_cnn


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def pruned_weights_are_zero(model, masks):
    return all(bool((pk.effective_weight(model, n)[~m] == 0).all()) for n, m in masks.items())


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
    lambda p: torch.optim.Adam(p, lr=1e-2),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
], ids=["sgd-momentum-wd", "adam", "adamw"])
def test_pruned_weights_stay_zero_through_training(make_opt):
    model = small_net()
    opt = make_opt(model.parameters())  # optimizer built *before* pruning, on the same Parameters
    ids_before = {n: id(p) for n, p in pk.named_parameters(model).items()}
    # warm up so momentum / Adam state is non-zero at the positions about to be pruned
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    masks = pk.prune(model, 0.6)
    assert {n: id(p) for n, p in pk.named_parameters(model).items()} == ids_before
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        assert pruned_weights_are_zero(model, masks)
    # the surviving weights did train
    assert pk.sparsity_table(model)["total"]["sparsity"] == pytest.approx(0.6, abs=1 / 72)


def test_state_dict_round_trip_into_fresh_model(tmp_path):
    model = small_net()
    masks = pk.prune(model, 0.5)
    path = tmp_path / "ckpt.pt"
    torch.save(model.state_dict(), path)
    fresh = small_net()
    pk.load_masked_state_dict(fresh, torch.load(path, weights_only=True))
    assert pk.get_masks(fresh) == masks
    assert pruned_weights_are_zero(fresh, masks)
    x = torch.randn(4, 6)
    assert torch.equal(fresh(x), model(x))


def test_remove_masks_bakes_zeros_and_keeps_identity():
    model = small_net()
    params = pk.named_parameters(model)
    masks = pk.prune(model, 0.5)
    x = torch.randn(4, 6)
    before = model(x)
    pk.remove_masks(model)
    assert len(pk.get_masks(model)) == 0
    assert all(pk.named_parameters(model)[n] is p for n, p in params.items())
    assert torch.equal(model(x), before)
    for n, m in masks.items():
        assert bool((dict(model.named_parameters())[n][~m] == 0).all())
    assert all("parametrizations" not in k for k in model.state_dict())


def test_masks_save_load_without_model(tmp_path):
    masks = pk.prune(small_net(), 0.7)
    path = masks.save(tmp_path / "m.pt")
    assert pk.MaskSet.load(path) == masks
    with pytest.raises(pk.MaskError, match="exists"):
        masks.save(path)


def test_mask_validation():
    with pytest.raises(pk.MaskError, match="binary"):
        pk.MaskSet({"w": torch.tensor([0.0, 0.5])})
    model = small_net()
    with pytest.raises(pk.MaskError, match="shape"):
        pk.apply_masks(model, {"0.weight": torch.ones(3, 3)})
    with pytest.raises(pk.MaskError, match="Did you mean '0.weight'"):
        pk.apply_masks(model, {"0.weigth": torch.ones(8, 6)})


def test_bad_masks_leave_model_untouched():
    model = small_net()
    reference = copy.deepcopy(model.state_dict())
    good = torch.zeros(8, 6)
    with pytest.raises(pk.MaskError):  # second entry bad: the first must not be applied either
        pk.apply_masks(model, {"0.weight": good, "2.weight": torch.ones(2, 2)})
    assert len(pk.get_masks(model)) == 0
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())


def test_conv_models_mask_and_run():
    for model, x in ((lenet5(), torch.randn(2, 1, 28, 28)), (mnist1d_cnn(), torch.randn(2, 40))):
        masks = pk.prune(model, 0.8)
        assert model(x).shape == (2, 10)
        assert pruned_weights_are_zero(model, masks)


def test_root_module_parameter_can_be_pruned_twice_and_masksets_do_not_alias():
    model = nn.Linear(6, 1)  # its weight belongs to the root module itself
    first = pk.prune(model, 0.5)
    snapshot = first["weight"].clone()
    second = pk.prune(model, 0.8)
    assert torch.equal(first["weight"], snapshot)  # the returned MaskSet is a value, not a view
    assert second.is_subset_of(first) and int((~second["weight"]).sum()) == 5
    assert first.get("missing") is None


def test_mask_sets_share_tensors_yet_never_change():
    """get_masks shares the model's mask tensors (no copy of every mask); re-pruning and loading a
    state dict replace those tensors, so a MaskSet taken earlier keeps what it said."""
    model = small_net()
    pk.prune(model, 0.5)
    before = pk.get_masks(model)
    snapshot = {n: m.clone() for n, m in before.items()}
    parametrized = model[0].parametrizations.weight[0].mask
    assert before["0.weight"].data_ptr() == parametrized.data_ptr()  # shared, not copied

    other = small_net()
    pk.prune(other, 0.8)
    model.load_state_dict(other.state_dict())                # torch writes buffers in place...
    assert torch.equal(pk.get_masks(model)["0.weight"], pk.get_masks(other)["0.weight"])
    pk.prune(model, 0.9)                                      # ...and prunekit installs new masks
    for name, mask in before.items():                         # ...but the earlier set is unchanged
        assert torch.equal(mask, snapshot[name])
    assert pruned_weights_are_zero(model, pk.get_masks(model))


def test_mask_set_copies_tensors_it_does_not_own():
    mask = torch.ones(8, 6, dtype=torch.bool)
    masks = pk.MaskSet({"0.weight": mask})
    mask[0, 0] = False
    assert bool(masks["0.weight"].all())


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_masks_load_back_whatever_the_file_is_named(tmp_path, suffix):
    masks = pk.MaskSet({"w": torch.rand(3, 4) < 0.5})
    assert pk.MaskSet.load(masks.save(tmp_path / f"m{suffix}")) == masks
