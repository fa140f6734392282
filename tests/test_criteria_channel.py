"""BN |γ|, Network Slimming and APoZ against hand computations."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.criteria import APoZ, BNScale
from prunekit.criteria.channels import ordered_norms, traced_norms
from prunekit.errors import PrunekitError
from prunekit.masks import resolve_parameters
from prunekit.slimming import bn_penalty, slimming_loss

pytestmark = pytest.mark.usefixtures("one_thread")



class ConvBN(nn.Module):
    """BatchNorms registered *before* the convs, so only tracing finds the right pairs."""

    def __init__(self):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(4), nn.BatchNorm2d(5)
        self.conv1, self.conv2 = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 5, 3, padding=1)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        x = self.bn1(self.conv1(x)).relu()
        x = self.bn2(self.conv2(x)).relu()
        return self.head(x.mean((2, 3)))


def _conv_bn(seed=0):
    torch.manual_seed(seed)
    model = ConvBN()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.weight.uniform_(-1, 1)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2)
    return model


def test_bn_scale_broadcasts_abs_gamma_over_the_feeding_layer():
    model = _conv_bn()
    x = torch.randn(2, 2, 6, 6)
    assert traced_norms(model, x) == {"conv1": "bn1", "conv2": "bn2"}
    params = resolve_parameters(model, ["conv1.weight", "conv1.bias", "bn1.weight", "conv2.weight"])
    scores = BNScale().scores(model, params, batches=[(x, torch.zeros(2, dtype=torch.long))])
    g1, g2 = model.bn1.weight.detach().abs(), model.bn2.weight.detach().abs()
    for c in range(4):
        assert torch.all(scores["conv1.weight"][c] == g1[c])
    torch.testing.assert_close(scores["conv1.bias"], g1)
    torch.testing.assert_close(scores["bn1.weight"], g1)
    torch.testing.assert_close(scores["conv2.weight"][:, 0, 0, 0], g2)


def test_bn_scale_without_data_uses_registration_order_and_errors_clearly():
    seq = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2))
    assert ordered_norms(seq) == {"0": "1"}
    with pytest.raises(PrunekitError, match="No BatchNorm"):
        BNScale().scores(seq, resolve_parameters(seq))
    scores = BNScale(unmatched="keep").scores(seq, resolve_parameters(seq))
    assert torch.isinf(scores["4.weight"]).all()
    torch.testing.assert_close(scores["0.weight"][:, 0, 0, 0], seq[1].weight.detach().abs())


def test_slimming_penalties_equal_their_formulas_and_gradients():
    model = _conv_bn()
    gammas = torch.cat([model.bn1.weight.detach(), model.bn2.weight.detach()])
    torch.testing.assert_close(bn_penalty(model, 0.1), 0.1 * gammas.abs().sum())
    beta = 0.3
    smooth = torch.where(gammas.abs() < beta, 0.5 * gammas ** 2 / beta, gammas.abs() - 0.5 * beta).sum()
    torch.testing.assert_close(bn_penalty(model, 0.1, "smooth_l1", beta), 0.1 * smooth)
    bn_penalty(model, 0.5).backward()
    torch.testing.assert_close(model.bn1.weight.grad, 0.5 * model.bn1.weight.detach().sign())
    with pytest.raises(PrunekitError, match="no affine BatchNorm"):
        bn_penalty(nn.Linear(2, 2), 0.1)
    with pytest.raises(PrunekitError, match="kind"):
        slimming_loss(F.cross_entropy, model, 0.1, kind="l2")


def test_slimming_training_shrinks_gamma():
    torch.manual_seed(0)
    x, y = torch.randn(16, 2, 4, 4), torch.randint(0, 3, (16,))
    results = []
    for strength in (0.0, 0.1):
        model = _conv_bn(1)
        loss = slimming_loss(F.cross_entropy, model, strength)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(25):
            opt.zero_grad()
            loss(model(x), y).backward()
            opt.step()
        results.append(float(torch.cat([model.bn1.weight, model.bn2.weight]).detach().abs().sum()))
    assert results[1] < 0.6 * results[0], results


def _identity_conv(channels):
    conv = nn.Conv2d(channels, channels, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(channels).reshape(channels, channels, 1, 1))
        conv.bias.zero_()
    return conv


def test_apoz_equals_a_hand_count_on_fixed_activations():
    # Batch 2, 3 channels, 4×4 maps: the layer reproduces these activations exactly.
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(2, 3, 4, 4, generator=g)
    # channel 1: exactly half zeros after ReLU
    acts[:, 1] = acts[:, 1].abs() * torch.tensor([-1.0, 1.0]).repeat(8).reshape(4, 4)
    model = nn.Sequential(_identity_conv(3))
    zeros = [0, 0, 0]
    for n in range(2):
        for c in range(3):
            for i in range(4):
                for j in range(4):
                    zeros[c] += int(max(float(acts[n, c, i, j]), 0.0) == 0.0)
    expected = torch.tensor([1 - z / 32 for z in zeros])
    scores = APoZ().scores(model, resolve_parameters(model, ["0.weight", "0.bias"]), batches=[acts])
    torch.testing.assert_close(scores["0.bias"], expected)
    torch.testing.assert_close(scores["0.weight"][:, 2, 0, 0], expected)


def test_apoz_linear_channels_last_and_bn_tap():
    lin = nn.Linear(3, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(3))
        lin.bias.zero_()
    x = torch.tensor([[[1.0, -1.0, 0.0], [2.0, 3.0, -4.0]]])  # (N=1, T=2, F=3): features last
    s = APoZ().scores(nn.Sequential(lin), {"0.weight": lin.weight}, batches=[(x, None)])["0.weight"]
    torch.testing.assert_close(s[:, 0], torch.tensor([1.0, 0.5, 0.0]))
    model = _conv_bn()
    x = torch.randn(3, 2, 5, 5)
    scores = APoZ().scores(model, resolve_parameters(model, ["conv1.weight"]), batches=[x])
    model.eval()
    with torch.no_grad():
        a = model.bn1(model.conv1(x)).relu()
    model.train()
    expected = 1 - (a == 0).float().mean((0, 2, 3))
    torch.testing.assert_close(scores["conv1.weight"][:, 0, 0, 0], expected)


def test_apoz_needs_data_and_valid_taps():
    model = nn.Sequential(_identity_conv(2))
    with pytest.raises(PrunekitError, match="calibration data"):
        APoZ().scores(model, resolve_parameters(model))
    with pytest.raises(PrunekitError, match="not a module"):
        APoZ(taps={"0": "nope"}).scores(model, resolve_parameters(model), batches=[torch.randn(1, 2, 2, 2)])
    assert not model[0]._forward_hooks
