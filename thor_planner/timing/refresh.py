"""Timing a peer optimizer's whole-network refresh at every candidate block size.

For each candidate ``b`` every parameter is cut as the optimizer cuts it
(:attr:`~thor_planner.targets.PlanTarget.blocks`), its blocks' statistics are built from the
captured gradients on the target device (not timed: the optimizers accumulate them every step), and
the refresh that runs every ``precondition_frequency`` steps is timed with :func:`.candidates.measure`
(warm-up, repeats within the budget, the busy monitor), one factor matrix at a time as the libraries
run it (:mod:`thor_planner.inversion.peer_refresh`). The first candidate's refresh runs once before
its measurement as well: the first ``eigh`` and QR of a process pay one-time library set-up (5.7 s
against 0.06 s for 24 blocks of 128 on the 2-core CPU here), which the warm-up rule would otherwise
record as that candidate's time. ``blocks`` counts the statistics of each size;
``gflop`` is ``Σ s³`` over them (the cubic work, as for THOR's inversions).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import torch

from thor_planner.capture.gradient_stats import GradientSamples, block_stacks
from thor_planner.inversion.backends import inversion_flops
from thor_planner.inversion.peer_refresh import shampoo_refresh, soap_basis, soap_refresh
from thor_planner.targets import PlanTarget
from thor_planner.timing.candidates import CandidateTiming, TimingConfig, measure


def _shampoo_work(samples: GradientSamples, target: PlanTarget, b: int, device) -> Callable[[], object]:
    """Every factor matrix of every block, with its root ``2k``."""
    factors = []
    for name in samples.names:
        blocks = target.blocks(samples.shape(name), b)
        for stack in block_stacks(samples.grads[name].to(device), blocks):
            root = 2 * len(stack.shape)
            for d, kept in enumerate(blocks.preconditioned):
                if kept:
                    factors += [(f, root) for f in stack.factor(d)]
    return lambda: shampoo_refresh(factors)


def _soap_work(samples: GradientSamples, target: PlanTarget, b: int, device) -> Callable[[], object]:
    """Per preconditioned parameter: its factors, their current bases (SOAP's first refresh, not
    timed) and a first moment of its merged shape."""
    states = []
    gen = torch.Generator().manual_seed(0)
    for name in samples.names:
        blocks = target.blocks(samples.shape(name), b)
        if not blocks.preconditions:
            continue
        (stack,) = block_stacks(samples.grads[name].to(device), blocks)
        factors = [stack.factor(d)[0] if kept else None for d, kept in enumerate(blocks.preconditioned)]
        bases = [None if f is None else soap_basis(f) for f in factors]
        moment = torch.randn(blocks.merged, generator=gen).to(device)
        states.append((factors, bases, moment))
    return lambda: soap_refresh(states)


#: per peer target, how to prepare its refresh at one block size (the prepared call is what is timed)
REFRESH_WORK: dict[str, Callable[[GradientSamples, PlanTarget, int, torch.device], Callable[[], object]]] = {
    "shampoo": _shampoo_work,
    "soap": _soap_work,
}


def refresh_counts(samples: GradientSamples, target: PlanTarget, b: int) -> dict[int, int]:
    """How many statistics of each size the optimizer refreshes at block size ``b``."""
    counts: dict[int, int] = {}
    for name in samples.names:
        for size, n in target.blocks(samples.shape(name), b).factor_counts().items():
            counts[size] = counts.get(size, 0) + n
    return dict(sorted(counts.items()))


def time_refresh_candidates(
    samples: GradientSamples,
    target: PlanTarget,
    candidates: Sequence[int],
    *,
    device: torch.device,
    config: TimingConfig = TimingConfig(),
    progress: Callable[[int], None] | None = None,
) -> list[CandidateTiming]:
    """Time the whole network's refresh at every candidate block size (module doc)."""
    if target.name not in REFRESH_WORK:
        raise ValueError(f"No refresh timing for plan target {target.name!r}: choose one of {', '.join(REFRESH_WORK)}")
    results = []
    for i, b in enumerate(candidates):
        work = REFRESH_WORK[target.name](samples, target, b, device)
        if i == 0:
            work()  # one-time library set-up (module doc)
        times = measure(work, device, config)
        counts = refresh_counts(samples, target, b)
        results.append(CandidateTiming(
            candidate=b, median_s=statistics.median(times), min_s=min(times), max_s=max(times),
            repeats=len(times), blocks=counts, gflop=inversion_flops(counts) / 1e9))
        if progress is not None:
            progress(b)
    return results
