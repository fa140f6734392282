"""Where candidate evaluations run: in this process (default) or on a Ray cluster.

Sensitivity points, greedy candidates, NetAdapt proposals and AMC episodes are independent
evaluations `fn(problem, item)`. An executor maps them and returns results in input order,
so every allocator gives the same answer whichever executor runs it.

    get_executor("inprocess")            # a plain loop
    get_executor("ray", address=None)    # ray.init() if not yet connected; `pip install prunekit[ray]`

Ray ships the problem once (ray.put) and each item as a task; `fn` must be importable
(a module-level function), which every function prunekit passes here is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..errors import PrunekitError, did_you_mean

EXECUTORS = ("inprocess", "ray")


class InProcessExecutor:
    name = "inprocess"

    def map(self, fn: Callable, shared, items: Iterable) -> list:
        return [fn(shared, item) for item in items]


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        try:
            import ray
        except ImportError:
            raise PrunekitError("executor 'ray' needs Ray: pip install 'prunekit[ray]' (or use executor "
                                "'inprocess').") from None
        self._ray = ray
        if not ray.is_initialized():
            ray.init(address=address, num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        self._remote = {}

    def map(self, fn: Callable, shared, items: Iterable) -> list:
        ray = self._ray
        if fn not in self._remote:
            self._remote[fn] = ray.remote(fn)
        ref = ray.put(shared)
        return ray.get([self._remote[fn].remote(ref, item) for item in items])


def get_executor(executor=None, **options):
    """An executor object from a name ('inprocess', 'ray'), an executor, or None (in-process)."""
    if executor is None or executor == "inprocess":
        return InProcessExecutor()
    if executor == "ray":
        return RayExecutor(**options)
    if hasattr(executor, "map"):
        return executor
    raise PrunekitError(f"unknown executor {executor!r}.{did_you_mean(executor, EXECUTORS)} "
                        f"Known: {', '.join(EXECUTORS)}.")


# Tasks (module level, so Ray workers can import them) ------------------------------------

def evaluate_counts(problem, counts) -> float:
    """Validation accuracy of the problem's model pruned by `counts`, without fine-tuning."""
    return problem.accuracy(counts)
