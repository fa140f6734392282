import os
import tempfile

import pytest
import torch

# Datasets are cached once per test session in a private folder, never in the user's cache.
os.environ.setdefault("PRUNEKIT_CACHE", os.path.join(tempfile.gettempdir(), "prunekit-test-cache"))
# One intra-op thread by default: the suite's models are tiny, and on a shared 2-core machine torch's
# threads spin against other processes (measured: 61 s with one thread, 423 s with two under load).
# Tests that measure thread counts set their own.
torch.set_num_threads(1)


@pytest.fixture
def seeded():
    torch.manual_seed(0)
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on shared cores: one thread avoids oversubscription (restored afterwards).
    Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


DIGITS_MLP_CONFIG = dict(steps=300, lr=1e-2, batch_size=64)


@pytest.fixture(scope="module")
def digits_mlp():
    """(model, data, config): a 64-32-32-10 MLP trained briefly on digits (fresh per test module)."""
    from prunekit.data import load_dataset
    from prunekit.models import mnist1d_mlp
    from prunekit.training import TrainConfig, train

    data = load_dataset("digits")
    torch.manual_seed(0)
    model = mnist1d_mlp(in_features=64, hidden=32)
    config = TrainConfig(**DIGITS_MLP_CONFIG)
    train(model, data.train, config, progress=False)
    return model, data, config
