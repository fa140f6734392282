"""The progress of a long experiment: units counted against the announced total, and the time
left estimated from the units that really ran (loaded ones are instant)."""

import pytest

from prunekit.errors import PrunekitError
from prunekit.experiments.progress import WorkProgress, duration


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_time_left_averages_only_the_units_that_ran():
    clock, lines = FakeClock(), []
    progress = WorkProgress("a", lines.append, clock)
    progress.expect(2)
    progress.expect(2)  # a second setting announces its seeds
    clock.now = 0.2
    progress.advance("seed 0")  # found on disk: instant
    assert "1/4 seed 0 (loaded from an earlier run)" in lines[-1] and "unknown" in lines[-1]
    clock.now = 60.2
    progress.advance("seed 1")  # 60 s of work
    assert "2/4" in lines[-1] and "about 2 min 00 s left" in lines[-1]  # 2 units × 60 s, not diluted by the loaded one
    clock.now = 180.2
    progress.advance("seed 2")  # 120 s: the mean of the real units is now 90 s
    assert "about 1 min 30 s left" in lines[-1] and "3 min 00 s so far" in lines[-1]
    clock.now = 200.2
    progress.advance("seed 3")
    assert lines[-1].endswith("done") and "4/4" in lines[-1]
    with pytest.raises(PrunekitError, match="more units"):
        progress.advance("one too many")


def test_duration_reads_like_a_clock():
    assert [duration(s) for s in (0.4, 42, 185, 3725)] == ["0 s", "42 s", "3 min 05 s", "1 h 02 min"]
