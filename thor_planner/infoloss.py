"""Information loss of keeping only the diagonal blocks of a factor.

For a factor F and split b, with F̂ its block-diagonal part on :func:`partition.partition`:

    L(F, b) = 1 − sqrt(λmax(F̂ F̂ᵀ) / λmax(F Fᵀ)) = 1 − λmax(F̂) / λmax(F)   (F symmetric PSD)

and λmax(F̂) is the largest λmax of its blocks. Fast path: blocks up to ``DIRECT_MAX`` go through
batched float32 ``eigvalsh``; larger matrices through batched Lanczos with full
re-orthogonalisation (float32 matrix products, float64 tridiagonal solve), whose residual bound is
checked; a matrix that has not converged is redone with float64 ``eigvalsh``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pandas as pd
import torch

from .partition import extract_blocks, partition

DIRECT_MAX = 256
LANCZOS_STEPS = 48
LANCZOS_RTOL = 1e-5


def _lanczos_lambda_max(stack: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest eigenvalue of each symmetric matrix in ``stack`` and a relative residual bound."""
    n, s, _ = stack.shape
    steps = min(steps, s)
    gen = torch.Generator(device=stack.device).manual_seed(0)
    q = torch.randn(n, s, generator=gen, device=stack.device, dtype=stack.dtype)
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
        beta[:, j] = b.double()
        alive = b > 1e-7 * scale  # breakdown: an invariant subspace is found, the Ritz values are exact
        q = torch.where(alive[:, None], w / b.clamp_min(1e-30)[:, None], torch.zeros_like(w))
        beta[:, j] = torch.where(alive, beta[:, j], torch.zeros_like(beta[:, j]))
    tri = torch.diag_embed(alpha) + torch.diag_embed(beta[:, :-1], 1) + torch.diag_embed(beta[:, :-1], -1)
    theta, vecs = torch.linalg.eigh(tri)
    lam = theta[:, -1]
    residual = (beta[:, -1] * vecs[:, -1, -1]).abs() / lam.abs().clamp_min(1e-30)
    return lam, residual


def lambda_max(stack: torch.Tensor) -> torch.Tensor:
    """Largest eigenvalue (float64 result) of every symmetric PSD matrix in a ``(n, s, s)`` stack."""
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
        lam, residual = _lanczos_lambda_max(work, LANCZOS_STEPS)
        bad = ~torch.isfinite(lam) | (residual > LANCZOS_RTOL)
    if bool(bad.any()):
        lam[bad] = torch.linalg.eigvalsh(stack[bad].double())[:, -1]
    return lam


def block_lambda_max(factor: torch.Tensor, split: int) -> float:
    """λmax of the block-diagonal part of ``factor`` at ``split``: the largest λmax of its blocks."""
    part = partition(factor.shape[0], split)
    if part.block == 1:
        return float(factor.diagonal().max())
    return max(float(lambda_max(stack).max()) for stack in extract_blocks(factor, part))


def factor_losses(factor: torch.Tensor, candidates: Sequence[int]) -> list[float]:
    """L(F, b) for every candidate b (0 where b ≥ dim; 0 for an all-zero factor)."""
    dim = factor.shape[0]
    full = float(lambda_max(factor.unsqueeze(0))[0])
    out = []
    for b in candidates:
        if b >= dim or full <= 0:
            out.append(0.0)
        else:
            out.append(min(1.0, max(0.0, 1.0 - block_lambda_max(factor, b) / full)))
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
