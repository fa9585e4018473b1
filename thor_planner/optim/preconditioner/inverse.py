"""THOR's Kronecker-inverse family: ``V = G⁻¹ ∇ A⁻¹`` with the inverses of the damped diagonal
blocks, ``(F + sI)⁻¹`` for ``s = sqrt(damping)`` (as MindSpore's THOR damps every factor).

The blocks are inverted by :func:`~thor_planner.inversion.invert_groups` (one batched call per
block size, float32 with the accuracy check and a float64 retry at the same damping), with the
backends the plan timed. Kept inverses keep the damping they were computed with.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from thor_planner.inversion.backends import invert_groups
from thor_planner.optim.blocks import for_apply, left, right
from thor_planner.optim.preconditioner.base import Blocks, Family, LayerPreconditioner
from thor_planner.partition import BlockGroups, Partition


class InverseState(LayerPreconditioner):
    """A layer's block inverses, held as :func:`~thor_planner.optim.blocks.left` / ``right`` apply them."""

    def __init__(self, a_part: Partition, g_part: Partition) -> None:
        super().__init__(a_part, g_part)
        self.a_inv: Blocks | None = None
        self.g_inv: Blocks | None = None

    @property
    def ready(self) -> bool:
        return self.a_inv is not None

    def install(self, a_solved: Blocks, g_solved: Blocks, *, replay: bool = False) -> None:
        self.a_inv = for_apply(a_solved, self.a_part, other=self.g_part.dim)
        self.g_inv = for_apply(g_solved, self.g_part, other=self.a_part.dim)

    def direction(self, grad: torch.Tensor, *, group: Mapping, ok: torch.Tensor | None) -> torch.Tensor:
        return right(left(self.g_inv, grad, self.g_part), self.a_inv, self.a_part)


class InverseFamily(Family):
    """``family="inverse"``: THOR's block inverses (the default)."""

    name = "inverse"

    def solve(self, groups: BlockGroups, shift: float) -> BlockGroups:
        return invert_groups(groups, shift, self.backends)

    def layer(self, a_part: Partition, g_part: Partition) -> InverseState:
        return InverseState(a_part, g_part)
