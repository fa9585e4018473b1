"""The per-size choice of the fastest accurate backend (``--backend auto``); the accuracy check
itself is :mod:`thor_planner.inversion.accuracy`.

**Damping.** Both the accuracy check and the timer give each backend the blocks the runtime gives
it: a factor block plus ``factor_shift(damping) = sqrt(damping)`` on its diagonal, added in float32
by the runtime's own :func:`inversion.backends.damp`. For the check, the factor block is the
accuracy module's synthetic block rescaled so that the *damped* block keeps the log-spaced spectrum
of condition number ``ACCURACY_CONDITION`` (from ``shift`` up to ``shift·κ``), and the error is
taken against the float64 inverse of the same damped float32 input.

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

from thor_planner.inversion.accuracy import (classify_backends, ACCURACY_BLOCKS, ACCURACY_CONDITION, ACCURACY_REFERENCE,
                                             ACCURACY_TOLERANCE, accuracy_blocks)
from thor_planner.inversion.backends import DEFAULT_BACKEND, damp, invert_stack
from thor_planner.partition import block_counts
from thor_planner.timing.backend_cache import BackendCache, entry_name
from thor_planner.utils.damping import DEFAULT_DAMPING, factor_shift

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


def measured_timer(device: torch.device, damping: float = DEFAULT_DAMPING, budget_s: float = 0.2) -> Timer:
    """A :data:`Timer` that times ``invert_stack(..., check=True)`` (the runtime's call, with the
    runtime's shift ``sqrt(damping)``) on a synthetic stack: median after one warm-up, repeats
    within ``budget_s``."""
    from thor_planner.timing.candidates import TimingConfig, measure

    config = TimingConfig(budget_s=budget_s, min_repeats=3, max_repeats=7, warmup=1)
    shift = factor_shift(damping)

    def timer(name: str, size: int, count: int) -> float:
        stack = timing_stack(size, count, device)
        return statistics.median(measure(lambda: invert_stack(stack, shift, name), device, config))

    return timer


def damped_accuracy_blocks(size: int, shift: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """What a backend receives in the accuracy check: synthetic float32 factor blocks damped by
    ``shift`` with the runtime's :func:`damp`, whose spectrum runs from ``shift`` to
    ``shift · ACCURACY_CONDITION`` (the accuracy module's blocks when ``shift`` is 0)."""
    blocks = accuracy_blocks(size, count=ACCURACY_BLOCKS if size <= 512 else 1, device=device)
    if shift == 0:
        return blocks
    eye = torch.eye(size, dtype=torch.float64, device=blocks.device)
    factor = ((blocks.double() * ACCURACY_CONDITION - eye) * shift).float()  # PSD, λ from 0 to shift·(κ−1)
    return damp(factor, shift)


def check_damped_accuracy(names: Sequence[str], size: int, device: torch.device | str = "cpu", *,
                          damping: float = DEFAULT_DAMPING, tolerance: float = ACCURACY_TOLERANCE
                          ) -> tuple[list[str], list[dict]]:
    """:func:`inversion.accuracy.check_accuracy` on blocks damped as the runtime damps them."""
    blocks = damped_accuracy_blocks(size, factor_shift(damping), device)
    return classify_backends(names, size, blocks, tolerance=tolerance)


@dataclass
class Selection:
    """The backend per block size and why: measured seconds, exclusions, pruned backends."""

    backends: dict[int, str] = field(default_factory=dict)
    seconds: dict[int, dict[str, float]] = field(default_factory=dict)
    sample_counts: dict[int, int] = field(default_factory=dict)
    excluded: list[dict] = field(default_factory=list)
    pruned: list[dict] = field(default_factory=list)
    from_cache: list[int] = field(default_factory=list)  # block sizes whose choice came from the cache
    measured: list[int] = field(default_factory=list)  # block sizes checked (and timed) in this run
    damping: float = DEFAULT_DAMPING

    def device_fields(self) -> dict:
        """What goes into the plan's device section (JSON: string keys)."""
        return {"backends": {str(s): n for s, n in sorted(self.backends.items())},
                "excluded": list(self.excluded), "pruned": list(self.pruned),
                "accuracy": {"tolerance": ACCURACY_TOLERANCE, "condition": ACCURACY_CONDITION,
                             "check": ACCURACY_REFERENCE, "damping": self.damping,
                             "shift": factor_shift(self.damping)},
                "backends_cached": bool(self.from_cache) and not self.measured,
                "backend_sizes_measured": len(self.measured)}


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
    accuracy = accuracy or (lambda ns, s: check_damped_accuracy(ns, s, device))
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
                     progress: Callable[[int], None] | None = None, *, cache: "BackendCache | None" = None,
                     refresh: bool = False, damping: float = DEFAULT_DAMPING) -> Selection:
    """The profiler's backend choice: every block size the candidates produce gets the fastest
    accurate backend (``auto``) or ``backend`` where it passes the accuracy check (the default
    backend where it does not). With ``cache``, sizes chosen before on this device are reused
    (``refresh``: measured again) and newly measured ones are stored."""
    from thor_planner.inversion.extra import device_backends

    names = device_backends(device.type) if backend == "auto" else [backend]
    counts = network_counts(dims, candidates)
    cap = WORK_CAP.get(device.type, WORK_CAP["cpu"])
    stored = cache.load() if cache is not None and not refresh else {}
    hits = {size: stored[entry_name(size, sample_count(size, n, cap))] for size, n in counts.items()
            if size > 1 and entry_name(size, sample_count(size, n, cap)) in stored}
    todo = {size: n for size, n in counts.items() if size not in hits}
    sel = choose_backends(todo, names, device, progress=progress, timer=measured_timer(device, damping),
                          accuracy=lambda ns, s: check_damped_accuracy(ns, s, device, damping=damping))
    for size, entry in sorted(hits.items()):
        sel.backends[size] = entry["backend"]
        if entry.get("seconds"):
            sel.seconds[size], sel.sample_counts[size] = dict(entry["seconds"]), int(entry.get("sample", 0))
        sel.excluded += [e for e in entry.get("excluded", []) if isinstance(e, dict)]
        sel.pruned += [e for e in entry.get("pruned", []) if isinstance(e, dict)]
        if progress is not None:
            progress(size)
    sel.backends = dict(sorted(sel.backends.items()))
    sel.from_cache = sorted(hits)
    sel.measured = sorted(s for s in todo if s > 1)
    sel.damping = damping
    if cache is not None and sel.measured:
        cache.save({entry_name(size, sample_count(size, counts[size], cap)): {
            "backend": sel.backends[size], "seconds": sel.seconds.get(size, {}),
            "sample": sample_count(size, counts[size], cap),
            "excluded": [e for e in sel.excluded if e.get("size") == size],
            "pruned": [e for e in sel.pruned if e.get("size") == size]} for size in sel.measured})
    return sel


def backend_cache_for(device: torch.device, device_fields: dict, backend: str,
                      damping: float = DEFAULT_DAMPING) -> "BackendCache":
    """The cache holding this device's choices for ``backend`` (``auto`` or one name)."""
    from thor_planner.inversion.extra import device_backends
    from thor_planner.timing.backend_cache import BackendCache, cache_key

    names = device_backends(device.type) if backend == "auto" else [backend]
    return BackendCache(cache_key(device_fields, names, factor_shift(damping), ACCURACY_REFERENCE,
                                  WORK_CAP.get(device.type, WORK_CAP["cpu"])))
