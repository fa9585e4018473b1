"""Refreshing THOR's inverses: the trace rule at a check point, one batched inversion per block
size for the layers it sends to "update", and re-inverting saved blocks after a checkpoint load.

At a check point every live layer with factors gets the trace rule (:mod:`.trace`) on its traces;
the layers to update are inverted by an ``inverter``: here, all together, one
:func:`~thor_planner.inversion.invert_groups` call per block size (:func:`local_inverter`); under
``torch.distributed``, spread over the ranks (:mod:`.distributed`); with ``shift = sqrt(damping(t))`` added to every factor's diagonal (as MindSpore's
THOR does); kept inverses keep the damping they were computed with. The undamped blocks each
inversion used are kept so a checkpoint can rebuild the inverses without storing them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from thor_planner.inversion.backends import invert_groups
from thor_planner.optim.blocks import for_apply, group_packed, pack, packed_trace, unpack
from thor_planner.optim.layer import Layer
from thor_planner.optim.trace import STOP, UPDATE
from thor_planner.partition import BlockGroups


def invert(layers: list[Layer], factors: list[torch.Tensor], shift: float,
           backends) -> tuple[BlockGroups, BlockGroups]:
    """Invert ``factors`` (A, G of each layer in turn), one call per block size: (blocks, inverses)."""
    parts = [p for l in layers for p in (l.a_part, l.g_part)]
    groups = group_packed(factors, parts)
    return groups, invert_groups(groups, shift, backends)


InverseBlocks = tuple[list[torch.Tensor], list[torch.Tensor]]  # a layer's (A, G) inverse stacks
Inverter = Callable[[list[Layer], float], list[InverseBlocks]]


def local_inverter(backends) -> Inverter:
    """Invert every layer here: one batched call per block size for all of them."""
    def inverter(layers: list[Layer], shift: float) -> list[InverseBlocks]:
        _, inv = invert(layers, [f for l in layers for f in (l.a, l.g)], shift, backends)
        return [(inv.blocks_of(2 * i), inv.blocks_of(2 * i + 1)) for i in range(len(layers))]
    return inverter


def set_inverses(layer: Layer, a_inv: list[torch.Tensor], g_inv: list[torch.Tensor]) -> None:
    """A layer's inverses, held as :func:`.blocks.left` / ``right`` apply them."""
    layer.a_inv = for_apply(a_inv, layer.a_part, other=layer.g_part.dim)
    layer.g_inv = for_apply(g_inv, layer.g_part, other=layer.a_part.dim)


def check_point(live: list[Layer], step: int, shift: float, inverter: Inverter) -> bool:
    """The trace rule for every ``live`` layer with factors, then the inversion of those to update
    (by ``inverter``); returns whether any layer was frozen ("stop")."""
    ready = [l for l in live if l.a is not None]
    if not ready:
        return False
    traces = torch.stack([torch.stack([packed_trace(l.a, l.a_part), packed_trace(l.g, l.g_part)])
                          for l in ready]).tolist()
    todo, froze = [], False
    for layer, (ta, tg) in zip(ready, traces):
        decision = layer.trace.check(ta, tg, layer.a_part.dim, layer.g_part.dim, shift,
                                     layer.omega1, layer.omega2)
        todo += [layer] if decision == UPDATE else []
        froze |= decision == STOP
    if todo:
        for layer, (a_inv, g_inv) in zip(todo, inverter(todo, shift)):
            layer.a_blocks = [b.clone() for b in unpack(layer.a, layer.a_part)]
            layer.g_blocks = [b.clone() for b in unpack(layer.g, layer.g_part)]
            set_inverses(layer, a_inv, g_inv)
            layer.inv_step, layer.inv_shift = step, shift
    return froze


def replay_inverses(layers: list[Layer], backends) -> None:
    """After loading: recompute every layer's inverses from the saved blocks, grouped as inverted."""
    by_step: dict[int, list[Layer]] = {}
    for layer in layers:
        if layer.a_blocks is not None:
            by_step.setdefault(layer.inv_step, []).append(layer)
    for step in sorted(by_step):
        group = by_step[step]
        factors = [pack(blocks) for l in group for blocks in (l.a_blocks, l.g_blocks)]
        _, inv = invert(group, factors, group[0].inv_shift, backends)
        for i, layer in enumerate(group):
            set_inverses(layer, inv.blocks_of(2 * i), inv.blocks_of(2 * i + 1))
