"""Wall time and peak resident memory of a block of work (no extra dependency).

The peak is sampled from ``/proc/self/statm`` by a background thread (Linux); elsewhere it falls
back to the process-wide ``ru_maxrss``, which is a peak since the process started.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from dataclasses import dataclass

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * _PAGE
    except OSError:
        return None


def max_rss_bytes() -> int:
    """Peak RSS of this process since it started."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


@dataclass
class Measurement:
    seconds: float = 0.0
    peak_rss_bytes: int = 0
    start_rss_bytes: int = 0

    @property
    def peak_rss_gib(self) -> float:
        return self.peak_rss_bytes / 2**30


class measure:
    """``with measure() as m: ...`` then ``m.seconds``, ``m.peak_rss_bytes`` (absolute RSS peak)."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.result = Measurement()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            rss = current_rss_bytes()
            if rss is not None and rss > self.result.peak_rss_bytes:
                self.result.peak_rss_bytes = rss

    def __enter__(self) -> Measurement:
        rss = current_rss_bytes()
        self.result.start_rss_bytes = rss or 0
        self.result.peak_rss_bytes = rss or 0
        if rss is not None:
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        self._started = time.perf_counter()
        return self.result

    def __exit__(self, *exc) -> None:
        self.result.seconds = time.perf_counter() - self._started
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            rss = current_rss_bytes() or 0
            self.result.peak_rss_bytes = max(self.result.peak_rss_bytes, rss)
        else:
            self.result.peak_rss_bytes = max_rss_bytes()
