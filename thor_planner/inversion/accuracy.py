"""The accuracy check every backend passes before it is timed or used (the per-size choice of the
fastest accurate backend, ``--backend auto``, is in :mod:`thor_planner.timing.backend_choice`; the
check of every inverse at run time is the probe residual in :mod:`thor_planner.inversion.backends`).

At block size ``s`` a backend inverts :data:`ACCURACY_BLOCKS` synthetic
symmetric positive definite blocks in float32 (inputs ``A = Q diag(λ) Qᵀ``, ``Q`` random orthogonal,
``λ`` log-spaced from 1 down to ``1/κ`` with ``κ =`` :data:`ACCURACY_CONDITION` ``= 1e3``, rounded to
float32). Its error is ``max over blocks ‖X − A⁻¹‖_F / ‖A⁻¹‖_F`` against the float64 inverse of the
same float32 input; above :data:`ACCURACY_TOLERANCE` (1e-4), non-finite, or raising, the backend is
excluded at that size and ``{"backend", "size", "error", "reason"}`` is recorded (``error`` is
``null`` when not finite). Why synthetic blocks with κ = 1e3: damped ResNet-50 factor blocks
(damping 0.03, factors captured at initialisation) reach κ ≈ 8e3 at block size 2048, yet all four
torch backends invert them with errors ≤ 6e-5 because their eigenvalues cluster at the damping; a
log-spaced spectrum is harsher, and at κ = 1e3 it gives float32 Cholesky errors of ≈ 1e-5 (a 10×
margin) while a Newton–Schulz iterate that has not converged, or bf16 products (error ≈ 3e-3),
fail clearly. At κ = 1e4 float32 Cholesky itself reaches 1.1e-4 at size 2048 (the κ·ε bound), so
every backend would be excluded. The same check runs
for the device profile, where no model factors exist. Blocks of size 1 are inverted by a reciprocal
whatever the backend (see :func:`inversion.invert_stack`), so they are neither checked nor timed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

from thor_planner.inversion.backends import get_backend

ACCURACY_TOLERANCE = 1e-4
ACCURACY_CONDITION = 1e3
ACCURACY_BLOCKS = 2
ACCURACY_REFERENCE = (f"max ‖X − A⁻¹‖_F/‖A⁻¹‖_F ≤ {ACCURACY_TOLERANCE:g} vs float64, on float32 synthetic SPD "
                      f"blocks with log-spaced spectrum, condition number {ACCURACY_CONDITION:g}")

@functools.lru_cache(maxsize=4)
def _spd_blocks64(size: int, count: int, condition: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + size)
    q, _ = torch.linalg.qr(torch.randn(count, size, size, generator=gen, dtype=torch.float64))
    lam = torch.logspace(0.0, -math.log10(condition), size, dtype=torch.float64)
    return (q * lam) @ q.transpose(-1, -2)


def accuracy_blocks(size: int, *, count: int = ACCURACY_BLOCKS, condition: float = ACCURACY_CONDITION,
                    seed: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
    """``count`` float32 SPD blocks of ``size`` with condition number ``condition`` (see module doc)."""
    return _spd_blocks64(size, count, float(condition), seed).to(device=device, dtype=torch.float32)


def spd_inverse64(blocks: torch.Tensor) -> torch.Tensor:
    """The float64 inverse of symmetric positive definite ``blocks`` by Cholesky (not LU: batched
    LU on the CPU after ``torch.set_num_threads`` can hang with MKL, :mod:`.backends`)."""
    return torch.cholesky_inverse(torch.linalg.cholesky(blocks.double()))


def backend_error(name: str, blocks: torch.Tensor) -> float:
    """Largest relative error ``‖X − A⁻¹‖_F/‖A⁻¹‖_F`` of backend ``name`` on float32 ``blocks``
    against the float64 inverse of the same values (``inf`` when not finite)."""
    inv, _ = get_backend(name)(blocks)
    ref = spd_inverse64(blocks)
    err = torch.linalg.matrix_norm(inv.double() - ref) / torch.linalg.matrix_norm(ref)
    worst = float(err.max())
    return worst if math.isfinite(worst) else math.inf


def classify_backends(names: Sequence[str], size: int, blocks: torch.Tensor, *,
                      tolerance: float = ACCURACY_TOLERANCE) -> tuple[list[str], list[dict]]:
    """The backends among ``names`` whose error on ``blocks`` is within ``tolerance``, and an
    exclusion record (``backend``, ``size``, ``error``, ``reason``) for each other."""
    accurate, excluded = [], []
    for name in names:
        try:
            err = backend_error(name, blocks)
        except Exception as exc:  # noqa: BLE001 - a backend that raises is excluded, with the reason
            excluded.append({"backend": name, "size": size, "error": None,
                             "reason": f"raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"})
            continue
        if err <= tolerance:
            accurate.append(name)
        else:
            excluded.append({"backend": name, "size": size, "error": err if math.isfinite(err) else None,
                             "reason": f"relative error {err:.2e} > {tolerance:g}" if math.isfinite(err)
                             else "non-finite result"})
    return accurate, excluded


def check_accuracy(names: Sequence[str], size: int, device: torch.device | str = "cpu", *,
                   tolerance: float = ACCURACY_TOLERANCE) -> tuple[list[str], list[dict]]:
    """The backends among ``names`` accurate at ``size`` on the undamped synthetic blocks."""
    blocks = accuracy_blocks(size, count=ACCURACY_BLOCKS if size <= 512 else 1, device=device)
    return classify_backends(names, size, blocks, tolerance=tolerance)
