"""The preconditioner seam: what a family of Kronecker preconditioners provides to the runtime.

A family turns a layer's factor blocks (the diagonal blocks of A and G at the layer's splits) into
something that maps the layer's gradient matrix ``∇`` (``(g_dim, a_dim)``) to a direction. It has
two halves:

- a :class:`Family` (one per optimizer) solves the blocks of *many* layers at once: one batched
  call per block size (:meth:`Family.solve`), whichever ranks share the work; what it returns per
  block has the block's shape (an inverse, a matrix of eigenvectors), so the runtime can share it
  across ``torch.distributed`` ranks without knowing what it is;
- a :class:`LayerPreconditioner` (one per layer) installs its layer's solved blocks at a refresh
  (:meth:`~LayerPreconditioner.install`), gives the layer's direction every step
  (:meth:`~LayerPreconditioner.direction`) and saves and loads what it keeps besides the solved
  blocks (:meth:`~LayerPreconditioner.state_dict`, with the family's name and version).

Everything else is the runtime's, shared by every family: capturing and averaging the factors,
the trace rule deciding which layers refresh, the undamped blocks each refresh used (saved in
checkpoints, from which the solved blocks are recomputed), grafting, KL clipping, weight decay and
the first-order update.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar

import torch

from thor_planner.partition import BlockGroups, Partition

Blocks = list[torch.Tensor]  # a factor's stacked blocks, as partition.extract_blocks returns them


class LayerPreconditioner(ABC):
    """One layer's preconditioner state in a family."""

    def __init__(self, a_part: Partition, g_part: Partition) -> None:
        self.a_part, self.g_part = a_part, g_part

    @property
    @abstractmethod
    def ready(self) -> bool:
        """Whether a refresh has installed blocks (before that the layer gets the first-order step)."""

    @abstractmethod
    def install(self, a_solved: Blocks, g_solved: Blocks, *, replay: bool = False) -> None:
        """Take the layer's solved A and G blocks; ``replay``: rebuilt after a checkpoint load (the
        state saved with them already belongs to these blocks)."""

    @abstractmethod
    def direction(self, grad: torch.Tensor, *, group: Mapping, ok: torch.Tensor | None) -> torch.Tensor:
        """The preconditioned direction of ``grad`` (``(g_dim, a_dim)``), before grafting. ``group`` is
        the weight's param group (its ``betas``, ``eps``); ``ok`` (0-dim bool tensor or None) false
        means the step is skipped: any state the direction keeps must stay as it was."""

    def state_dict(self) -> dict:
        """What the family keeps besides the solved blocks (which are recomputed on load)."""
        return {}

    def load_state_dict(self, state: dict, device: torch.device, dtype: torch.dtype) -> None:
        """Load :meth:`state_dict`'s output (tensors moved to ``device``, floats to ``dtype``)."""


class Family(ABC):
    """A family of Kronecker preconditioners: its name, its batched solve and its layer states."""

    name: ClassVar[str]
    #: bumped when :meth:`LayerPreconditioner.state_dict` changes meaning
    version: ClassVar[int] = 1
    #: the first-order optimizers it can stand in for (``THOR(graft=...)``); the first is the default
    grafts: ClassVar[tuple[str, ...]] = ("sgd", "adamw", "none")
    #: its direction is already an Adam step (it keeps its own moments): the layer's gradient is not
    #: Adam-filtered first, not regrafted, and AdamW keeps no moments for its parameters
    own_moments: ClassVar[bool] = False
    #: one block's refresh in flops, as a multiple of ``s³`` (a Cholesky inverse ≈ s³)
    flops_per_cube: ClassVar[float] = 1.0
    #: whether its solve uses the plan's inversion backends
    uses_backends: ClassVar[bool] = True

    def __init__(self, backends) -> None:
        self.backends = backends

    @abstractmethod
    def solve(self, groups: BlockGroups, shift: float) -> BlockGroups:
        """Solve every block of ``groups`` (undamped factor blocks; ``shift`` is added to their
        diagonals), one batched call per block size; each result has its block's shape."""

    @abstractmethod
    def layer(self, a_part: Partition, g_part: Partition) -> LayerPreconditioner:
        """A new, not yet ready, state for a layer with these partitions."""
