"""Keep other processes' CPU use out of benchmark timings (Linux ``/proc``).

:func:`install` wraps ``thor_planner.timing.measure`` (which every timing in the library goes
through: candidate refreshes, the auto choice, device-profile cells): before a measurement it
waits until the rest of the machine is idle, and it repeats a measurement during which other
processes used more than ``threshold`` of one core. Bench-only: the library never waits (it repeats
disturbed measurements and records the load, :mod:`thor_planner.timing.busy`, which reads the same
``/proc`` counters).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from thor_planner.timing import candidates as timing
from thor_planner.timing.busy import others_cpu_seconds

_TICK = os.sysconf("SC_CLK_TCK")


def others_busy() -> float:
    """A snapshot: CPU seconds used by other processes (compare two snapshots); the library's reading
    (:func:`thor_planner.timing.busy.others_cpu_seconds`), 0 where ``/proc`` is absent."""
    return others_cpu_seconds() or 0.0


@dataclass
class Stats:
    measurements: int = 0
    repeated: int = 0
    disturbed: int = 0  # still disturbed after every attempt
    waited_s: float = 0.0


STATS = Stats()


def wait_quiet(threshold: float = 0.15, window: float = 0.25, max_wait: float = 90.0) -> None:
    """Block until other processes used < ``threshold`` cores over a ``window`` (at most ``max_wait`` s)."""
    start = time.perf_counter()
    while time.perf_counter() - start < max_wait:
        before = others_busy()
        time.sleep(window)
        if others_busy() - before <= threshold * window + 1.0 / _TICK:
            break
    STATS.waited_s += time.perf_counter() - start


def install(threshold: float = 0.15, attempts: int = 4) -> Stats:
    """Wrap ``timing.measure`` with the quiet gate; returns the live statistics."""
    raw = timing.measure

    def measure(fn, device, config):
        STATS.measurements += 1
        for attempt in range(attempts):
            wait_quiet(threshold)
            before, start = others_busy(), time.perf_counter()
            times = raw(fn, device, config)
            elapsed = time.perf_counter() - start
            if others_busy() - before <= threshold * elapsed + 2.0 / _TICK:  # ± one clock tick each end
                return times
            STATS.repeated += 1
        STATS.disturbed += 1
        return times

    timing.measure = measure
    return STATS
