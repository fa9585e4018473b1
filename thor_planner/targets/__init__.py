"""What a plan is made for: the registry of plan targets (THOR, Distributed Shampoo, heavyball's
SOAP) and how each peer optimizer cuts a parameter into preconditioned blocks at a block size.

A target is one :class:`PlanTarget`: THOR plans per-layer Kronecker factors of the Fisher
(A and G); the peers plan one block size and one refresh interval from the gradient's own
statistics (``L = Σ G Gᵀ`` and ``R = Σ GᵀG`` per block). Everything that lists targets (the CLI's
``--for``, the plan's validation, the peer loaders) reads :data:`TARGETS`.

Modules: ``blocking`` (``ParamBlocks``, ``shampoo_blocks``, ``soap_blocks``). Imports only
``thor_planner.partition``; must not import capture, infoloss, inversion, timing, planning, optim
or the profiler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from thor_planner.targets.blocking import ParamBlocks, shampoo_blocks, soap_blocks


@dataclass(frozen=True)
class PlanTarget:
    """One optimizer a plan can be made for.

    ``blocks(shape, b)`` is how it cuts a parameter at block size ``b`` (``None`` for THOR, which
    plans per-layer factors instead); ``block_kwarg`` and ``interval_kwarg`` are the constructor's
    keyword arguments the plan sets; ``refresh`` says what one refresh runs, in words.
    """

    name: str
    title: str
    constructor: str
    blocks: Callable[[tuple[int, ...], int], ParamBlocks] | None = None
    block_kwarg: str | None = None
    interval_kwarg: str | None = None
    refresh: str = ""
    module: str | None = None  # the package the constructor lives in (the peers' loaders check it imports)

    @property
    def peer(self) -> bool:
        """Whether plans for it are made from gradient statistics (block size and refresh interval)."""
        return self.blocks is not None


TARGETS: dict[str, PlanTarget] = {}


def register_target(target: PlanTarget) -> PlanTarget:
    """Add a plan target (one entry per optimizer)."""
    TARGETS[target.name] = target
    return target


def target(name: str) -> PlanTarget:
    """The target called ``name``; an unknown name is refused with the known ones."""
    try:
        return TARGETS[name]
    except KeyError:
        raise ValueError(f"Unknown plan target {name!r}: choose one of {', '.join(TARGETS)}") from None


register_target(PlanTarget(
    name="thor", title="THOR", constructor="thor_planner.THOR",
    refresh="block inverses of the layers' Kronecker factors A and G"))
register_target(PlanTarget(
    name="shampoo", title="Distributed Shampoo", constructor="distributed_shampoo.DistributedShampoo",
    module="distributed_shampoo", blocks=shampoo_blocks, block_kwarg="max_preconditioner_dim",
    interval_kwarg="precondition_frequency",
    refresh="per factor matrix of every block: eigh of F + εI, then Q·diag(λ^(−1/root))·Qᵀ "
            "(its default root inverse), one matrix at a time"))
register_target(PlanTarget(
    name="soap", title="SOAP (heavyball)", constructor="heavyball.SOAP", module="heavyball",
    blocks=soap_blocks, block_kwarg="max_precond_dim", interval_kwarg="precondition_frequency",
    refresh="per factor matrix: one power step from the previous eigenbasis and a QR, then the first "
            "moment rotated into the new basis, one parameter at a time"))

__all__ = ["TARGETS", "ParamBlocks", "PlanTarget", "register_target", "shampoo_blocks", "soap_blocks", "target"]
