"""The per-size choice of the fastest accurate backend (``--backend auto``); the accuracy check
itself is :mod:`thor_planner.inversion.accuracy`.

**Choice.** For each block size, ascending, the accurate backends are timed by a :data:`Timer`
(``timer(backend, size, count) → seconds``; the default times :func:`inversion.invert_stack`, the
runtime's call, on a synthetic stack; tests inject fake timings here) on a sample of
``min(count, work_cap / s³)`` blocks, and the fastest wins. To bound the wall time, a backend whose
time at its last size was more than ``prune_ratio`` × the best and whose time extrapolated to this
size (∝ s³ · blocks) exceeds ``prune_seconds`` is no longer tried ("pruned", recorded).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from thor_planner.inversion.accuracy import ACCURACY_CONDITION, ACCURACY_REFERENCE, ACCURACY_TOLERANCE, check_accuracy
from thor_planner.inversion.backends import DEFAULT_BACKEND, invert_stack
from thor_planner.partition import block_counts

WORK_CAP = {"cpu": 2.0**31, "cuda": 2.0**38}

Timer = Callable[[str, int, int], float]


def timing_stack(size: int, count: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``count`` well-conditioned SPD blocks of ``size`` (up to 4 distinct ones, tiled) for timing."""
    distinct = min(count, 4)
    gen = torch.Generator().manual_seed(size)
    x = torch.randn(distinct, size, size, generator=gen, dtype=torch.float64) / size**0.5
    base = (x @ x.transpose(-1, -2) + 0.1 * torch.eye(size, dtype=torch.float64)).float()
    reps = -(-count // distinct)
    return base.repeat(reps, 1, 1)[:count].contiguous().to(device)


def measured_timer(device: torch.device, damping: float = 0.03, budget_s: float = 0.2) -> Timer:
    """A :data:`Timer` that times ``invert_stack(..., check=True)`` (the runtime's call) on a
    synthetic stack: median after one warm-up, repeats within ``budget_s``."""
    from thor_planner.timing.candidates import TimingConfig, measure

    config = TimingConfig(budget_s=budget_s, min_repeats=3, max_repeats=7, warmup=1)

    def timer(name: str, size: int, count: int) -> float:
        stack = timing_stack(size, count, device)
        return statistics.median(measure(lambda: invert_stack(stack, damping, name), device, config))

    return timer


@dataclass
class Selection:
    """The backend per block size and why: measured seconds, exclusions, pruned backends."""

    backends: dict[int, str] = field(default_factory=dict)
    seconds: dict[int, dict[str, float]] = field(default_factory=dict)
    sample_counts: dict[int, int] = field(default_factory=dict)
    excluded: list[dict] = field(default_factory=list)
    pruned: list[dict] = field(default_factory=list)

    def device_fields(self) -> dict:
        """What goes into the plan's device section (JSON: string keys)."""
        return {"backends": {str(s): n for s, n in sorted(self.backends.items())},
                "excluded": list(self.excluded), "pruned": list(self.pruned),
                "accuracy": {"tolerance": ACCURACY_TOLERANCE, "condition": ACCURACY_CONDITION,
                             "check": ACCURACY_REFERENCE}}


def sample_count(size: int, count: int, work_cap: float) -> int:
    """Blocks to time at ``size``: the network's ``count``, capped at ``work_cap / size³`` (≥ 1)."""
    return max(1, min(count, int(work_cap // size**3)))


def choose_backends(
    counts: Mapping[int, int],
    names: Sequence[str],
    device: torch.device | str = "cpu",
    *,
    timer: Timer | None = None,
    accuracy: Callable[[Sequence[str], int], tuple[list[str], list[dict]]] | None = None,
    work_cap: float | None = None,
    prune_ratio: float = 3.0,
    prune_seconds: float = 0.25,
    progress: Callable[[int], None] | None = None,
) -> Selection:
    """Per block size in ``counts`` (size → blocks in the network), the fastest accurate backend
    among ``names``. With one accurate backend nothing is timed; with none, the default backend is
    used (its exclusion stays recorded). ``timer`` and ``accuracy`` are seams for tests."""
    device = torch.device(device)
    timer = timer or measured_timer(device)
    accuracy = accuracy or (lambda ns, s: check_accuracy(ns, s, device))
    cap = work_cap if work_cap is not None else WORK_CAP.get(device.type, WORK_CAP["cpu"])
    sel = Selection()
    last: dict[str, tuple[int, int, float, float]] = {}  # name → (size, sample, seconds, ratio to best)
    pruned: set[str] = set()
    for size in sorted(counts):
        if size == 1:
            sel.backends[1] = names[0] if names else DEFAULT_BACKEND
            continue
        sample = sample_count(size, counts[size], cap)
        alive = []
        for name in names:
            if name in pruned:
                continue
            if name in last and len(names) > 1:
                s0, n0, t0, ratio = last[name]
                guess = t0 * (size / s0) ** 3 * sample / n0
                if ratio > prune_ratio and guess > prune_seconds:
                    pruned.add(name)
                    sel.pruned.append({"backend": name, "size": size, "reason":
                                       f"{ratio:.1f}x slower than the best at size {s0}; about {guess:.2g} s "
                                       f"predicted here: not tried at sizes >= {size}"})
                    continue
            alive.append(name)
        ok, excluded = accuracy(alive, size)
        sel.excluded.extend(excluded)
        if len(ok) <= 1:
            sel.backends[size] = ok[0] if ok else DEFAULT_BACKEND
        else:
            times = {name: float(timer(name, size, sample)) for name in ok}
            best = min(times, key=times.__getitem__)
            sel.backends[size], sel.seconds[size], sel.sample_counts[size] = best, times, sample
            for name, t in times.items():
                last[name] = (size, sample, t, t / times[best])
        if progress is not None:
            progress(size)
    return sel


def default_backend(device_type: str) -> str:
    """``--backend`` when not given: ``auto`` on CUDA, the Cholesky default on CPU."""
    return "auto" if device_type == "cuda" else DEFAULT_BACKEND


def network_counts(dims: Sequence[int], candidates: Sequence[int]) -> dict[int, int]:
    """Every block size any candidate split produces, with its largest count over the candidates."""
    out: dict[int, int] = {}
    for b in candidates:
        for size, count in block_counts(list(dims), [b] * len(dims)).items():
            out[size] = max(out.get(size, 0), count)
    return dict(sorted(out.items()))


def select_for_model(dims: Sequence[int], candidates: Sequence[int], backend: str, device: torch.device,
                     progress: Callable[[int], None] | None = None) -> Selection:
    """The profiler's backend choice: every block size the candidates produce gets the fastest
    accurate backend (``auto``) or ``backend`` where it passes the accuracy check (the default
    backend where it does not)."""
    from thor_planner.inversion.extra import device_backends

    names = device_backends(device.type) if backend == "auto" else [backend]
    return choose_backends(network_counts(dims, candidates), names, device, progress=progress)

