import pytest
import torch
import torch.nn.functional as F

import prunekit as pk
from prunekit.accounting import count_flops
from prunekit.applications import (GatedCNN, annealed_target, dense_flops, evaluate_gated, executed_flops,
                                   skipping_forward, static_channel_masks,
                                   static_masks_for_flops, train_gated)
from prunekit.training import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _set_gates(block, open_channels):
    """Gate logits independent of the input: +1 for the open channels, −1 for the others."""
    with torch.no_grad():
        block.gate.weight.zero_()
        block.gate.bias.fill_(-1.0)
        block.gate.bias[list(open_channels)] = 1.0


def test_hard_gate_zeros_exactly_the_gated_channels():
    torch.manual_seed(0)
    model = GatedCNN(widths=(4, 3)).eval()
    x = torch.randn(2, 1, 8, 8)
    block = model.blocks[0]
    model.set_gating(False)
    ungated = F.relu(block.bn(block.conv(x)))
    model.set_gating(True)
    _set_gates(block, [0, 2])
    g = block.gates(x)
    assert g.tolist() == [[1.0, 0.0, 1.0, 0.0]] * 2
    y = F.relu(block.bn(block.conv(x))) * g[:, :, None, None]
    assert bool((y[:, [1, 3]] == 0).all()) and torch.equal(y[:, [0, 2]], ungated[:, [0, 2]])
    torch.testing.assert_close(block(x), F.max_pool2d(y, 2))


def test_executed_flops_on_a_tiny_case_by_hand():
    torch.manual_seed(0)
    model = GatedCNN(num_classes=10, widths=(2, 3)).eval()
    _set_gates(model.blocks[0], [0])
    _set_gates(model.blocks[1], [0, 1])
    model(torch.randn(1, 1, 4, 4))
    # block 1: 16 positions · 9 taps · 1 input · 1 open channel + gate 1·2
    # block 2: (pooled) 4 positions · 9 · 1 active input · 2 open + gate 2·3;  classifier: 2 active · 10
    macs = 16 * 9 * 1 * 1 + 2 + 4 * 9 * 1 * 2 + 6 + 2 * 10
    assert executed_flops(model).tolist() == [2.0 * macs]


def test_dense_flops_agree_with_torch_flop_counter():
    model = GatedCNN(widths=(4, 8, 8))
    x = torch.randn(1, 1, 12, 12)
    model.set_gating(False)
    assert dense_flops(model, x) == count_flops(model, x)["dense_flops"]


def test_gradients_reach_the_gates_through_the_straight_through_estimator():
    torch.manual_seed(0)
    model = GatedCNN(widths=(4, 4)).train()
    x = torch.randn(3, 1, 8, 8)
    out = model(x)
    assert set(model.blocks[0].last_gates.unique().tolist()) <= {0.0, 1.0}  # hard in the forward pass
    (out.sum() + executed_flops(model).sum()).backward()
    assert model.blocks[0].gate.weight.grad.abs().sum() > 0


def test_static_masks_follow_bn_scales_and_meet_the_flops():
    torch.manual_seed(0)
    model = GatedCNN(widths=(4, 8))
    with torch.no_grad():
        model.blocks[0].bn.weight.copy_(torch.tensor([0.1, -2.0, 0.5, 1.0]))
    masks = static_channel_masks(model, 0.5)
    assert masks[0].tolist() == [False, True, False, True] and int(masks[1].sum()) == 4
    x = torch.randn(1, 1, 8, 8)
    budget = 0.4 * dense_flops(model, x)
    chosen, cost = static_masks_for_flops(model, budget, x)
    assert cost <= budget
    model.set_fixed(chosen)
    model.eval()(x)
    assert float(executed_flops(model)[0]) == cost
    with pytest.raises(pk.PrunekitError, match="mask of that length"):
        model.set_fixed([torch.ones(3, dtype=torch.bool), None])


def test_training_with_a_flops_target_closes_gates():
    data = pk.data.load_dataset("digits")
    config = TrainConfig(optimizer="adam", lr=3e-2, steps=40, batch_size=32)
    results = {}
    for target in (None, 0.3):
        torch.manual_seed(0)
        model = GatedCNN(widths=(4, 4))
        train_gated(model, data.train, config, target=target, weight=10.0)
        results[target] = evaluate_gated(model, data.test)
    assert results[0.3]["flops_fraction"] < 0.6 * results[None]["flops_fraction"]
    assert results[0.3]["flops_min"] <= results[0.3]["flops"] <= results[0.3]["flops_max"]


def _random_gates(model, generator):
    """Input-dependent gates with some blocks fully closed for some inputs."""
    with torch.no_grad():
        for block in model.blocks:
            block.gate.weight.normal_(generator=generator)
            block.gate.bias.normal_(generator=generator)
            block.bn.running_mean.normal_(generator=generator)
            block.bn.running_var.uniform_(0.5, 2.0, generator=generator)
            block.bn.bias.normal_(generator=generator)


@pytest.mark.parametrize("seed", range(4))
def test_skipping_forward_equals_the_masked_forward(seed):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = GatedCNN(widths=(3, 4, 5)).eval()
    _random_gates(model, g)
    counts = []
    for _ in range(6):
        x = torch.randn(1, 1, 12, 12, generator=g)
        torch.testing.assert_close(skipping_forward(model, x), model(x), rtol=1e-5, atol=1e-5)
        counts.append([int(b.last_gates.sum()) for b in model.blocks])
    model.set_fixed([torch.tensor([True, False, True]), torch.zeros(4, dtype=torch.bool), None])
    x = torch.randn(1, 1, 12, 12, generator=g)
    torch.testing.assert_close(skipping_forward(model, x), model(x), rtol=1e-5, atol=1e-5)
    model.set_fixed(None)
    model.set_gating(False)
    torch.testing.assert_close(skipping_forward(model, x), model(x), rtol=1e-5, atol=1e-5)
    assert model.training is False


def test_skipping_forward_covers_a_fully_closed_block():
    torch.manual_seed(0)
    model = GatedCNN(widths=(3, 4)).eval()
    _set_gates(model.blocks[0], [])
    x = torch.randn(1, 1, 8, 8)
    torch.testing.assert_close(skipping_forward(model, x), model(x))
    with pytest.raises(pk.PrunekitError, match="one input"):
        skipping_forward(model, torch.randn(2, 1, 8, 8))


def test_annealed_target_goes_linearly_from_one_to_the_target():
    assert [annealed_target(s, 4, 0.2) for s in (0, 2, 4, 9)] == pytest.approx([1.0, 0.6, 0.2, 0.2])
    assert annealed_target(1, 0, 0.3) == 0.3


def test_frozen_gates_stay_put_and_become_trainable_again():
    data = pk.data.load_dataset("digits")
    torch.manual_seed(0)
    model = GatedCNN(widths=(4, 4))
    before = [b.gate.weight.clone() for b in model.blocks]
    conv_before = model.blocks[0].conv.weight.clone()
    train_gated(model, data.train, TrainConfig(optimizer="adam", lr=1e-2, steps=5, batch_size=32), target=0.5,
                train_gates=False)
    assert all(torch.equal(b.gate.weight, w) for b, w in zip(model.blocks, before))
    assert not torch.equal(model.blocks[0].conv.weight, conv_before)
    assert all(p.requires_grad for p in model.parameters())
