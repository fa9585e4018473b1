"""The gradient's own statistics, which Distributed Shampoo and SOAP keep (not K-FAC's A and G):
each parameter's gradient on a few batches, and the per-block statistics a peer optimizer keeps.

For a block of a parameter whose gradient on batch ``t`` is the ``k``-dimensional tensor ``G_t``
(a 2-D block is a matrix), the statistic of dimension ``d`` is

    F_d = (1/T) Σ_t unfold_d(G_t) unfold_d(G_t)ᵀ          (s_d × s_d)

(a matrix block: ``L = (1/T) Σ G Gᵀ`` over the block's own columns, ``R = (1/T) Σ GᵀG`` over its
own rows), and ``tr = (1/T) Σ_t ‖G_t‖²`` is the trace every ``F_d`` shares. The optimizers keep
running averages over steps; the profile averages over its batches (the gradients of the batch
labels' loss, as training computes them).

:func:`capture_gradients` leaves the model as it was (gradients cleared, buffers restored), as the
factor capture does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from thor_planner.capture.collector import fisher_loss
from thor_planner.partition import tensor_blocks
from thor_planner.targets.blocking import ParamBlocks


@dataclass
class GradientSamples:
    """Per parameter (in the model's order), its gradient on each captured batch: ``grads[name]``
    is ``(T, *shape)`` in float32. ``skipped`` lists the parameters left out and why."""

    grads: dict[str, torch.Tensor]
    skipped: list[dict] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return list(self.grads)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.grads[name].shape[1:])

    @property
    def batches(self) -> int:
        return next(iter(self.grads.values())).shape[0]


def _restore(model: nn.Module, was_training: bool, buffers: dict[str, torch.Tensor]) -> None:
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    with torch.no_grad():
        for k, v in model.named_buffers():
            v.copy_(buffers[k])


def capture_gradients(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    skip: str | None = None,
    device: torch.device | str = "cpu",
    progress=None,
) -> GradientSamples:
    """Every trainable parameter's gradient of the batch labels' loss, one per batch (training mode).

    ``skip`` (a regular expression) leaves out the parameters whose names it matches; parameters
    without a gradient (not reached by the forward pass) or without elements are listed in
    ``skipped``. ``progress`` is called once per batch.
    """
    pattern = re.compile(skip) if skip else None
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    kept = [(n, p) for n, p in params if p.numel() > 0 and not (pattern and pattern.search(n))]
    skipped = [{"name": n, "reason": f"matched --skip {skip!r}"} for n, _ in params if pattern and pattern.search(n)]
    was_training = model.training
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    model.train()
    grads: dict[str, list[torch.Tensor]] = {n: [] for n, _ in kept}
    try:
        for inputs, labels in batches:
            model.zero_grad(set_to_none=True)
            fisher_loss(model(inputs.to(device)), labels, "empirical", None).backward()
            for n, p in kept:
                if p.grad is not None:
                    grads[n].append(p.grad.detach().float().clone())
            if progress is not None:
                progress()
    finally:
        _restore(model, was_training, buffers)
    count = max(len(g) for g in grads.values()) if grads else 0
    missing = [n for n, g in grads.items() if len(g) < count or count == 0]
    skipped += [{"name": n, "reason": "no gradient (not reached by the forward pass)"} for n in missing]
    return GradientSamples({n: torch.stack(g) for n, g in grads.items() if n not in missing}, skipped)


@dataclass
class BlockStack:
    """Equally shaped blocks of one parameter: ``x`` is ``(N, T, *shape)``, block ``i``'s gradient
    on batch ``t`` at ``x[i, t]``."""

    x: torch.Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[2:])

    @property
    def count(self) -> int:
        return self.x.shape[0]

    def trace(self) -> torch.Tensor:
        """``(1/T) Σ_t ‖G_t‖²`` per block, float64."""
        return self.x.double().square().flatten(1).sum(1) / self.x.shape[1]

    def unfolding(self, d: int) -> torch.Tensor:
        """``(N, s_d, T·rest)``: dimension ``d`` of every block's samples against everything else,
        scaled by ``1/sqrt(T)`` so that ``U Uᵀ`` is ``F_d``."""
        x = self.x.movedim(2 + d, 1)
        return x.reshape(x.shape[0], x.shape[1], -1) / self.x.shape[1] ** 0.5

    def factor(self, d: int) -> torch.Tensor:
        """``F_d`` of every block, ``(N, s_d, s_d)``."""
        u = self.unfolding(d)
        return u @ u.mT

    def diagonal(self, d: int) -> torch.Tensor:
        """The diagonal of ``F_d`` of every block, ``(N, s_d)``, without forming ``F_d``."""
        return self.unfolding(d).square().sum(-1)


def block_stacks(grads: torch.Tensor, blocks: ParamBlocks) -> list[BlockStack]:
    """The blocks of a parameter whose gradient samples are ``grads`` (``(T, *shape)``) as the
    optimizer cuts it (``blocks``), one stack per region of equally shaped blocks."""
    x = grads.reshape(grads.shape[0], *blocks.merged)
    return [BlockStack(stack) for stack in tensor_blocks(x, blocks.parts, lead=1)]


def matrix_view(grads: torch.Tensor) -> BlockStack:
    """The whole parameter as one block viewed as a matrix (first dimension × the others; a vector
    stays a vector): the statistics an optimizer keeps when nothing limits it."""
    t = grads.shape[0]
    x = grads.reshape(t, -1) if grads.dim() <= 2 else grads.reshape(t, grads.shape[1], -1)
    return BlockStack(x.unsqueeze(0))
