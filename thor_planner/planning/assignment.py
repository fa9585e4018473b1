"""Which rank inverts which layer at a check point: greedy longest-processing-time (LPT).

Each layer's cost is the sum over its A and G blocks of ``s³`` (the work of a Cholesky-based
inverse of an ``s × s`` block, :func:`~thor_planner.inversion.backends.inversion_flops`), or any
costs the caller passes (seconds from a device profile's cost model, say). LPT sorts the layers by
cost, largest first, and gives each to the rank with the least work so far (ties: the lower rank,
then the earlier layer), so every rank computes the same assignment without talking. Its
makespan is at most ``(4/3 − 1/(3m))`` times the optimum on ``m`` ranks (Graham, 1969).

Under FSDP2 (:func:`sharded_loads`) a layer whose G blocks tile its shards solves the G blocks of
each band on the rank that holds the band; what LPT shares out is every layer's A and the G of the
layers that cannot be tiled (:func:`shared_factors`, the runtime's order).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from thor_planner.partition import Partition, crossed_rows, every_shard_holds_rows, partition, shard_rows


def factor_cost(part: Partition) -> float:
    """``Σ s³`` over a factor's blocks."""
    return float(sum(size**3 for size in part.sizes()))


def layer_cost(a_part: Partition, g_part: Partition) -> float:
    """``Σ s³`` over the layer's A and G blocks."""
    return factor_cost(a_part) + factor_cost(g_part)


def assign_lpt(costs: Sequence[float], ranks: int) -> list[int]:
    """The rank of each job (``costs[i]``) under greedy LPT on ``ranks`` workers."""
    if ranks < 1:
        raise ValueError(f"Invalid ranks={ranks}: must be >= 1")
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    heap = [(0.0, r) for r in range(ranks)]
    owner = [0] * len(costs)
    for i in order:
        load, r = heapq.heappop(heap)
        owner[i] = r
        heapq.heappush(heap, (load + costs[i], r))
    return owner


def makespan(costs: Sequence[float], owner: Sequence[int], ranks: int) -> float:
    """The largest per-rank sum of costs under an assignment."""
    loads = [0.0] * ranks
    for c, r in zip(costs, owner):
        loads[r] += c
    return max(loads)


def rank_share(layer_dims: Sequence[tuple[int, int]], split: int, ranks: int) -> float:
    """The busiest rank's share of a whole-network refresh when every factor is split at ``split``
    and the layers (``(a_dim, g_dim)`` each) are spread over ``ranks`` by :func:`assign_lpt`:
    ``makespan / total`` of ``Σ s³``, 1.0 on one rank. The planner multiplies a measured
    whole-network inversion time by it to predict one rank's refresh time (the grouping and launch
    overheads are assumed to shrink in the same proportion)."""
    costs = [layer_cost(partition(a, split), partition(g, split)) for a, g in layer_dims]
    total = sum(costs)
    if ranks <= 1 or total == 0:
        return 1.0
    return makespan(costs, assign_lpt(costs, ranks), ranks) / total


def shared_factors(banded: Sequence[bool]) -> list[tuple[int, int]]:
    """``(layer, 0 for A or 1 for G)`` of every factor the ranks share out at an FSDP check point, in
    the runtime's order: each layer's A, then its G unless the layer is held in bands (``banded``)."""
    return [(i, f) for i, held in enumerate(banded) for f in ((0,) if held else (0, 1))]


def tiles(g_part: Partition, ranks: int) -> bool:
    """Whether a layer's G blocks tile its FSDP shards on ``ranks`` (every rank holds rows and no
    block crosses a band boundary): the layers the runtime holds in bands."""
    return every_shard_holds_rows(g_part.dim, ranks) and not crossed_rows(g_part, shard_rows(g_part.dim, ranks))


def sharded_loads(parts: Sequence[tuple[Partition, Partition]], ranks: int) -> list[float]:
    """Per rank, ``Σ s³`` of the blocks it solves at an FSDP check point refreshing every layer
    (``(a_part, g_part)`` each, G whole): its own band of each tiled G plus its LPT share of
    :func:`shared_factors`."""
    banded = [tiles(g, ranks) for _, g in parts]
    jobs = shared_factors(banded)
    costs = [factor_cost(parts[i][f]) for i, f in jobs]
    loads = [0.0] * ranks
    for cost, r in zip(costs, assign_lpt(costs, ranks)):
        loads[r] += cost
    for (_, g), held in zip(parts, banded):
        if held:
            for r, (_, rows) in enumerate(shard_rows(g.dim, ranks)):
                loads[r] += factor_cost(partition(rows, g.split))
    return loads
