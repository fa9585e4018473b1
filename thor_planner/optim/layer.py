"""A preconditioned layer's state in the THOR runtime, and the plan's inversion backends."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from thor_planner.inversion.backends import BACKENDS, DEFAULT_BACKEND
from thor_planner.optim.trace import LayerTrace
from thor_planner.partition import Partition

Blocks = list[torch.Tensor]


@dataclass
class Layer:
    """A preconditioned layer: its parameters, partitions, thresholds and factor state."""

    name: str
    weight: nn.Parameter
    bias: nn.Parameter | None
    a_part: Partition
    g_part: Partition
    omega1: float
    omega2: float
    a: torch.Tensor | None = None  # running averages of the factors' diagonal blocks, packed
    g: torch.Tensor | None = None
    a_blocks: Blocks | None = None  # undamped blocks the current inverses were computed from
    g_blocks: Blocks | None = None
    a_inv: Blocks | None = None
    g_inv: Blocks | None = None
    inv_step: int | None = None
    inv_shift: float | None = None  # the value added to the diagonals at that inversion
    trace: LayerTrace = field(default_factory=LayerTrace)


def _known_backend(name: str) -> str:
    if name in BACKENDS:
        return name
    warnings.warn(f"Inversion backend {name!r} from the plan is not available here; using {DEFAULT_BACKEND}",
                  stacklevel=3)
    return DEFAULT_BACKEND


def plan_backends(device: dict) -> str | dict[int, str]:
    """The plan's inversion backend(s): ``device.backends`` ({size: name}) or ``device.backend``."""
    per_size = device.get("backends")
    if isinstance(per_size, Mapping) and per_size:
        return {int(size): _known_backend(name) for size, name in per_size.items()}
    name = device.get("backend")
    return _known_backend(name) if isinstance(name, str) else DEFAULT_BACKEND
