"""Where a run's model and data come from: built-in names, or the user's own code.

    model: {name: lenet300100}                 # prunekit.models.MODELS
    model: {name: "mypkg.models:make_net"}     # your factory, imported; takes num_classes if it wants it
    data:  {name: mnist5k}                     # prunekit.data.DATASETS
    data:  {name: "mypkg.data:load"}           # returns a prunekit.data.Dataset or (train, test)

A user's data function returns either a prunekit.data.Dataset or a pair of TensorDatasets
(train, test) of (inputs, integer labels); the number of classes is then the largest label + 1.
"""

from __future__ import annotations

import importlib

import torch
from torch.utils.data import TensorDataset

from ..data import DATASETS, Dataset, load_dataset
from ..errors import PrunekitError
from ..models import build_model


def dataset_from(name: str) -> Dataset:
    if name in DATASETS or ":" not in name:
        return load_dataset(name)
    module_name, _, attr = name.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise PrunekitError(f"Cannot load data '{name}' ({e}). Use a built-in set ({', '.join(DATASETS)}) or "
                            "'package.module:function' importable from here.") from None
    result = function()
    if isinstance(result, Dataset):
        return result
    if (isinstance(result, tuple) and len(result) == 2
            and all(isinstance(d, TensorDataset) and len(d.tensors) == 2 for d in result)):
        train, test = result
        labels = torch.cat([train.tensors[1], test.tensors[1]])
        if labels.dtype not in (torch.int64, torch.int32) or len(labels) == 0 or labels.min() < 0:
            raise PrunekitError(f"Data '{name}': labels must be non-negative integers.")
        return Dataset(name, train, test, int(labels.max()) + 1, tuple(train.tensors[0].shape[1:]))
    raise PrunekitError(f"Data function '{name}' returned a {type(result).__name__}; return a prunekit.data.Dataset "
                        "or a pair (train, test) of TensorDataset(inputs, labels).")


def fresh_model(name: str, options: dict, num_classes: int, seed: int, device=None):
    """The model, initialised from `seed` (the same seed, the same weights on every device: it is
    built on the CPU, then moved); the caller's global torch generator is left where it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(name, num_classes=num_classes, **options)
    return model.to(device) if device is not None else model


def check_fits(recipe, dataset: Dataset) -> None:
    """One forward pass of the recipe's model on the data's inputs, before anything is trained or
    written: a model built for other inputs is refused with both shapes named."""
    model = fresh_model(recipe.model.name, recipe.model.options, dataset.num_classes, recipe.seed)
    example = dataset.example_input(2)
    try:
        with torch.no_grad():
            out = model.eval()(example)
    except Exception as e:  # any failure of the user's forward: say which pairing does not fit
        raise PrunekitError(f"Model '{recipe.model.name}' cannot run on data '{dataset.name}' (inputs of shape "
                            f"{tuple(example.shape[1:])}): {type(e).__name__}: {str(e).splitlines()[0][:160]}. "
                            "Choose matching --model/--data (or model options).") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] < dataset.num_classes:
        raise PrunekitError(f"Model '{recipe.model.name}' must return logits of shape (batch, classes ≥ "
                            f"{dataset.num_classes}) on data '{dataset.name}', got "
                            f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}.")


__all__ = ["check_fits", "dataset_from", "fresh_model"]
