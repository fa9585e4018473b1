"""Noticing a busy machine while timing: other processes' CPU time during each measurement.

On Linux, ``/proc/stat`` gives the whole machine's non-idle CPU time and ``/proc/self/stat`` this
process's; their difference over a measurement is what other processes used. A measurement during
which others used more than ``threshold`` cores (beyond two clock ticks of rounding) is repeated,
up to ``attempts`` times in all, and the least disturbed attempt is kept; if every attempt was
disturbed the measurement counts as ``disturbed``, and the plan's ``device.busy`` section records it
(the CLI warns). Where ``/proc`` is absent nothing is checked (``checked: false``).

:func:`watching` makes a :class:`BusyMonitor` the one that :func:`timing.candidates.measure` reports
to; the reader and the clock are seams for tests (fake readings).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

try:
    _TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
except (AttributeError, ValueError, OSError):
    _TICK_S = 0.01

Reader = Callable[[], "float | None"]


def others_cpu_seconds() -> float | None:
    """CPU seconds used by every other process since boot (``None`` where ``/proc`` is absent)."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
        with open("/proc/self/stat") as fh:
            own = fh.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    machine = sum(fields[:8]) - idle
    return (machine - int(own[11]) - int(own[12])) * _TICK_S  # minus this process's utime + stime


@dataclass
class BusyMonitor:
    """Counts and repeats measurements disturbed by other processes (see the module doc)."""

    threshold: float = 0.5  # cores used by other processes during a measurement
    attempts: int = 3
    reader: Reader = others_cpu_seconds
    clock: Callable[[], float] = time.perf_counter
    slack_s: float = 2 * _TICK_S  # the reader's rounding, at both ends of a measurement
    measurements: int = 0
    repeated: int = 0
    disturbed: int = 0
    peak_cores: float = 0.0
    checked: bool = field(default=True)

    def __post_init__(self) -> None:
        if not self.threshold > 0:
            raise ValueError(f"Invalid threshold={self.threshold}: must be > 0 cores")
        if self.attempts < 1:
            raise ValueError(f"Invalid attempts={self.attempts}: must be >= 1")

    def run(self, once: Callable[[], list[float]]) -> list[float]:
        """``once()`` (one measurement), repeated while other processes were busy during it."""
        self.measurements += 1
        best: tuple[float, list[float]] | None = None
        for attempt in range(self.attempts):
            before, start = self.reader(), self.clock()
            times = once()
            after, elapsed = self.reader(), self.clock() - start
            if before is None or after is None:
                self.checked = False
                return times
            cores = max(0.0, after - before - self.slack_s) / max(elapsed, 1e-9)
            self.peak_cores = max(self.peak_cores, cores)
            if cores <= self.threshold:
                return times
            if best is None or cores < best[0]:
                best = (cores, times)
            if attempt + 1 < self.attempts:
                self.repeated += 1
        self.disturbed += 1
        assert best is not None
        return best[1]

    @property
    def busy(self) -> bool:
        return self.disturbed > 0

    def fields(self) -> dict:
        """The plan's ``device.busy`` section."""
        return {"busy": self.busy, "checked": self.checked, "threshold_cores": self.threshold,
                "others_peak_cores": round(self.peak_cores, 2), "measurements": self.measurements,
                "repeated": self.repeated, "disturbed": self.disturbed, "warning": self.warning()}

    def warning(self) -> str | None:
        if not self.busy:
            return None
        return (f"Other processes used up to {self.peak_cores:.1f} CPU cores while timing "
                f"({self.disturbed} of {self.measurements} measurements disturbed even after "
                f"{self.attempts} attempts): the timings and the split may be off; re-run on a quiet machine")


_ACTIVE: list[BusyMonitor] = []


def current() -> BusyMonitor | None:
    """The monitor measurements report to (the innermost :func:`watching`), if any."""
    return _ACTIVE[-1] if _ACTIVE else None


@contextmanager
def watching(monitor: BusyMonitor) -> Iterator[BusyMonitor]:
    """Within the block, every :func:`timing.candidates.measure` call goes through ``monitor``."""
    _ACTIVE.append(monitor)
    try:
        yield monitor
    finally:
        _ACTIVE.remove(monitor)
