"""The latency lookup table's prediction against measured latency; Ray executor equals in-process."""

import time

import pytest
import torch

from torch.utils.data import TensorDataset

from prunekit.allocate import (GreedyAllocator, LatencyTable, NetAdapt, TableProblem, UnstructuredProblem, layer_widths,
                               measure_latency)
from prunekit.allocate.sensitivity import sensitivity_curves
from prunekit.errors import PrunekitError
from prunekit.models import MNIST1DCNN
from prunekit.training import TrainConfig


pytestmark = pytest.mark.usefixtures("one_thread")


def _prediction_errors(x):
    table = LatencyTable(MNIST1DCNN(channels=24), x, repeats=15, warmup=3)
    errors = {}
    for channels in (24, 16, 8):
        small = MNIST1DCNN(channels=channels)
        widths = layer_widths(small)
        assert widths["conv2"] == (channels, channels)
        check = table.check(small, x)
        errors[channels] = check["relative_error"]
        print(f"channels={channels}: predicted {check['predicted_s'] * 1e3:.3f} ms, "
              f"measured {check['measured_s'] * 1e3:.3f} ms, error {check['relative_error']:.1%}")
    return table, errors


def test_table_prediction_vs_measured_latency_of_narrower_models():
    x = torch.randn(128, 40)
    # Shared CPUs make timings noisy: a burst of load during one measurement can skew it by
    # several times, so the table is rebuilt up to three times and the best attempt must be
    # within the (loose on purpose) bound; every attempt's errors are printed.
    for _ in range(3):
        table, errors = _prediction_errors(x)
        if max(errors.values()) < 1.0:
            break
    assert max(errors.values()) < 1.0
    # the dense prediction is the dense measurement by construction (overhead term)
    assert table.predict() == pytest.approx(table.measured_dense)
    # a narrower layer is looked up once and cached
    n = len(table.entries)
    table.lookup("conv2", 8, 8)
    assert len(table.entries) == n


def test_table_rejects_unknown_layers_and_empty_widths():
    table = LatencyTable(MNIST1DCNN(channels=4), torch.randn(2, 40), repeats=2, warmup=1)
    with pytest.raises(PrunekitError, match="known: conv1"):
        table.lookup("conv9", 4, 4)
    with pytest.raises(PrunekitError):
        table.lookup("conv2", 0, 4)
    assert measure_latency(MNIST1DCNN(channels=4), torch.randn(2, 40), repeats=3) > 0


def _table():
    curves = {"a": [(0.5, 0.01), (0.9, 0.3)], "b": [(0.5, 0.05), (0.9, 0.2)]}
    return TableProblem({"a": 40, "b": 25}, {"a": 3.0, "b": 7.0}, curves, max_ratio=0.9)


@pytest.mark.slow  # starting a local Ray instance takes 15-25 s on two shared cores
def test_ray_executor_matches_in_process():
    ray = pytest.importorskip("ray")
    from prunekit.allocate.executor import RayExecutor

    start = time.perf_counter()
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        executor = RayExecutor()
        problem = _table()
        assert sensitivity_curves(problem, executor=executor).curves == sensitivity_curves(problem).curves
        assert (GreedyAllocator(0.5, executor=executor).allocate(problem).counts
                == GreedyAllocator(0.5).allocate(problem).counts)
        # a real model and its data travel to the workers; NetAdapt proposals come back as models
        torch.manual_seed(0)
        model = MNIST1DCNN(channels=6)
        val = TensorDataset(torch.randn(32, 40), torch.randint(0, 10, (32,)))
        real = UnstructuredProblem(model, val, torch.randn(1, 40), metric="flops", train_data=val,
                                   train_config=TrainConfig(steps=1, batch_size=8))
        assert sensitivity_curves(real, (0.5,), executor=executor).curves == sensitivity_curves(real, (0.5,)).curves
        remote = NetAdapt(0.6, delta=0.2, finetune_steps=2, executor=executor).allocate(real)
        local = NetAdapt(0.6, delta=0.2, finetune_steps=2).allocate(real)
        assert remote.counts == local.counts and remote.accuracy == local.accuracy
    finally:
        ray.shutdown()
    print(f"ray test took {time.perf_counter() - start:.1f} s")
