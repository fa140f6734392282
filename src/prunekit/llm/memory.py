"""Peak resident memory (RSS) of this process over a block of code.

`resource.getrusage` reports the process's peak since it started, which cannot tell two
runs in one process apart; this samples /proc/self/statm from a thread instead (every
`interval` seconds, so a spike shorter than that can be missed). Off Linux it falls back to
the process-wide peak.
"""

from __future__ import annotations

import ctypes
import gc
import os
import resource
import threading
from pathlib import Path

_STATM = Path("/proc/self/statm")


def current_rss() -> int:
    """Resident bytes now (Linux), else the process's peak so far."""
    try:
        return int(_STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def release_free_memory() -> None:
    """Hand the heap's free pages back to the system (glibc's malloc_trim; elsewhere a no-op).

    Tensors of a few MB come from the C heap, and glibc keeps freed ones for reuse, so a
    process that allocated many of different sizes (one block's calibration pass and its
    Hessians) keeps that memory resident while the next block allocates more. Trimming between
    blocks returns it; nothing live is touched.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


class PeakRSS:
    """with PeakRSS() as peak: ...; peak.bytes is the largest RSS seen (peak.start: at entry)."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.start = self.bytes = 0
        self._stop = threading.Event()
        self._thread = None

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.bytes = max(self.bytes, current_rss())

    def __enter__(self):
        self.start = self.bytes = current_rss()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.bytes = max(self.bytes, current_rss())
        return False

    @property
    def gigabytes(self) -> float:
        return self.bytes / 1e9
