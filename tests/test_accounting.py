import math

import torch
from torch import nn

import prunekit as pk
from prunekit.accounting import count_flops, storage_bytes


def test_storage_bytes_match_hand_counts():
    t = torch.zeros(4, 10)
    t[0, 1] = 1.0
    t[2, 5] = 2.0
    t[3, 9] = 3.0
    sizes = storage_bytes(t)
    assert sizes["dense"] == 4 * 10 * 4
    assert sizes["bitmask"] == math.ceil((3 * 32 + 40) / 8)  # 3 values + 40 presence bits
    # CSR: 3 × (32 value bits + 4 column bits for 10 columns) + 5 row pointers × 2 bits (values 0..3)
    assert sizes["csr"] == math.ceil((3 * (32 + 4) + 5 * 2) / 8)
    assert sizes["compressed"] == min(sizes["dense"], sizes["bitmask"], sizes["csr"]) == sizes["csr"]
    dense = torch.randn(4, 10)
    assert storage_bytes(dense)["layout"] == "dense"


def test_sparsity_table_counts_independently():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3))
    pk.prune(model, 0.6)
    table = pk.sparsity_table(model)
    w0 = model[0].weight.detach()
    w2 = model[2].weight.detach()
    nz = int((w0 != 0).sum()) + int((w2 != 0).sum())
    assert table["total"]["numel"] == 260
    assert table["total"]["nonzero"] == nz == 260 - 156
    assert abs(table["total"]["sparsity"] - 156 / 260) < 1e-12
    rows = {r["name"]: r for r in table["layers"]}
    assert rows["0.weight"]["nonzero"] == int((w0 != 0).sum())
    counts = pk.parameter_counts(model)
    assert counts["total"] == 10 * 20 + 20 + 20 * 3 + 3
    assert counts["nonzero"] == nz + int((model[0].bias != 0).sum()) + int((model[2].bias != 0).sum())
    assert counts["dense_bytes"] == counts["total"] * 4


def test_flops_of_linear_and_conv_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 7))
    x = torch.randn(3, 2, 5, 5)
    flops = count_flops(model, x)
    conv_macs = 3 * 5 * 5 * (4 * 2 * 3 * 3)
    lin_macs = 3 * 100 * 7
    assert flops["dense_flops"] == 2 * (conv_macs + lin_macs)
    pk.prune(model, 0.5)
    flops = count_flops(model, x)
    nz_conv = int((model[0].weight != 0).sum())
    nz_lin = int((model[3].weight != 0).sum())
    assert flops["sparse_flops"] == 2 * (3 * 25 * nz_conv + 3 * nz_lin)
    assert flops["dense_flops"] == 2 * (conv_macs + lin_macs)


def test_flop_count_restores_mode_and_hooks():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    model.train()
    model[1].eval()
    stats_before = model[1].running_mean.clone()
    count_flops(model, torch.randn(8, 4))
    assert model.training and not model[1].training
    assert not model[0]._forward_hooks
    assert torch.equal(model[1].running_mean, stats_before)


def test_transposed_conv_flops_by_hand_dense_and_sparse():
    torch.manual_seed(0)
    model = nn.Sequential(nn.ConvTranspose2d(3, 5, 3, stride=2))
    x = torch.randn(2, 3, 4, 4)
    # every input position multiplies every weight once: 2·4·4 positions × (3·5·3·3) weights
    assert count_flops(model, x)["dense_flops"] == 2 * (2 * 4 * 4) * (3 * 5 * 3 * 3)
    pk.prune(model, 0.6)
    nonzero = int((model[0].weight != 0).sum())
    assert count_flops(model, x)["sparse_flops"] == 2 * (2 * 4 * 4) * nonzero
