import pytest
import torch

from prunekit.cnn_models import mobilenetv2, resnet8, resnet18, vgg_small

# ResNet-18 and MobileNetV2 counts are the published ImageNet figures; the small ones are summed by hand
# (resnet8: stem 464 + blocks 4,672 / 14,528 / 57,728 + fc 650; vgg_small: convs 65,184 + fc 402,826).
CASES = [
    (resnet18, {}, (1, 3, 224, 224), 11_689_512, 1000),
    (mobilenetv2, {}, (1, 3, 224, 224), 3_504_872, 1000),
    (resnet8, {}, (2, 3, 32, 32), 78_042, 10),
    (vgg_small, {}, (2, 1, 28, 28), 468_010, 10),
]


@pytest.mark.parametrize("build, options, shape, params, classes", CASES, ids=lambda c: getattr(c, "__name__", None))
def test_parameter_counts_and_output_shape(build, options, shape, params, classes):
    torch.manual_seed(0)
    model = build(**options).eval()
    assert sum(p.numel() for p in model.parameters()) == params
    assert model(torch.randn(*shape)).shape == (shape[0], classes)
