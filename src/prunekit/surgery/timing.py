"""Latency measurements that survive a shared machine.

Candidates are timed in alternation: every round runs each candidate once, in an order that
rotates from round to round, and each candidate's latency is the median over rounds. Load
from other processes that drifts during a measurement therefore hits all candidates alike,
and one slow outlier does not move a median.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from ..errors import PrunekitError
from ..modes import evaluation_mode
from .common import call


@contextmanager
def num_threads(n: int):
    """torch.set_num_threads(n) for the duration, the previous count restored afterwards."""
    if not (isinstance(n, int) and n >= 1):
        raise PrunekitError(f"A thread count must be a positive integer, not {n!r}.")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def paired_medians(candidates: Mapping[str, Callable[[], object]], *, repeats: int = 20,
                   warmup: int = 2) -> dict[str, float]:
    """{name: median seconds of one call}, the candidates timed in rotating alternation."""
    if repeats < 1 or not candidates:
        raise PrunekitError("paired_medians needs at least one candidate and repeats ≥ 1.")
    names = list(candidates)
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for _ in range(warmup):
            for n in names:
                candidates[n]()
        for r in range(repeats):
            for n in names[r % len(names):] + names[:r % len(names)]:
                _synchronize()
                start = time.perf_counter()
                candidates[n]()
                _synchronize()
                times[n].append(time.perf_counter() - start)
    return {n: statistics.median(t) for n, t in times.items()}


def model_latencies(models: Mapping[str, nn.Module], example_inputs, *, repeats: int = 20,
                    warmup: int = 2) -> dict[str, float]:
    """Median seconds per forward pass of each model on `example_inputs`, in eval mode, paired."""
    with ExitStack() as stack:
        for m in models.values():
            stack.enter_context(evaluation_mode(m))
        return paired_medians({n: (lambda m=m: call(m, example_inputs)) for n, m in models.items()},
                              repeats=repeats, warmup=warmup)


def fastest_threads(model: nn.Module, example_inputs, candidates=(1, 2), *, repeats: int = 20) -> tuple[int, dict[int, float]]:
    """(the thread count with the lowest median latency, {threads: seconds}).

    Small pruned models often run faster on one thread than on two when other work shares
    the cores, so the count is measured, not assumed. Thread counts are alternated call by
    call like any other candidates; the previous setting is restored.
    """
    counts = sorted(set(candidates))
    if not counts:
        raise PrunekitError("fastest_threads needs at least one thread count, e.g. (1, 2).")

    def at(n):
        def run():
            with num_threads(n):
                call(model, example_inputs)
        return run

    with evaluation_mode(model):
        seconds = paired_medians({str(n): at(n) for n in counts}, repeats=repeats)
    by_count = {n: seconds[str(n)] for n in counts}
    return min(by_count, key=by_count.get), by_count
