"""Batched eigendecompositions of factor blocks: what the eigenbasis family refreshes, and what the
profiler times for it (the one function both call: :func:`eigh_groups`).

Every block ``F`` (symmetric positive semi-definite, undamped: a diagonal shift changes no
eigenvector) gets ``F = Q Λ Qᵀ`` with the eigenvalues in **descending** order, so the i-th column of
``Q`` keeps meaning "the i-th largest direction" from one refresh to the next (what the eigenbasis
family's second moments rely on, as SOAP's do).

Numerics: ``torch.linalg.eigh`` in the stack's dtype
(float32), then an accuracy check on :data:`~.backends.PROBES` fixed random unit vectors ``p``:
the reconstruction residual ``‖F Q p − Q Λ p‖ / (‖F‖ + tiny)`` (``‖F‖`` estimated as ``λmax``) and
the orthogonality residual ``‖Qᵀ Q p − p‖``, both O(s²) per block and on the device. A block above
:data:`EIGEN_TOLERANCE` ``= 1e-3`` on either, or whose decomposition did not converge (torch raises
for the whole stack), or that holds NaN/Inf, is recomputed in float64 and cast back; a block that
fails in float64 too (NaN/Inf input) gets ``Q = I`` (its layer's step is then Adam's). One host
synchronisation per call when every block passes.
"""

from __future__ import annotations

import torch

from thor_planner.inversion.backends import _probes
from thor_planner.partition import BlockGroups

EIGEN_TOLERANCE = 1e-3


def _eigh(stack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(eigenvalues, eigenvectors)`` of every block, descending; ``None`` when eigh fails."""
    try:
        values, vectors = torch.linalg.eigh(stack)
    except RuntimeError:  # torch.linalg.LinAlgError: did not converge (or NaN/Inf input)
        return None
    return values.flip(-1), vectors.flip(-1)


def eigen_residual(stack: torch.Tensor, values: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Per block, the larger of the relative reconstruction and the orthogonality residual on the
    unit probes (see the module doc); left on the device."""
    p = _probes(stack.shape[-1], stack.dtype, stack.device)
    qp = vectors @ p
    scale = values.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(stack.dtype).tiny)
    recon = (stack @ qp - vectors @ (values.unsqueeze(-1) * p)).norm(dim=1) / scale
    ortho = (vectors.mT @ qp - p).norm(dim=1)
    return torch.maximum(recon, ortho).amax(dim=1)


def _checked(stack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The eigenvectors of ``stack`` and a per-block success mask (on the device)."""
    if stack.shape[-1] == 1:
        return torch.ones_like(stack), torch.isfinite(stack).flatten(1).all(dim=1)
    result = _eigh(stack)
    if result is None:
        return torch.eye(stack.shape[-1], dtype=stack.dtype, device=stack.device).expand_as(stack).clone(), \
            torch.zeros(stack.shape[0], dtype=torch.bool, device=stack.device)
    values, vectors = result
    residual = eigen_residual(stack, values, vectors)
    return vectors, torch.isfinite(vectors).flatten(1).all(dim=1) & (residual <= EIGEN_TOLERANCE)


def _repair(stack: torch.Tensor, vectors: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """Recompute the failed blocks in float64 (one by one when the batch fails); ``I`` for hopeless ones."""
    vectors = vectors.clone()
    eye = torch.eye(stack.shape[-1], dtype=stack.dtype, device=stack.device)
    for i in (~ok).nonzero().flatten().tolist():
        block = stack[i].double()
        result = _eigh(block) if bool(torch.isfinite(block).all()) else None
        vectors[i] = eye if result is None else result[1].to(stack.dtype)
    return vectors


def eigh_stack(stack: torch.Tensor) -> torch.Tensor:
    """The eigenvectors (columns, eigenvalues descending) of every block of a ``(count, s, s)`` stack."""
    vectors, ok = _checked(stack)
    return vectors if bool(ok.all()) else _repair(stack, vectors, ok)


def eigh_groups(groups: BlockGroups) -> BlockGroups:
    """The eigenvectors of every block of the network: one batched ``eigh`` per block size, checked
    with a single host synchronisation for the whole refresh (failed blocks repaired in float64)."""
    raw = {size: _checked(stack) for size, stack in groups.stacks.items()}
    stacks = {size: vectors for size, (vectors, _) in raw.items()}
    if raw and not bool(torch.stack([ok.all() for _, ok in raw.values()]).all()):
        stacks = {size: vectors if bool(ok.all()) else _repair(groups.stacks[size], vectors, ok)
                  for size, (vectors, ok) in raw.items()}
    return BlockGroups(stacks, groups.index)
