"""Check points: the trace rule on every live layer, then one batched solve for the layers it sends
to "update"; and rebuilding the solved blocks after a checkpoint load.

At a check point every live layer with factors gets the trace rule (:mod:`.trace`) on its traces;
the layers to update are solved by a :data:`Solver`: here, all together, one call of the family's
batched solve per block size (:func:`local_solver`); under ``torch.distributed``, spread over the
ranks (:mod:`.distributed`). Every factor's diagonal gets ``shift = sqrt(damping(t))`` (as
MindSpore's THOR does); kept preconditioners keep the shift they were solved with. The undamped
blocks each refresh used are kept (:class:`~.layer.RefreshSource`) so a checkpoint can rebuild the
solved blocks without storing them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from thor_planner.optim.blocks import group_packed, unpack
from thor_planner.optim.layer import Layer, RefreshSource
from thor_planner.optim.preconditioner import Family
from thor_planner.optim.preconditioner.base import Blocks
from thor_planner.optim.trace import STOP, UPDATE

SolvedBlocks = tuple[Blocks, Blocks]  # a layer's solved (A, G) stacks
#: ``solver(layers, factors, shift)``: the solved blocks of each layer, from its packed ``factors``
#: (A, G of each layer in turn).
Solver = Callable[[list[Layer], list[torch.Tensor], float], list[SolvedBlocks]]


def solve_here(family: Family, layers: list[Layer], factors: list[torch.Tensor], shift: float) -> list[SolvedBlocks]:
    """Solve ``layers`` in this process: one batched call per block size for all of them."""
    parts = [p for l in layers for p in (l.a_part, l.g_part)]
    solved = family.solve(group_packed(factors, parts), shift)
    return [(solved.blocks_of(2 * i), solved.blocks_of(2 * i + 1)) for i in range(len(layers))]


def local_solver(family: Family) -> Solver:
    return lambda layers, factors, shift: solve_here(family, layers, factors, shift)


def check_point(live: list[Layer], step: int, shift: float, solver: Solver) -> bool:
    """The trace rule for every ``live`` layer with factors, then the solve of those to update;
    returns whether any layer was frozen ("stop")."""
    ready = [l for l in live if l.factors.ready]
    if not ready:
        return False
    traces = torch.stack([l.factors.traces(l.a_part, l.g_part) for l in ready]).tolist()
    todo, froze = [], False
    for layer, (ta, tg) in zip(ready, traces):
        decision = layer.trace.check(ta, tg, *layer.dims, shift, layer.omega1, layer.omega2)
        todo += [layer] if decision == UPDATE else []
        froze |= decision == STOP
    if todo:
        factors = [f for l in todo for f in (l.factors.a, l.factors.g)]
        for layer, (a_solved, g_solved) in zip(todo, solver(todo, factors, shift)):
            layer.source = RefreshSource([b.clone() for b in unpack(layer.factors.a, layer.a_part)],
                                         [b.clone() for b in unpack(layer.factors.g, layer.g_part)], step, shift)
            layer.precond.install(a_solved, g_solved)
    return froze


def replay(layers: list[Layer], family: Family) -> None:
    """After loading: re-solve every layer's saved source blocks, grouped by the check point that
    solved them (so each batch is the one the uninterrupted run computed)."""
    by_step: dict[int, list[Layer]] = {}
    for layer in layers:
        if layer.source is not None:
            by_step.setdefault(layer.source.step, []).append(layer)
    for step in sorted(by_step):
        group = by_step[step]
        factors = [f for l in group for f in l.source.packed()]
        for layer, (a_solved, g_solved) in zip(group, solve_here(family, group, factors, group[0].source.shift)):
            layer.precond.install(a_solved, g_solved, replay=True)
