"""The accuracy check every backend passes before it is timed, and the per-size choice of the
fastest accurate backend (``--backend auto``).

**Accuracy check.** At block size ``s`` a backend inverts :data:`ACCURACY_BLOCKS` synthetic
symmetric positive definite blocks in float32 (inputs ``A = Q diag(λ) Qᵀ``, ``Q`` random orthogonal,
``λ`` log-spaced from 1 down to ``1/κ`` with ``κ =`` :data:`ACCURACY_CONDITION` ``= 1e3``, rounded to
float32). Its error is ``max over blocks ‖X − A⁻¹‖_F / ‖A⁻¹‖_F`` against the float64 inverse of the
same float32 input; above :data:`ACCURACY_TOLERANCE` (1e-4), non-finite, or raising, the backend is
excluded at that size and ``{"backend", "size", "error", "reason"}`` is recorded (``error`` is
``null`` when not finite). Why synthetic blocks with κ = 1e3: damped ResNet-50 factor blocks
(damping 0.03, factors captured at initialisation) reach κ ≈ 8e3 at block size 2048, yet all four
torch backends invert them with errors ≤ 6e-5 because their eigenvalues cluster at the damping; a
log-spaced spectrum is harsher, and at κ = 1e3 it gives float32 Cholesky errors of ≈ 1e-5 (a 10×
margin) while a Newton–Schulz iterate that has not converged, or bf16 products (error ≈ 3e-3),
fail clearly. At κ = 1e4 float32 Cholesky itself reaches 1.1e-4 at size 2048 (the κ·ε bound), so
every backend would be excluded. The same check runs
for the device profile, where no model factors exist. Blocks of size 1 are inverted by a reciprocal
whatever the backend (see :func:`inversion.invert_stack`), so they are neither checked nor timed.

**Choice.** For each block size, ascending, the accurate backends are timed by a :data:`Timer`
(``timer(backend, size, count) → seconds``; the default times :func:`inversion.invert_stack`, the
runtime's call, on a synthetic stack; tests inject fake timings here) on a sample of
``min(count, work_cap / s³)`` blocks, and the fastest wins. To bound the wall time, a backend whose
time at its last size was more than ``prune_ratio`` × the best and whose time extrapolated to this
size (∝ s³ · blocks) exceeds ``prune_seconds`` is no longer tried ("pruned", recorded).
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from thor_planner.inversion.backends import DEFAULT_BACKEND, get_backend, invert_stack
from thor_planner.partition import block_counts

ACCURACY_TOLERANCE = 1e-4
ACCURACY_CONDITION = 1e3
ACCURACY_BLOCKS = 2
ACCURACY_REFERENCE = (f"max ‖X − A⁻¹‖_F/‖A⁻¹‖_F ≤ {ACCURACY_TOLERANCE:g} vs float64, on float32 synthetic SPD "
                      f"blocks with log-spaced spectrum, condition number {ACCURACY_CONDITION:g}")
WORK_CAP = {"cpu": 2.0**31, "cuda": 2.0**38}

Timer = Callable[[str, int, int], float]


@functools.lru_cache(maxsize=4)
def _spd_blocks64(size: int, count: int, condition: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + size)
    q, _ = torch.linalg.qr(torch.randn(count, size, size, generator=gen, dtype=torch.float64))
    lam = torch.logspace(0.0, -math.log10(condition), size, dtype=torch.float64)
    return (q * lam) @ q.transpose(-1, -2)


def accuracy_blocks(size: int, *, count: int = ACCURACY_BLOCKS, condition: float = ACCURACY_CONDITION,
                    seed: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
    """``count`` float32 SPD blocks of ``size`` with condition number ``condition`` (see module doc)."""
    return _spd_blocks64(size, count, float(condition), seed).to(device=device, dtype=torch.float32)


def backend_error(name: str, blocks: torch.Tensor) -> float:
    """Largest relative error ``‖X − A⁻¹‖_F/‖A⁻¹‖_F`` of backend ``name`` on float32 ``blocks``
    against the float64 inverse of the same values (``inf`` when not finite)."""
    inv, _ = get_backend(name)(blocks)
    ref = torch.linalg.inv(blocks.double())
    err = torch.linalg.matrix_norm(inv.double() - ref) / torch.linalg.matrix_norm(ref)
    worst = float(err.max())
    return worst if math.isfinite(worst) else math.inf


def check_accuracy(names: Sequence[str], size: int, device: torch.device | str = "cpu", *,
                   tolerance: float = ACCURACY_TOLERANCE) -> tuple[list[str], list[dict]]:
    """The backends among ``names`` accurate at ``size``, and an exclusion record for each other."""
    blocks = accuracy_blocks(size, count=ACCURACY_BLOCKS if size <= 512 else 1, device=device)
    accurate, excluded = [], []
    for name in names:
        try:
            err = backend_error(name, blocks)
        except Exception as exc:  # noqa: BLE001 - a backend that raises is excluded, with the reason
            excluded.append({"backend": name, "size": size, "error": None,
                             "reason": f"raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"})
            continue
        if err <= tolerance:
            accurate.append(name)
        else:
            excluded.append({"backend": name, "size": size, "error": err if math.isfinite(err) else None,
                             "reason": f"relative error {err:.2e} > {tolerance:g}" if math.isfinite(err)
                             else "non-finite result"})
    return accurate, excluded


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

