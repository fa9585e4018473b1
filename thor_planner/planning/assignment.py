"""Which rank inverts which layer at a check point: greedy longest-processing-time (LPT).

Each layer's cost is the sum over its A and G blocks of ``s³`` (the work of a Cholesky-based
inverse of an ``s × s`` block, :func:`~thor_planner.inversion.backends.inversion_flops`), or any
costs the caller passes (seconds from a device profile's cost model, say). LPT sorts the layers by
cost, largest first, and gives each to the rank with the least work so far (ties: the lower rank,
then the earlier layer), so every rank computes the same assignment without talking. Its
makespan is at most ``(4/3 − 1/(3m))`` times the optimum on ``m`` ranks (Graham, 1969).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from thor_planner.partition import Partition, partition


def layer_cost(a_part: Partition, g_part: Partition) -> float:
    """``Σ s³`` over the layer's A and G blocks."""
    return float(sum(size**3 for part in (a_part, g_part) for size in part.sizes()))


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
