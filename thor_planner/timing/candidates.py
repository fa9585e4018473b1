"""Timing of the whole network's block refresh (inversion, or a preconditioner family's own solve)
per candidate split, and of one training step.

Each candidate is timed exactly as the THOR runtime refreshes its inverses: every factor is
partitioned at the candidate (capped at its dimension), blocks are grouped by size
(:func:`partition.group_by_size`) and inverted by :func:`inversion.invert_groups`, one batched
call per size. One warm-up run, then repeats until the per-candidate time budget is spent
(at least ``min_repeats``, at most ``max_repeats``), or until three runs agree within 5%
(``TimingConfig.settle``: more runs would not move the median or the spread the rules read); the
median and the spread are recorded.
A candidate whose warm-up run alone takes longer than the whole budget is recorded from that one
run (its ``repeats`` is 1), which keeps the largest splits bounded. On CPU a warm-up run that takes
at least a quarter of the budget counts as the first repeat (its one-time costs, allocations, are
negligible next to it); on CUDA the warm-up is always discarded (handles, workspaces, autotuning).

Blocks are damped as the runtime damps them: ``factor_shift(damping) = sqrt(damping)`` on the
diagonal (:mod:`thor_planner.utils.damping`), ``damping`` being THOR's initial 0.03 by default.
Every measurement goes through the active :class:`timing.busy.BusyMonitor` (if any), which repeats
it while other processes were busy.

On CUDA each run is timed with CUDA events recorded on the current stream around it, after a
device synchronisation (so earlier queued work is not counted); on CPU with ``perf_counter``.
The refresh is timed with ``check=True``, exactly as the runtime calls it: all sizes are launched,
then one host synchronisation reads every success mask (the NaN safety the runtime keeps); that
single sync is part of what training pays, so it is part of the measurement. CUDA-graph capture of
the refresh is a non-goal for now: the checked refresh syncs and branches on the masks, which a
graph cannot capture, and it was not measured on a GPU.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from thor_planner.inversion.backends import DEFAULT_BACKEND, invert_groups, inversion_flops
from thor_planner.partition import BlockGroups, block_counts, group_by_size, partition
from thor_planner.timing import busy
from thor_planner.utils.damping import DEFAULT_DAMPING, factor_shift


LONG_RUN_FRACTION = 0.25  # of the budget: a CPU warm-up run this long counts as a measurement
SETTLED_REPEATS = 3  # runs that must agree (TimingConfig.settle) before repeating stops early


@dataclass(frozen=True)
class TimingConfig:
    """How long to time each candidate."""

    budget_s: float = 1.0
    min_repeats: int = 1
    max_repeats: int = 7
    warmup: int = 1
    damping: float = DEFAULT_DAMPING  # blocks get factor_shift(damping) = sqrt(damping) on the diagonal
    #: stop repeating once :data:`SETTLED_REPEATS` runs agree within this relative spread ((max − min) /
    #: median); ``None``: repeat until the budget is spent
    settle: float | None = 0.05

    def __post_init__(self) -> None:
        if not self.budget_s > 0:
            raise ValueError(f"Invalid budget_s={self.budget_s}: must be > 0")
        if not 1 <= self.min_repeats <= self.max_repeats:
            raise ValueError(f"Invalid min_repeats={self.min_repeats}: must be in [1, max_repeats]")
        if self.warmup < 0:
            raise ValueError(f"Invalid warmup={self.warmup}: must be >= 0")
        if not self.damping >= 0:
            raise ValueError(f"Invalid damping={self.damping}: must be >= 0")
        if self.settle is not None and not self.settle >= 0:
            raise ValueError(f"Invalid settle={self.settle}: must be >= 0 or None")


@dataclass(frozen=True)
class CandidateTiming:
    candidate: int
    median_s: float
    min_s: float
    max_s: float
    repeats: int
    blocks: dict[int, int]
    gflop: float
    predicted: bool = False  # True: from a device profile's cost model, not measured here

    def row(self) -> dict:
        blocks = " ".join(f"{s}x{c}" for s, c in sorted(self.blocks.items(), reverse=True))
        return {"candidate": self.candidate, "median_s": self.median_s, "min_s": self.min_s,
                "max_s": self.max_s, "repeats": self.repeats, "blocks": blocks,
                "gflop": self.gflop, "predicted": self.predicted}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        return _timed_cuda_events(fn, device)
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _timed_cuda_events(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds between CUDA events recorded on the current stream before and after ``fn``."""
    _sync(device)
    stream = torch.cuda.current_stream(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record(stream)
    fn()
    end.record(stream)
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def measure(fn: Callable[[], object], device: torch.device, config: TimingConfig) -> list[float]:
    """Seconds per call of ``fn`` after warm-up, repeated within the budget (and repeated as a
    whole while the active busy monitor sees other processes at work)."""
    monitor = busy.current()
    if monitor is None:
        return _measure_once(fn, device, config)
    return monitor.run(lambda: _measure_once(fn, device, config))


def _measure_once(fn: Callable[[], object], device: torch.device, config: TimingConfig) -> list[float]:
    times: list[float] = []
    for _ in range(config.warmup):
        elapsed = _timed(fn, device)
        if elapsed > config.budget_s and config.min_repeats == 1:
            return [elapsed]
        if device.type == "cpu" and elapsed >= LONG_RUN_FRACTION * config.budget_s:
            times.append(elapsed)  # a long CPU run has no one-time cost worth discarding: it counts
            break
    while len(times) < config.max_repeats and (len(times) < config.min_repeats or sum(times) < config.budget_s):
        if _settled(times, config):
            break
        times.append(_timed(fn, device))
    return times


def _settled(times: list[float], config: TimingConfig) -> bool:
    """Enough runs agree that more would not move the median or the spread the rules read."""
    if config.settle is None or len(times) < max(SETTLED_REPEATS, config.min_repeats):
        return False
    middle = statistics.median(times)
    return middle > 0 and (max(times) - min(times)) / middle <= config.settle


#: ``solve(groups, shift)``: a preconditioner family's batched refresh of grouped blocks (the
#: profiler passes the family's own; the default inverts them as the inverse family does).
Solve = Callable[[BlockGroups, float], object]


def time_candidates(
    factors: Sequence[torch.Tensor],
    candidates: Sequence[int],
    *,
    backends: str | Mapping[int, str] = DEFAULT_BACKEND,
    config: TimingConfig = TimingConfig(),
    progress: Callable[[int], None] | None = None,
    solve: Solve | None = None,
    flops_per_cube: float = 1.0,
) -> list[CandidateTiming]:
    """Time the refresh of all ``factors``' blocks at every candidate split: inverted with
    ``backends``, or by ``solve`` (a preconditioner family's refresh) when given; ``flops_per_cube``
    is the family's work per block as a multiple of ``s³`` (for the GFLOP column)."""
    if not factors:
        raise ValueError("No factors to time")
    device = factors[0].device
    dims = [f.shape[0] for f in factors]
    results = []
    shift = factor_shift(config.damping)
    solve = solve or (lambda groups, shift: invert_groups(groups, shift, backends))
    for b in candidates:
        parts = [partition(d, b) for d in dims]

        def refresh(parts=parts):
            return solve(group_by_size(factors, parts), shift)

        times = measure(refresh, device, config)
        counts = block_counts(dims, [b] * len(dims))
        results.append(CandidateTiming(
            candidate=b, median_s=statistics.median(times), min_s=min(times), max_s=max(times),
            repeats=len(times), blocks=counts, gflop=flops_per_cube * inversion_flops(counts) / 1e9,
        ))
        if progress is not None:
            progress(b)
    return results


def synthetic_factors(dims: Sequence[int], *, device="cpu", dtype=torch.float32, seed: int = 0) -> list[torch.Tensor]:
    """Well-conditioned random SPD factors of the given dimensions (for device profiling)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for d in dims:
        x = torch.randn(d, d, generator=gen, dtype=torch.float64) / d**0.5
        out.append((x @ x.T + 0.1 * torch.eye(d, dtype=torch.float64)).to(device=device, dtype=dtype))
    return out


def time_training_step(
    model: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    *,
    device: torch.device,
    config: TimingConfig | None = None,
) -> list[float]:
    """Seconds per first-order training step (forward, backward, SGD step) on ``batch``.

    Runs on a deep copy so the user's model is untouched. By default at least 2 steps within 0.5 s
    (stopping early once 3 agree within 5%), after one warm-up step on CUDA (lazy initialisation,
    cuDNN autotuning) and none on CPU, where the capture has just run the same forward and backward.
    The rules read the step only as the budget's scale, so its median of a few is enough.
    """
    if config is None:
        warm = 1 if torch.device(device).type == "cuda" else 0
        config = TimingConfig(budget_s=0.5, min_repeats=2, max_repeats=10, warmup=warm)
    import copy

    work = copy.deepcopy(model).to(device).train()
    params = [p for p in work.parameters() if p.requires_grad]
    momenta = [torch.zeros_like(p) for p in params]
    inputs, labels = batch[0].to(device), batch[1].to(device)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        # SGD with momentum written out with the foreach kernels torch.optim.SGD uses: constructing
        # torch.optim.SGD imports torch's compiler stack (seconds), which the profile does not need.
        for p in params:
            p.grad = None
        out = work(inputs)
        loss_fn(out.reshape(-1, out.shape[-1]), labels.reshape(-1)).backward()
        with torch.no_grad():
            live = [(p, m) for p, m in zip(params, momenta) if p.grad is not None]
            if live:
                ps, ms = [p for p, _ in live], [m for _, m in live]
                torch._foreach_mul_(ms, 0.9)
                torch._foreach_add_(ms, [p.grad for p in ps])
                torch._foreach_add_(ps, ms, alpha=-1e-6)

    return measure(step, torch.device(device), config)
