"""Batched inversion of damped factor blocks: the backends, and the function both the timing and
the THOR runtime call.

Every backend takes a ``(count, s, s)`` stack of symmetric positive semi-definite blocks that are
already damped and returns their inverses plus a per-block success mask. Success masks are left on
the device (no host synchronisation); :func:`invert_stack` and :func:`invert_groups` read them once
per call.

Numerics (with ``check=True``, the runtime's setting):

* **Accuracy check.** A backend's success flag only says the factorisation ran: float32 Cholesky
  reports success on blocks whose condition number κ is near ``1/ε`` (a rank-deficient Gram of raw
  0–255 pixels has λmax ≈ 1e6–1e7, so κ ≈ 1e7 at damping 0.17) and returns an inverse that is off
  by tens of percent. So every block's inverse ``X`` of ``A = block + λI`` is also checked on
  :data:`PROBES` fixed random unit vectors ``p``: ``max_p ‖A X p − p‖`` (computed in the stack's
  dtype, two batched ``(s × s)·(s × PROBES)`` products: O(count·s²), no host synchronisation). Since
  ``X − A⁻¹ = A⁻¹(AX − I)``, ``‖AX − I‖₂`` bounds the relative error ``‖X − A⁻¹‖₂/‖A⁻¹‖₂``; the
  probes estimate it in random directions (they see errors spread over many directions, as
  κ·ε-limited ones are, rather than bounding ‖AX − I‖₂ exactly). A block whose residual exceeds
  :data:`RESIDUAL_TOLERANCE` ``= 1e-3``, or is not finite, counts as failed. Why 1e-3: on
  log-spaced spectra a correct float32 inverse has a probe residual of a few times κ·ε (below 1e-4
  at κ = 1e3, below 1e-3 up to κ ≈ 1e4 at block size 2048), so the check passes every block where
  float32 is adequate and sends the rest (κ·ε approaching 1e-3 and beyond, relative errors from
  about 1e-4 up to 100%) to float64. It is 10× the tolerance backends are admitted with
  (:mod:`thor_planner.inversion.accuracy`).
* **Repair ladder** for failed blocks (:func:`_repair`): (1) float64 Cholesky at the **same**
  damping λ, which inverts any block with κ·ε₆₄ < 1, i.e. every positive definite block a float32
  factor produces; (2) only for blocks that fail that too (not positive definite even in float64,
  e.g. a factor made indefinite by rounding), float64 Cholesky at 10λ, 100λ, … (``retries`` steps,
  at least 1e-8); (3) a block that still fails (NaN/Inf input) gets ``I / λ`` (the gradient scaled
  as plain SGD would be at that damping) rather than NaN. The repaired blocks are cast back to the
  stack's dtype. Only failed blocks are recomputed.
"""

from __future__ import annotations

import functools
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


#: above this size torch's batched CPU LU factors the blocks of a batch on several threads at once,
#: each calling MKL's ``getrf``; after ``torch.set_num_threads`` (any count above 1) that can fail
#: ("Parameter 6 was incorrect on entry to DLASWP") and hang on Intel CPUs (pytorch/pytorch#141358)
LU_THREADED_SIZE = 14


def lu_inverse(stack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.inv_ex`` (LU with partial pivoting); on the CPU, blocks above
    :data:`LU_THREADED_SIZE` one at a time (each still uses MKL's own threads)."""
    if stack.device.type == "cpu" and stack.shape[0] > 1 and stack.shape[-1] > LU_THREADED_SIZE:
        inv, info = (torch.stack(t) for t in zip(*(torch.linalg.inv_ex(m) for m in stack)))
    else:
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


PROBES = 4
RESIDUAL_TOLERANCE = 1e-3


@functools.lru_cache(maxsize=64)
def _probes(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """:data:`PROBES` fixed random unit vectors of length ``size``, as the columns of a matrix."""
    gen = torch.Generator().manual_seed(size)
    p = torch.randn(size, PROBES, generator=gen, dtype=torch.float64)
    return (p / p.norm(dim=0)).to(device=device, dtype=dtype)


def probe_residual(stack: torch.Tensor, damping: float, inv: torch.Tensor) -> torch.Tensor:
    """``max_p ‖(stack + damping·I) X p − p‖`` per block over the unit probes ``p`` (see the module
    doc): two batched products with an ``(s, PROBES)`` matrix, left on the device."""
    p = _probes(stack.shape[-1], stack.dtype, stack.device)
    y = inv.to(stack.dtype) @ p
    return (stack @ y + damping * y - p).norm(dim=1).amax(dim=1)


def invert_stack(
    stack: torch.Tensor,
    damping: float,
    backend: str = DEFAULT_BACKEND,
    *,
    check: bool = True,
    retries: int = 3,
) -> torch.Tensor:
    """Inverses of ``stack + damping·I`` in the stack's dtype, computed by ``backend``.

    With ``check`` (the runtime's setting) blocks that fail, or whose probe residual exceeds
    :data:`RESIDUAL_TOLERANCE`, are recomputed in float64: first at the same damping, then at 10×
    the damping up to ``retries`` times, and a block that still fails (NaN/Inf input) gets
    ``I / damping`` rather than NaN (the ladder is in the module doc). This costs one host
    synchronisation when every block passes. Without ``check`` the result is returned as computed,
    with no host synchronisation and no residual.
    """
    inv, ok = _invert_unchecked(stack, damping, backend, check)
    if not check or bool(ok.all()):
        return inv
    return _repair(stack, inv, ok, damping, retries)


def _invert_unchecked(stack: torch.Tensor, damping: float, backend: str,
                      check: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The backend's inverses and per-block success mask (with ``check``, including the probe
    residual test), both left on the device."""
    if stack.shape[-1] == 1:  # 1×1 blocks: a reciprocal, whatever the backend
        inv = 1.0 / (stack + damping)
        return inv, _finite(inv) & (stack.flatten(1)[:, 0] + damping > 0)
    inv, ok = get_backend(backend)(damp(stack, damping))
    if check:
        residual = probe_residual(stack, damping, inv)
        ok = ok & (residual <= RESIDUAL_TOLERANCE)  # NaN residuals compare False: failed
    return inv, ok


def _repair(stack: torch.Tensor, inv: torch.Tensor, ok: torch.Tensor, damping: float, retries: int = 3) -> torch.Tensor:
    """Recompute the blocks where ``ok`` is false: float64 Cholesky at ``damping``, then at 10×, 100×, …
    (``retries`` increases), else ``I / damping``; see the module doc."""
    bad = (~ok).nonzero().flatten()
    sub = stack[bad].double()
    fixed = torch.empty_like(sub)
    todo = torch.ones(len(bad), dtype=torch.bool, device=stack.device)
    ladder = [damping] + [max(damping * 10.0 ** (k + 1), 1e-8) for k in range(retries)]
    for lam in ladder:
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
    use the default backend. With ``check`` all sizes are launched first (each with its probe
    residual) and their success masks read back with a single host synchronisation for the whole
    refresh; only when some block failed are the failed blocks repaired as in :func:`invert_stack`.
    """

    def backend_for(size: int) -> str:
        if isinstance(backends, str):
            return backends
        return backends.get(size, DEFAULT_BACKEND)

    raw = {size: _invert_unchecked(stack, damping, backend_for(size), check)
           for size, stack in groups.stacks.items()}
    stacks = {size: inv for size, (inv, _) in raw.items()}
    if check and raw and not bool(torch.stack([ok.all() for _, ok in raw.values()]).all()):
        stacks = {size: inv if bool(ok.all()) else _repair(groups.stacks[size], inv, ok, damping)
                  for size, (inv, ok) in raw.items()}
    return BlockGroups(stacks, groups.index)


def inversion_flops(counts: Mapping[int, int]) -> float:
    """Σ count·s³ over block sizes: the work of a Cholesky-based inverse (≈ s³ each)."""
    return float(sum(count * math.pow(size, 3) for size, count in counts.items()))

