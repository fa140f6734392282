"""BatchNorm folding (folded == original in eval mode), int8 per-channel weights, 2:4 export."""

import warnings

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.cnn_models import mobilenetv2, resnet8
from prunekit.errors import PrunekitError
from prunekit.surgery import Int8Layer, find_foldable, fold_batchnorm, is_two_four, quantize_int8, to_semi_structured
from prunekit.surgery.quantize import model_bytes, quantize_per_channel

pytestmark = pytest.mark.usefixtures("one_thread")


def _randomise_bn(model):
    """Non-trivial running statistics and affine parameters, as after training."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if m.affine:
                with torch.no_grad():
                    m.weight.copy_(torch.randn(m.num_features, generator=g))
                    m.bias.copy_(torch.randn(m.num_features, generator=g))
    return model


def _rel(a, b):
    return float((a - b).norm() / a.norm())


@pytest.mark.parametrize("build", [lambda: resnet8(),
                                   lambda: mobilenetv2(num_classes=10, width=0.35, stem_stride=1)])
def test_folded_cnn_equals_the_original_in_eval_mode(build):
    torch.manual_seed(0)
    model = _randomise_bn(build())
    x = torch.randn(2, 3, 32, 32)
    folded, pairs = fold_batchnorm(model, x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert len(pairs) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        assert _rel(model.eval()(x), folded(x)) <= 1e-5
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original keeps its BatchNorms


class _SharedOutput(nn.Module):
    """conv → bn, but the conv output is also added to the result: folding would change the sum."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)
        self.lin, self.bn1 = nn.Linear(3, 4), nn.BatchNorm1d(4)
        self.conv2, self.bn2 = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3, track_running_stats=False)

    def forward(self, x):
        y = self.conv(x)
        z = self.bn(y) + y
        z = self.bn2(self.conv2(z))  # batch statistics even in eval mode: not foldable
        return self.bn1(self.lin(z.mean((2, 3))))  # Linear → BatchNorm1d folds


def test_only_exact_pairs_fold():
    model = _randomise_bn(_SharedOutput())
    x = torch.randn(4, 3, 5, 5)
    assert find_foldable(model, x) == [("lin", "bn1")]
    folded, _ = fold_batchnorm(model, x)
    with torch.no_grad():
        assert _rel(model.eval()(x), folded(x)) <= 1e-5


def test_folding_a_masked_model_keeps_its_zeros():
    torch.manual_seed(0)
    model = _randomise_bn(resnet8())
    pk.prune(model, 0.5)
    folded, _ = fold_batchnorm(model, torch.randn(1, 3, 16, 16))
    masks = pk.get_masks(model)
    for name, mask in masks.items():
        assert not pk.named_parameters(folded)[name][~mask].any()


def test_int8_error_is_at_most_half_a_step_and_zeros_stay_zero():
    torch.manual_seed(0)
    w = torch.randn(6, 5, 3)
    w[0] = 0
    w[torch.rand_like(w) < 0.5] = 0
    q, scale = quantize_per_channel(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127
    approx = q.float() * scale[:, None, None]
    assert ((approx - w).abs() <= scale[:, None, None] / 2 + 1e-7).all()
    assert torch.equal(approx == 0, (w == 0) | (approx == 0)) and not approx[w == 0].any()
    assert torch.allclose(approx.reshape(6, -1).abs().amax(1), w.reshape(6, -1).abs().amax(1))


def test_int8_model_is_four_times_smaller_and_close():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 6 * 6, 64), nn.ReLU(),
                          nn.Linear(64, 10))
    x = torch.randn(4, 3, 8, 8)
    q = quantize_int8(model)
    assert sum(isinstance(m, Int8Layer) for m in q.modules()) == 3
    with torch.no_grad():
        assert _rel(model(x), q(x)) < 0.02
    weights = sum(m.weight.numel() for m in model.modules() if hasattr(m, "weight"))
    assert model_bytes(q) == model_bytes(model) - 3 * weights + 4 * (16 + 64 + 10)
    with pytest.raises(PrunekitError, match="not a Linear"):
        quantize_int8(model, layers=["4"])


def test_two_four_falls_back_to_dense_on_cpu_with_a_reason():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 6))
    pk.prune_nm(model, 2, 4, params=["0.weight"])
    assert is_two_four(pk.effective_weight(model, "0.weight")) and not is_two_four(model[2].weight)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, info = to_semi_structured(model, device="cpu")
    assert info["fallback"] and "CUDA" in info["fallback"] and any("CUDA" in str(w.message) for w in caught)
    assert info["converted"] == [] and "2" in info["skipped"]
    x = torch.randn(3, 64)
    assert torch.equal(out(x), model(x))
    with pytest.raises(PrunekitError):
        to_semi_structured(model, dtype=torch.float32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="2:4 sparse kernels need a CUDA GPU")
def test_two_four_runs_on_the_gpu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 128))
    pk.prune_nm(model, 2, 4)
    out, info = to_semi_structured(model)
    if not info["converted"]:
        pytest.skip(f"this GPU's kernels refused 2:4: {info['skipped']}")
    x = torch.randn(64, 128)
    reference = model.to("cuda", torch.float16)(x.to("cuda", torch.float16))
    assert _rel(reference.float(), out(x.to("cuda", torch.float16)).float()) < 1e-2
