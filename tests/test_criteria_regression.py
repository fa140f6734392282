"""Regression channel pruning: LASSO recovers planted channels; least squares equals numpy's lstsq."""

import numpy as np
import pytest
import torch
from torch import nn

from prunekit import reconstruct as rc
from prunekit.criteria import Regression
from prunekit.errors import PrunekitError
from prunekit.masks import get_masks, resolve_parameters


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("layer, shape", [
    (nn.Conv2d(3, 4, 3, stride=2, padding=1), (2, 3, 7, 6)),
    (nn.Conv1d(3, 4, 3, stride=2, padding=1, dilation=2), (2, 3, 11)),
    (nn.Linear(5, 4), (3, 2, 5)),
])
def test_design_matrix_reproduces_the_layer(layer, shape):
    x = torch.randn(*shape)
    rows = rc.design_matrix(layer, x)
    out = layer(x).detach().double()
    bias = layer.bias.detach().double()
    z = rows @ rc.weight_matrix(layer).T + bias
    expected = out.reshape(-1, out.shape[-1]) if isinstance(layer, nn.Linear) else \
        out.movedim(1, -1).reshape(-1, out.shape[1])
    torch.testing.assert_close(z, expected, rtol=1e-5, atol=1e-5)


def test_channel_gram_equals_inner_products_of_contributions():
    layer = nn.Conv2d(3, 2, 2)
    rows = rc.design_matrix(layer, torch.randn(2, 3, 4, 4))
    w, k = rc.weight_matrix(layer), rc.group_size(layer)
    contrib = [rows[:, c * k:(c + 1) * k] @ w[:, c * k:(c + 1) * k].T for c in range(3)]
    expected = torch.tensor([[float((a * b).sum()) for b in contrib] for a in contrib], dtype=torch.float64)
    torch.testing.assert_close(rc.channel_gram(rows.T @ rows, w, k), expected)


def _planted_linear(planted=(1, 4, 6), channels=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(channels, 5)
    with torch.no_grad():
        layer.weight.copy_(0.02 * torch.randn(5, channels, generator=g))
        for c in planted:
            layer.weight[:, c] = torch.randn(5, generator=g) + torch.sign(torch.randn(5, generator=g))
    x = torch.randn(200, channels, generator=g)
    return nn.Sequential(layer), [(x, torch.zeros(200))]


def test_lasso_recovers_planted_channels_linear_and_conv():
    model, batches = _planted_linear()
    result = rc.prune_layer_channels(model, "0", 5, batches, apply=False)
    assert result.keep.nonzero().flatten().tolist() == [1, 4, 6]
    assert int((result.beta != 0).sum()) == 3
    ranked = Regression().scores(model, resolve_parameters(model), batches=batches)["0.weight"][0]
    assert set(torch.argsort(ranked, descending=True)[:3].tolist()) == {1, 4, 6}
    # a convolution whose output only depends on input channels 0 and 3
    g = torch.Generator().manual_seed(1)
    conv = nn.Conv2d(5, 4, 3, padding=1)
    with torch.no_grad():
        conv.weight.mul_(0.01)
        conv.weight[:, [0, 3]] = torch.randn(4, 2, 3, 3, generator=g)
    x = torch.randn(8, 5, 6, 6, generator=g)
    result = rc.prune_layer_channels(nn.Sequential(conv), "0", 3, [(x, None)], apply=False)
    assert result.keep.nonzero().flatten().tolist() == [0, 3]


def test_least_squares_equals_numpy_lstsq_and_beats_dropping():
    model, (batch,) = _planted_linear(planted=(0, 2, 3, 5), seed=3)
    layer = model[0]
    w0, b0 = layer.weight.detach().double().clone(), layer.bias.detach().clone()
    x = batch[0].double()
    result = rc.prune_layer_channels(model, "0", 0.5, [batch])
    keep = result.keep.numpy()
    z = (x @ w0.T).numpy()
    solution, *_ = np.linalg.lstsq(x.numpy()[:, keep], z, rcond=None)
    new = layer.weight.detach().double()
    np.testing.assert_allclose(new[:, keep].numpy(), solution.T, rtol=1e-5, atol=1e-6)
    assert torch.equal(new[:, ~result.keep], torch.zeros(5, int((~result.keep).sum()), dtype=torch.float64))
    assert torch.equal(layer.bias.detach(), b0)
    assert torch.equal(get_masks(model)["0.weight"], result.keep.expand(5, -1))
    # errors: reported == direct, and the refit is never worse than zeroing the dropped channels
    direct = float(((x @ w0.T - x @ new.T) ** 2).sum())
    dropped = float(((x @ w0.T - x @ (w0 * result.keep).T) ** 2).sum())
    assert result.error_reconstructed == pytest.approx(direct, rel=1e-4, abs=1e-6)
    assert result.error_dropped == pytest.approx(dropped, rel=1e-6)
    assert result.error_reconstructed <= result.error_dropped


def test_conv_reconstruction_equals_lstsq_on_unfolded_inputs():
    torch.manual_seed(0)
    conv = nn.Conv1d(4, 3, 3, padding=1)
    model = nn.Sequential(conv)
    x = torch.randn(10, 4, 9)
    w0 = rc.weight_matrix(conv).clone()
    result = rc.prune_layer_channels(model, "0", 2, [(x, None)])
    rows = rc.design_matrix(conv, x).numpy()
    cols = result.keep.repeat_interleave(3).numpy()
    solution, *_ = np.linalg.lstsq(rows[:, cols], rows @ w0.numpy().T, rcond=None)
    np.testing.assert_allclose(rc.weight_matrix(conv).numpy()[:, cols], solution.T, rtol=1e-4, atol=1e-5)
    assert result.error_reconstructed <= result.error_dropped


def test_regression_rejects_unsupported_layers_and_missing_data():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(PrunekitError, match="groups"):
        rc.prune_layer_channels(model, "0", 0.5, [(torch.randn(1, 4, 5, 5), None)])
    with pytest.raises(PrunekitError, match="calibration"):
        rc.prune_layer_channels(nn.Sequential(nn.Linear(2, 2)), "0", 1, None)
    with pytest.raises(PrunekitError, match="calibration data"):
        Regression().scores(model, resolve_parameters(model))
    assert not get_masks(model)


def test_reconstruction_against_a_reference_network_equals_lstsq():
    """Earlier layer already pruned: refit X'_S W_Sᵀ ≈ Z = X W_refᵀ from the unpruned network."""
    import copy

    from prunekit.masks import apply_masks
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)).double()
    model = copy.deepcopy(reference)
    alive = torch.arange(8) >= 2  # neurons 0 and 1 removed (weights and bias): their outputs are 0
    apply_masks(model, {"0.weight": alive.reshape(8, 1).expand(8, 6), "0.bias": alive})
    x = torch.randn(50, 6, dtype=torch.float64)
    w_ref = reference[2].weight.detach().clone()
    result = rc.prune_layer_channels(model, "2", 3, [(x, None)], reference=reference)
    with torch.no_grad():
        x_now = model[1](model[0](x)).numpy()
        z = (reference[1](reference[0](x)) @ w_ref.T).numpy()
    keep = result.keep.numpy()
    solution, *_ = np.linalg.lstsq(x_now[:, keep], z, rcond=None)
    new = model[2].weight.detach().numpy()
    np.testing.assert_allclose(new[:, keep], solution.T, rtol=1e-6, atol=1e-8)
    direct = float(((z - x_now @ new.T) ** 2).sum())
    dropped = float(((z - x_now @ (w_ref.numpy() * keep).T) ** 2).sum())
    assert result.error_reconstructed == pytest.approx(direct, rel=1e-6, abs=1e-9)
    assert result.error_dropped == pytest.approx(dropped, rel=1e-6)
    assert result.error_reconstructed <= result.error_dropped
    assert not keep[0] and not keep[1]  # the dead inputs are the first to go
