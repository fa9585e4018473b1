"""A preconditioned layer in the THOR runtime: what it is (module, layer type, partitions, trace
thresholds) and the state each phase of a step owns (running factors, the trace rule, the blocks
of the last refresh, the family's preconditioner), plus the plan's inversion backends.

Who writes what: the factor phase folds into :attr:`Layer.factors`; a check point runs
:attr:`Layer.trace` and, on "update", records :attr:`Layer.source` and installs the solved blocks
into :attr:`Layer.precond` (:mod:`.refresh`); checkpoints save and load all of it
(:meth:`Layer.state_dict`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from thor_planner.capture.layers import LayerType
from thor_planner.inversion.backends import BACKENDS, DEFAULT_BACKEND
from thor_planner.optim.blocks import pack, unpack
from thor_planner.optim.factors import RunningFactors
from thor_planner.optim.preconditioner import LayerPreconditioner
from thor_planner.optim.preconditioner.base import Blocks
from thor_planner.optim.trace import LayerTrace
from thor_planner.partition import Partition


@dataclass
class RefreshSource:
    """The undamped factor blocks a layer's preconditioner was last solved from, with the step and
    the diagonal shift of that refresh: a checkpoint saves these, never the solved blocks."""

    a_blocks: Blocks
    g_blocks: Blocks
    step: int
    shift: float

    def packed(self) -> list[torch.Tensor]:
        return [pack(self.a_blocks), pack(self.g_blocks)]


@dataclass(eq=False)
class Layer:
    """A preconditioned layer and its runtime state."""

    name: str
    module: nn.Module
    kind: LayerType
    a_part: Partition
    g_part: Partition
    omega1: float
    omega2: float
    precond: LayerPreconditioner
    factors: RunningFactors = field(default_factory=RunningFactors)
    trace: LayerTrace = field(default_factory=LayerTrace)
    source: RefreshSource | None = None

    #: whether this rank holds only a band of the layer's rows, other ranks the rest (FSDP:
    #: :class:`~thor_planner.optim.sharded.BandLayer`); statistics of its direction are then sums
    #: over the ranks (:func:`~thor_planner.optim.direction.directions`)
    banded: ClassVar[bool] = False

    @property
    def weight(self) -> nn.Parameter:
        return self.module.weight

    @property
    def dims(self) -> tuple[int, int]:
        """The whole layer's ``(a_dim, g_dim)`` (the trace rule's, whatever part of it a rank holds)."""
        return self.a_part.dim, self.g_part.dim

    @property
    def capture_parts(self) -> tuple[Partition, Partition]:
        """The partitions of A and G as a rank captures them (the whole factors)."""
        return self.a_part, self.g_part

    @property
    def bias(self) -> nn.Parameter | None:
        return self.module.bias

    def gradient_matrix(self, dtype: torch.dtype, of: Mapping | None = None) -> torch.Tensor | None:
        """The layer's gradient as ``(g_dim, a_dim)`` in ``dtype`` (the bias as the last column), by its
        layer type's mapping; ``of`` maps a parameter to the tensor to use instead of its ``.grad``.
        ``None`` when the weight has no gradient."""
        w, b = self.weight, self.bias
        grad = w.grad if of is None else of.get(w)
        if grad is None:
            return None
        matrix = self.kind.matrix(self.module, grad)
        if b is not None:
            bias_grad = b.grad if of is None else of.get(b)
            bias_grad = bias_grad if bias_grad is not None else torch.zeros_like(b)
            matrix = torch.cat([matrix, bias_grad.reshape(-1, 1)], dim=1)
        return matrix.to(dtype)

    def split_matrix(self, v: torch.Tensor) -> dict[torch.Tensor, torch.Tensor]:
        """A ``(g_dim, a_dim)`` direction as ``{weight: …, bias: …}`` in the parameters' shapes and dtypes."""
        w, b = self.weight, self.bias
        cols = v.shape[1] - (b is not None)
        out = {w: self.kind.unmatrix(self.module, v[:, :cols]).to(w.dtype)}
        if b is not None:
            out[b] = v[:, cols].to(b.dtype)
        return out

    # -- checkpoints -------------------------------------------------------------------------------

    def state_dict(self, family: str, version: int) -> dict:
        source = self.source
        a_src, g_src = source.packed() if source is not None else (None, None)
        return {
            "a_split": self.a_part.split, "g_split": self.g_part.split,
            "a_dim": self.a_part.dim, "g_dim": self.g_part.dim, "trace": self.trace.to_dict(),
            "factors": {"a": self.factors.a, "g": self.factors.g},
            "source": None if source is None else {"a": a_src, "g": g_src, "step": source.step,
                                                   "shift": source.shift},
            "preconditioner": {"family": family, "version": version, **self.precond.state_dict()},
        }

    def load_state_dict(self, state: dict, dtype: torch.dtype) -> None:
        """Load :meth:`state_dict`'s output; the solved blocks are rebuilt later from the source."""
        device = self.weight.device

        def moved(t):
            return None if t is None else t.to(device=device, dtype=dtype, copy=True)

        self.factors = RunningFactors(moved(state["factors"]["a"]), moved(state["factors"]["g"]))
        self.trace = LayerTrace.from_dict(state["trace"])
        s = state["source"]
        self.source = None if s is None else RefreshSource(
            unpack(moved(s["a"]), self.a_part), unpack(moved(s["g"]), self.g_part), s["step"], s["shift"])
        extra = {k: v for k, v in state["preconditioner"].items() if k not in ("family", "version")}
        self.precond.load_state_dict(extra, device, dtype)


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
