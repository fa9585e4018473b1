"""Information loss of keeping only the diagonal blocks of a factor.

For a factor F and split b, with F̂ its block-diagonal part on :func:`partition.partition`:

    L(F, b) = 1 − sqrt(λmax(F̂ F̂ᵀ) / λmax(F Fᵀ)) = 1 − λmax(F̂) / λmax(F)   (F symmetric PSD)

and λmax(F̂) is the largest λmax of its blocks. Fast path: blocks up to ``DIRECT_MAX`` go through
batched float32 ``eigvalsh``; larger matrices through batched Lanczos with full
re-orthogonalisation (float32 matrix products, float64 tridiagonal solve), whose residual bound is
checked; a matrix that has not converged is redone with float64 ``eigvalsh``.

Lanczos start. The whole factor's Lanczos starts from a random vector. Each block's Lanczos is
warm-started from the restriction of the whole factor's top eigenvector to that block, *mixed in
equal parts with a random unit vector*. The residual bound only says that the Ritz value is close
to some eigenvalue, not to the largest: started from the warm vector alone (or with a small random
part), Lanczos stops at once on a block whose restriction happens to be a lower eigenvector, e.g.
two 512-blocks where the factor's top vector restricted to block 2 is block 2's *second*
eigenvector (loss 0.281 instead of 0.238, the case in ``tests/test_infoloss.py``). With the equal
mix the start's component along the block's true top eigenvector is that of a random start (up to
a factor ≈ 1/√2), so a warm start cannot make Lanczos lock onto a lower eigenvector any more than a
random start can, while a good warm vector still carries half the start. On ResNet-50 factors
(default profile) the mix changed the total Lanczos work by about 1% and the losses by < 1e-6.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pandas as pd
import torch

from thor_planner.partition import extract_blocks, partition

DIRECT_MAX = 256
LANCZOS_STEPS = 64
LANCZOS_CHECK_EVERY = 4
# Ritz residual / Ritz value. It bounds each λmax's relative error, so a loss 1 − λ̂/λ is off by at
# most about 2 × LANCZOS_RTOL (the goal is 1e-3 absolute).
LANCZOS_RTOL = 2e-4


def _ritz(alpha: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Largest Ritz value, its residual bound relative to it, and its eigenvector in the Krylov basis."""
    tri = torch.diag_embed(alpha) + torch.diag_embed(beta[:, :-1], 1) + torch.diag_embed(beta[:, :-1], -1)
    theta, vecs = torch.linalg.eigh(tri)
    lam = theta[:, -1]
    residual = (beta[:, -1] * vecs[:, -1, -1]).abs() / lam.abs().clamp_min(1e-30)
    return lam, residual, vecs[:, :, -1]


def _lanczos_lambda_max(
    stack: torch.Tensor, steps: int, start: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Largest eigenvalue of each symmetric matrix in ``stack``, a relative residual bound and the
    Ritz vector.

    ``‖F x − θ x‖ = |β_k y_k|`` bounds the distance from the Ritz value θ to *some* eigenvalue; the
    iteration stops as soon as every matrix meets ``LANCZOS_RTOL``. ``start`` (``(n, s)``)
    warm-starts it, e.g. with the restriction of the whole factor's top eigenvector to each block:
    the start vector is the normalised sum of the unit warm vector and a unit random vector, never
    the warm vector alone (see the module doc).
    """
    n, s, _ = stack.shape
    steps = min(steps, s)
    gen = torch.Generator(device=stack.device).manual_seed(0)
    q = torch.randn(n, s, generator=gen, device=stack.device, dtype=stack.dtype)
    q = q / q.norm(dim=1, keepdim=True)
    if start is not None:  # warm and random parts of equal weight (see the module doc)
        warm = start.to(stack.dtype)
        q = warm / warm.norm(dim=1, keepdim=True).clamp_min(1e-30) + q
        q = q / q.norm(dim=1, keepdim=True)
    basis = torch.zeros(n, steps, s, dtype=stack.dtype, device=stack.device)
    alpha = torch.zeros(n, steps, dtype=torch.float64, device=stack.device)
    beta = torch.zeros(n, steps, dtype=torch.float64, device=stack.device)
    scale = stack.diagonal(dim1=1, dim2=2).abs().sum(dim=1).clamp_min(1e-30)  # trace ≥ λmax
    for j in range(steps):
        basis[:, j] = q
        w = torch.bmm(stack, q.unsqueeze(2)).squeeze(2)
        alpha[:, j] = (w * q).sum(dim=1).double()
        for _ in range(2):  # full re-orthogonalisation, twice is enough
            coeff = torch.bmm(basis[:, : j + 1], w.unsqueeze(2))
            w = w - torch.bmm(basis[:, : j + 1].transpose(1, 2), coeff).squeeze(2)
        b = w.norm(dim=1)
        alive = b > 1e-7 * scale  # breakdown: an invariant subspace is found, the Ritz values are exact
        beta[:, j] = torch.where(alive, b.double(), torch.zeros_like(beta[:, j]))
        q = torch.where(alive[:, None], w / b.clamp_min(1e-30)[:, None], torch.zeros_like(w))
        if (j + 1) % LANCZOS_CHECK_EVERY == 0 or j + 1 == steps:
            lam, residual, y = _ritz(alpha[:, : j + 1], beta[:, : j + 1])
            if bool((residual <= LANCZOS_RTOL).all()) or j + 1 == steps:
                vector = torch.bmm(y.to(stack.dtype).unsqueeze(1), basis[:, : j + 1]).squeeze(1)
                return lam, residual, vector
    raise AssertionError("unreachable")


def lambda_max(stack: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
    """Largest eigenvalue (float64 result) of every symmetric PSD matrix in a ``(n, s, s)`` stack.

    ``start`` optionally warm-starts the Lanczos path (matrices larger than ``DIRECT_MAX``).
    """
    s = stack.shape[-1]
    if s == 1:
        return stack[:, 0, 0].double()
    work = stack.float()
    if s <= DIRECT_MAX:
        try:
            lam = torch.linalg.eigvalsh(work)[:, -1].double()
            bad = ~torch.isfinite(lam)
        except torch.linalg.LinAlgError:  # float32 eigh can fail to converge (many repeated eigenvalues)
            lam = torch.full((stack.shape[0],), math.nan, dtype=torch.float64)
            bad = torch.ones_like(lam, dtype=torch.bool)
    else:
        lam, residual, _ = _lanczos_lambda_max(work, LANCZOS_STEPS, start)
        bad = ~torch.isfinite(lam) | (residual > LANCZOS_RTOL)
    if bool(bad.any()):
        lam[bad] = torch.linalg.eigvalsh(stack[bad].double())[:, -1]
    return lam


def block_lambda_max(factor: torch.Tensor, split: int, top: torch.Tensor | None = None) -> float:
    """λmax of the block-diagonal part of ``factor`` at ``split``: the largest λmax of its blocks.

    ``top`` (the factor's top eigenvector) warm-starts the Lanczos runs of large blocks with its
    restriction to each block.
    """
    part = partition(factor.shape[0], split)
    if part.block == 1:
        return float(factor.diagonal().max())
    starts: list[torch.Tensor | None] = [None, None]
    if top is not None:
        n, b = part.num_full, part.block
        starts = [top[: n * b].reshape(n, b), top[n * b:].unsqueeze(0)]
    return max(float(lambda_max(stack, start).max())
               for stack, start in zip(extract_blocks(factor, part), starts))


def _full_lambda_max(factor: torch.Tensor) -> tuple[float, torch.Tensor | None]:
    """λmax of the whole factor and, when Lanczos computed it, its top eigenvector."""
    if factor.shape[0] <= DIRECT_MAX:
        return float(lambda_max(factor.unsqueeze(0))[0]), None
    lam, residual, vector = _lanczos_lambda_max(factor.unsqueeze(0).float(), LANCZOS_STEPS)
    if bool(torch.isfinite(lam).all()) and float(residual[0]) <= LANCZOS_RTOL:
        return float(lam[0]), vector[0]
    return float(torch.linalg.eigvalsh(factor.double())[-1]), None


def factor_losses(factor: torch.Tensor, candidates: Sequence[int]) -> list[float]:
    """L(F, b) for every candidate b (0 where b ≥ dim; 0 for an all-zero factor)."""
    dim = factor.shape[0]
    full, top = _full_lambda_max(factor)
    out = []
    for b in candidates:
        if b >= dim or full <= 0:
            out.append(0.0)
        else:
            out.append(min(1.0, max(0.0, 1.0 - block_lambda_max(factor, b, top) / full)))
    return out


def loss_table(
    named_factors: Sequence[tuple[str, str, str, torch.Tensor]],
    candidates: Sequence[int],
    progress: Callable[[], None] | None = None,
) -> pd.DataFrame:
    """Losses for every factor and candidate.

    ``named_factors`` holds ``(layer, kind, "a"|"g", factor)``; the frame has columns ``layer``,
    ``kind``, ``factor``, ``dim`` and one column per candidate (named ``str(b)``).
    """
    rows = []
    for layer, kind, which, factor in named_factors:
        losses = factor_losses(factor, candidates)
        rows.append({"layer": layer, "kind": kind, "factor": which, "dim": factor.shape[0],
                     **{str(b): v for b, v in zip(candidates, losses)}})
        if progress is not None:
            progress()
    return pd.DataFrame(rows, columns=["layer", "kind", "factor", "dim", *map(str, candidates)])


def reference_losses(factor: torch.Tensor, candidates: Sequence[int]) -> list[float]:
    """The plain definition in float64 ``eigvalsh`` (dense F̂ F̂ᵀ), for tests and benchmarks."""
    f = factor.double()
    dim = f.shape[0]
    full = torch.linalg.eigvalsh(f @ f.T)[-1].sqrt()
    out = []
    for b in candidates:
        part = partition(dim, b)
        hat = torch.block_diag(*[blk for stack in extract_blocks(f, part) for blk in stack])
        out.append(float(1 - torch.linalg.eigvalsh(hat @ hat.T)[-1].sqrt() / full) if full > 0 else 0.0)
    return out
