"""Batched inversion of damped factor blocks: the backends, and the function both the timing and
the THOR runtime call.

Every backend takes a ``(count, s, s)`` stack of symmetric positive semi-definite blocks that are
already damped and returns their inverses plus a per-block success mask. Success masks are left on
the device (no host synchronisation); :func:`invert_stack` checks them once per call and retries the
failed blocks in float64 with larger damping, so it never returns NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from thor_planner.partition import BlockGroups

InverseFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _finite(x: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(x).flatten(1).all(dim=1)


def cholesky_inverse(stack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``cholesky_ex`` then ``cholesky_inverse``: the default on CPU and CUDA.

    A failed block's partial factor can have a zero on its diagonal, on which ``cholesky_inverse``
    raises (CPU); such factors are replaced by the identity first (no host synchronisation) and
    the block is reported as failed.
    """
    chol, info = torch.linalg.cholesky_ex(stack)
    ok = info == 0
    eye = torch.eye(stack.shape[-1], dtype=stack.dtype, device=stack.device)
    inv = torch.cholesky_inverse(torch.where(ok[:, None, None], chol, eye))
    return inv, ok & _finite(inv)


def cholesky_solve_inverse(stack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``cholesky_ex``, one triangular solve for ``L⁻¹``, then ``L⁻ᵀ L⁻¹``."""
    chol, info = torch.linalg.cholesky_ex(stack)
    eye = torch.eye(stack.shape[-1], dtype=stack.dtype, device=stack.device).expand_as(stack)
    linv = torch.linalg.solve_triangular(chol, eye, upper=False)
    inv = linv.transpose(-1, -2) @ linv
    return inv, (info == 0) & _finite(inv)


def lu_inverse(stack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.inv_ex`` (LU with partial pivoting)."""
    inv, info = torch.linalg.inv_ex(stack)
    return inv, (info == 0) & _finite(inv)


NEWTON_SCHULZ_ITERATIONS = 24


def newton_schulz_inverse(stack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed number of Newton–Schulz steps ``X ← X(2I − AX)``; no host synchronisation.

    Starts from ``X₀ = I / ‖A‖_F``, which converges for symmetric positive definite ``A``; the
    error contracts quadratically once ``‖I − AX‖ < 1``, so the fixed iteration count suits
    well-damped blocks. The accuracy check before timing excludes it where it has not converged.
    """
    eye = torch.eye(stack.shape[-1], dtype=stack.dtype, device=stack.device)
    norm = torch.linalg.matrix_norm(stack).clamp_min(torch.finfo(stack.dtype).tiny)
    x = eye / norm[:, None, None]
    for _ in range(NEWTON_SCHULZ_ITERATIONS):
        x = x @ (2 * eye - stack @ x)
    return x, _finite(x)


BACKENDS: dict[str, InverseFn] = {
    "torch-cholesky": cholesky_inverse,
    "torch-cholesky-solve": cholesky_solve_inverse,
    "torch-inv": lu_inverse,
    "newton-schulz": newton_schulz_inverse,
}
DEFAULT_BACKEND = "torch-cholesky"


def register_backend(name: str, fn: InverseFn) -> None:
    """Make an extra backend (for example the optional cupy one) available by name."""
    BACKENDS[name] = fn


def get_backend(name: str) -> InverseFn:
    try:
        return BACKENDS[name]
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise ValueError(f"Unknown inversion backend {name!r}: choose one of {known}") from None


def damp(stack: torch.Tensor, damping: float) -> torch.Tensor:
    """``stack + damping · I`` for every block."""
    out = stack.clone()
    out.diagonal(dim1=-2, dim2=-1).add_(damping)
    return out


def invert_stack(
    stack: torch.Tensor,
    damping: float,
    backend: str = DEFAULT_BACKEND,
    *,
    check: bool = True,
    retries: int = 3,
) -> torch.Tensor:
    """Inverses of ``stack + damping·I`` in the stack's dtype, computed by ``backend``.

    With ``check`` (the runtime's setting) blocks that fail are recomputed with the Cholesky
    backend in float64, multiplying the damping by 10 up to ``retries`` times, and a block that
    still fails (NaN/Inf input) gets ``I / damping`` (plain gradient scaling) rather than NaN; this
    costs one host synchronisation. Without ``check`` the result is returned as computed, with no
    host synchronisation.
    """
    inv, ok = _invert_unchecked(stack, damping, backend)
    if not check or bool(ok.all()):
        return inv
    return _repair(stack, inv, ok, damping, retries)


def _invert_unchecked(stack: torch.Tensor, damping: float, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The backend's inverses and per-block success mask, both left on the device."""
    if stack.shape[-1] == 1:  # 1×1 blocks: a reciprocal, whatever the backend
        inv = 1.0 / (stack + damping)
        return inv, _finite(inv) & (stack.flatten(1)[:, 0] + damping > 0)
    return get_backend(backend)(damp(stack, damping))


def _repair(stack: torch.Tensor, inv: torch.Tensor, ok: torch.Tensor, damping: float, retries: int = 3) -> torch.Tensor:
    """Recompute the blocks where ``ok`` is false (float64 Cholesky, growing damping; else I/damping)."""
    bad = (~ok).nonzero().flatten()
    sub = stack[bad].double()
    fixed = torch.empty_like(sub)
    todo = torch.ones(len(bad), dtype=torch.bool, device=stack.device)
    lam = damping
    for _ in range(retries):
        lam = max(lam * 10.0, 1e-8)
        cand, cand_ok = cholesky_inverse(damp(sub[todo], lam))
        idx = todo.nonzero().flatten()
        fixed[idx[cand_ok]] = cand[cand_ok]
        todo[idx[cand_ok]] = False
        if not bool(todo.any()):
            break
    if bool(todo.any()):  # hopeless blocks (NaN/Inf input): scale the gradient by 1/damping
        eye = torch.eye(sub.shape[-1], dtype=sub.dtype, device=sub.device)
        fixed[todo] = eye / (damping if damping > 0 else 1.0)
    inv = inv.clone()
    inv[bad] = fixed.to(inv.dtype)
    return inv


def invert_groups(
    groups: BlockGroups,
    damping: float,
    backends: str | Mapping[int, str] = DEFAULT_BACKEND,
    *,
    check: bool = True,
) -> BlockGroups:
    """Invert every block of the network: one batched call per block size.

    ``backends`` is one backend name or a mapping from block size to backend name (the plan's
    per-size choice, ``plan.device["backends"]`` with integer keys); sizes missing from the mapping
    use the default backend. With ``check`` all sizes are launched first and their success masks
    read back with a single host synchronisation for the whole refresh; only when some block
    failed are the failed blocks repaired as in :func:`invert_stack`.
    """

    def backend_for(size: int) -> str:
        if isinstance(backends, str):
            return backends
        return backends.get(size, DEFAULT_BACKEND)

    raw = {size: _invert_unchecked(stack, damping, backend_for(size)) for size, stack in groups.stacks.items()}
    stacks = {size: inv for size, (inv, _) in raw.items()}
    if check and raw and not bool(torch.stack([ok.all() for _, ok in raw.values()]).all()):
        stacks = {size: inv if bool(ok.all()) else _repair(groups.stacks[size], inv, ok, damping)
                  for size, (inv, ok) in raw.items()}
    return BlockGroups(stacks, groups.index)


def inversion_flops(counts: Mapping[int, int]) -> float:
    """Σ count·s³ over block sizes: the work of a Cholesky-based inverse (≈ s³ each)."""
    return float(sum(count * math.pow(size, 3) for size, count in counts.items()))

