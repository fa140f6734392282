import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import prunekit as pk
from prunekit.applications import activation_sparsity
from prunekit.masks import apply_masks

pytestmark = pytest.mark.usefixtures("one_thread")


def _hand_model():
    model = nn.Sequential(nn.Linear(3, 2, bias=False), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, -3.0, 0.0]]))
        model[2].weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 1.0]]))
    return model


def test_linear_counts_match_a_hand_computation():
    x = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 3.0]])
    rows = {r["layer"]: r for r in activation_sparsity(_hand_model(), x)}
    # layer 0: input zeros 3/6; per example (2 examples, FLOPs = 2 MACs):
    #   dense 2·6 MACs, weights 2·3, activations (2 + 1 non-zero inputs)·2 outputs,
    #   both: example 1 meets columns 0 and 2 (one non-zero weight each), example 2 column 2 → 3 MACs
    first = rows["0"]
    assert first["input zeros"] == 0.5
    assert (first["dense FLOPs"], first["weight-sparse FLOPs"], first["activation-sparse FLOPs"],
            first["both (EIE) FLOPs"]) == (12.0, 6.0, 6.0, 3.0)
    # layer 2: inputs relu([5, 0]) and relu([6, 0]) → zeros 2/4; column 0 has one non-zero weight
    second = rows["2"]
    assert second["input zeros"] == 0.5
    assert (second["dense FLOPs"], second["weight-sparse FLOPs"], second["activation-sparse FLOPs"],
            second["both (EIE) FLOPs"]) == (8.0, 6.0, 4.0, 2.0)
    total = rows["total"]
    assert total["both (EIE) FLOPs"] == 5.0 and total["skipped"] == pytest.approx(1 - 5 / 20)


def _brute_force_conv1d(conv, x):
    """MACs where both operands are non-zero, by explicit loops (zero padding never counts)."""
    w = conv.weight.detach()
    c_out, c_in_g, k = w.shape
    groups, stride, pad, dil = conv.groups, conv.stride[0], conv.padding[0], conv.dilation[0]
    length = x.shape[-1]
    out_len = (length + 2 * pad - dil * (k - 1) - 1) // stride + 1
    both = dense = 0
    for n in range(x.shape[0]):
        for o in range(c_out):
            g = o // (c_out // groups)
            for p in range(out_len):
                for c in range(c_in_g):
                    for t in range(k):
                        pos = p * stride - pad + t * dil
                        if 0 <= pos < length:
                            dense += 1
                            both += int(x[n, g * c_in_g + c, pos] != 0 and w[o, c, t] != 0)
    return dense, both


def test_conv_counts_match_brute_force_with_stride_padding_dilation_groups():
    torch.manual_seed(0)
    conv = nn.Conv1d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) > 0.5)
    x = torch.randn(3, 4, 11).relu()
    row = activation_sparsity(nn.Sequential(conv), x)[0]
    dense, both = _brute_force_conv1d(conv, x)
    assert row["dense FLOPs"] == 2 * dense / 3 and row["both (EIE) FLOPs"] == 2 * both / 3
    assert row["input zeros"] == pytest.approx(float((x == 0).float().mean()))


def test_masks_count_as_zero_weights_and_the_model_is_left_alone():
    model = _hand_model()
    mask = torch.ones(2, 2, dtype=torch.bool)
    mask[0, 0] = False
    apply_masks(model, {"2.weight": mask})
    model.train()
    x = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 3.0]])
    data = TensorDataset(x, torch.zeros(2, dtype=torch.long))
    rows = {r["layer"]: r for r in activation_sparsity(model, data, batch_size=1)}
    assert rows["2"]["both (EIE) FLOPs"] == 0.0 and rows["2"]["weight-sparse FLOPs"] == 4.0
    assert rows["2"]["type"] == "Linear"
    assert all(m.training for m in model.modules())
    assert not any(m._forward_hooks for m in model.modules())


def test_no_layers_or_no_data_is_an_error():
    with pytest.raises(pk.PrunekitError, match="no Linear or Conv"):
        activation_sparsity(nn.Sequential(nn.ReLU()), torch.randn(2, 3))
    with pytest.raises(pk.PrunekitError, match="No data"):
        activation_sparsity(_hand_model(), [])
