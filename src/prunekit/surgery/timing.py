"""Latency measurements that survive a shared machine.

Candidates are timed in alternation: every round runs each candidate once, in an order that
rotates from round to round, so load from other processes that comes and goes hits all of
them alike. Two statistics, for two questions:

  * fastest(times): the quickest round of each candidate. Other processes only ever add
    time, so the minimum is the best estimate of what the code itself costs (the argument
    of Python's timeit); kernel choices compare these.
  * median: what a call typically takes on this machine as it is, contention included;
    end-to-end latency and thread counts are judged by it.

A candidate may run at its own thread count (set outside the timed region).
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


def _rotated(items: list, r: int) -> list:
    return items[r % len(items):] + items[:r % len(items)] if items else items


def paired_times(candidates: Mapping[str, Callable[[], object]], *, repeats: int = 20, warmup: int = 2,
                 threads: Mapping[str, int] | None = None) -> dict[str, list[float]]:
    """{name: seconds of each round}, the candidates called in rotating alternation (inference mode).

    `threads` gives a candidate its own thread count. Candidates sharing a thread count run
    back to back within a round (the groups take turns, and so do the candidates inside a
    group); after each switch one untimed call re-forms the thread pool, so no candidate pays
    for a switch or profits from following one."""
    if repeats < 1 or not candidates:
        raise PrunekitError("Timing needs at least one candidate and repeats ≥ 1.")
    before = torch.get_num_threads()
    groups: dict[int, list[str]] = {}
    for n in candidates:
        groups.setdefault(dict(threads or {}).get(n, before), []).append(n)
    times: dict[str, list[float]] = {n: [] for n in candidates}
    try:
        with torch.inference_mode():
            for r in range(-warmup, repeats):
                for count in _rotated(list(groups), r):
                    torch.set_num_threads(count)
                    names = _rotated(groups[count], r)
                    candidates[names[0]]()  # untimed: the first call after a switch is not representative
                    for n in names:
                        _synchronize()
                        start = time.perf_counter()
                        candidates[n]()
                        _synchronize()
                        if r >= 0:
                            times[n].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return times


def paired_medians(candidates: Mapping[str, Callable[[], object]], *, repeats: int = 20, warmup: int = 2,
                   threads: Mapping[str, int] | None = None) -> dict[str, float]:
    """{name: median seconds of one call} (see paired_times)."""
    times = paired_times(candidates, repeats=repeats, warmup=warmup, threads=threads)
    return {n: statistics.median(t) for n, t in times.items()}


def fastest(times: Mapping[str, list[float]]) -> dict[str, float]:
    """{name: its quickest round in seconds}."""
    return {n: min(t) for n, t in times.items()}


def model_latencies(models: Mapping[str, nn.Module], example_inputs, *, repeats: int = 20, warmup: int = 2,
                    threads: Mapping[str, int] | None = None) -> dict[str, list[float]]:
    """paired_times of each model's forward pass on `example_inputs`, in eval mode."""
    with ExitStack() as stack:
        for m in models.values():
            stack.enter_context(evaluation_mode(m))
        return paired_times({n: (lambda m=m: call(m, example_inputs)) for n, m in models.items()},
                            repeats=repeats, warmup=warmup, threads=threads)


def fastest_threads(model: nn.Module, example_inputs, candidates=(1, 2), *, repeats: int = 20) -> tuple[int, dict[int, float]]:
    """(the thread count with the lowest median latency, {threads: median seconds}).

    Small pruned models often run faster on one thread than on two when other work shares
    the cores, so the count is measured, not assumed; the previous setting is restored.
    """
    counts = sorted(set(candidates))
    if not counts or any(not (isinstance(t, int) and t >= 1) for t in counts):
        raise PrunekitError(f"fastest_threads needs positive thread counts, e.g. (1, 2), not {candidates!r}.")
    times = model_latencies({str(t): model for t in counts}, example_inputs, repeats=repeats,
                            threads={str(t): t for t in counts})
    by_count = {t: statistics.median(times[str(t)]) for t in counts}
    return min(by_count, key=by_count.get), by_count
