"""Information loss of a peer optimizer's blocks: how much of a parameter's gradient statistic
Distributed Shampoo or SOAP keeps at a block size, measured like THOR's ``L(F, b)``.

**What is compared.** Shampoo-type methods approximate the second moment of a parameter's
gradient, ``H = E[vec(G) vec(G)ᵀ]``, by a Kronecker product of per-dimension statistics. For the
parameter viewed as a matrix (first dimension × the rest; a vector stays a vector) with
``L = E[G Gᵀ]`` and ``R = E[GᵀG]``, the scale-correct product is

    F = L ⊗ R / tr(L)          (tr L = tr R = E‖G‖²; exact for a rank-1 gradient and for i.i.d. entries)

and for a ``k``-dimensional block ``F = ⊗_d F_d / tr^(k−1)`` (a vector block: its full matrix
``E[g gᵀ]``). F is the reference: what the optimizer keeps when nothing limits it. At block size
``b`` the optimizer uses ``F̂``, the direct sum over its blocks of each block's own product (every
block's ``F_d`` computed from that block's gradient only, so Shampoo's ``L`` of a block sees only
the block's columns). The loss is THOR's definition with that ``F̂``:

    L(b) = 1 − λmax(F̂) / λmax(F),    λmax(F̂) = max over blocks of Π_d λmax(F_d) / tr^(k−1)

- **Shampoo**: what blocking drops is every cross-block term of ``H``: the rows of different blocks
  (off-diagonal blocks of ``L``) and the columns of different blocks (each block's ``L`` is a sum
  over its own columns). For i.i.d. gradient entries nothing is lost (``F̂ = F``); for a rank-1
  gradient spread evenly over ``k × k`` blocks the loss is ``1 − 1/k²``, the loss of keeping the
  block-diagonal part of ``H`` itself.
- **SOAP** (heavyball): one block, but a side larger than ``max_precond_dim`` keeps no statistic:
  its step there is Adam's in the standard basis, whose second moment sees only the diagonal of
  that side's ``F_d``, so ``λmax(F_d)`` becomes ``max diag(F_d)`` (THOR's loss of ``F_d`` at split 1).
- A merge the optimizer makes can keep *more* than the matrix view's product (Shampoo's full
  matrix of a small parameter); the loss is then 0, as it is wherever nothing is blocked.

λmax of each statistic: batched float32 ``eigvalsh`` / Lanczos (:func:`thor_planner.infoloss.lambda_max`)
on ``U Uᵀ`` or, when the unfolding ``U`` has fewer columns than rows (few batches, a vector block),
on the smaller ``UᵀU``, which has the same non-zero eigenvalues.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
import torch

from thor_planner.capture.gradient_stats import BlockStack, GradientSamples, block_stacks, matrix_view
from thor_planner.infoloss import lambda_max
from thor_planner.targets import PlanTarget

LOSS_COLUMNS = ["parameter", "shape"]


def statistic_lambda_max(stack: BlockStack, d: int) -> torch.Tensor:
    """``λmax(F_d)`` of every block (float64), through the smaller of ``U Uᵀ`` and ``UᵀU``."""
    u = stack.unfolding(d).float()
    gram = u.mT @ u if u.shape[-1] < u.shape[-2] else u @ u.mT
    return lambda_max(gram)


def block_lambda(stack: BlockStack, preconditioned: Sequence[bool]) -> torch.Tensor:
    """``λmax`` of every block's Kronecker product ``⊗_d F_d / tr^(k−1)`` (float64, 0 for a zero
    block); a side without a statistic contributes ``max diag(F_d)``."""
    trace = stack.trace()
    value = torch.ones_like(trace)
    for d, kept in enumerate(preconditioned):
        side = statistic_lambda_max(stack, d) if kept else stack.diagonal(d).double().amax(-1)
        value = value * side
    k = len(preconditioned)
    return torch.where(trace > 0, value / trace.clamp_min(1e-300) ** (k - 1), torch.zeros_like(value))


def reference_lambda(grads: torch.Tensor) -> float:
    """``λmax`` of the unblocked matrix view's product (the loss's reference)."""
    view = matrix_view(grads)
    return float(block_lambda(view, [True] * len(view.shape))[0])


def parameter_losses(grads: torch.Tensor, target: PlanTarget, candidates: Sequence[int]) -> list[float]:
    """The loss of one parameter (gradient samples ``(T, *shape)``) at every candidate block size."""
    full = reference_lambda(grads)
    shape = tuple(grads.shape[1:])
    out = []
    for b in candidates:
        blocks = target.blocks(shape, b)
        kept = max(float(block_lambda(s, blocks.preconditioned).max()) for s in block_stacks(grads, blocks))
        out.append(min(1.0, max(0.0, 1.0 - kept / full)) if full > 0 else 0.0)
    return out


def gradient_loss_table(samples: GradientSamples, target: PlanTarget, candidates: Sequence[int],
                        progress: Callable[[], None] | None = None) -> pd.DataFrame:
    """Losses of every parameter at every candidate: columns ``parameter``, ``shape`` (``128x384``)
    and one per candidate (``str(b)``), in the model's parameter order."""
    rows = []
    for name in samples.names:
        grads = samples.grads[name].cpu()
        losses = parameter_losses(grads, target, candidates)
        rows.append({"parameter": name, "shape": "x".join(map(str, samples.shape(name))),
                     **{str(b): v for b, v in zip(candidates, losses)}})
        if progress is not None:
            progress()
    return pd.DataFrame(rows, columns=[*LOSS_COLUMNS, *map(str, candidates)])
