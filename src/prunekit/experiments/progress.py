"""How far a long experiment is: units of work finished out of the expected total, the time
spent and an estimate of the time left, one log line per unit (readable in a log file, unlike
a redrawn bar).

A unit is one (setting, seed) run. A unit that finishes almost at once was found on disk and
loaded, so the estimate of the time left averages only the units that really ran.
"""

from __future__ import annotations

import time

from ..errors import PrunekitError

RESUMED_S = 1.0  # a unit faster than this was loaded from an earlier run, not computed


def duration(seconds: float) -> str:
    """1 h 02 min / 3 min 05 s / 42 s."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


class WorkProgress:
    def __init__(self, name: str, log=print, clock=time.monotonic):
        self.name, self.log, self.clock = name, log, clock
        self.total = self.done = 0
        self.computed: list[float] = []  # durations of the units that ran (not loaded)
        self.start = self.last = clock()

    def expect(self, units: int) -> None:
        """Announce `units` more units of work (an experiment does, before starting them)."""
        self.total += units

    def advance(self, label: str) -> None:
        """One unit finished: log done/total, its time, the time spent and the time left."""
        if self.done >= self.total:
            raise PrunekitError(f"[experiment {self.name}] more units finished than the {self.total} announced.")
        now = self.clock()
        took, self.last = now - self.last, now
        self.done += 1
        if took >= RESUMED_S:
            self.computed.append(took)
        how = f"{duration(took)}" if took >= RESUMED_S else "loaded from an earlier run"
        left = self.total - self.done
        if left == 0:
            eta = "done"
        elif self.computed:
            eta = f"about {duration(left * sum(self.computed) / len(self.computed))} left"
        else:
            eta = "time left unknown until a unit has run"
        self.log(f"[experiment {self.name}] {self.done}/{self.total} {label} ({how}); "
                 f"{duration(now - self.start)} so far, {eta}")
