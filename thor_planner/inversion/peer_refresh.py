"""What a refresh of Distributed Shampoo's and heavyball SOAP's preconditioners computes, written
from their documented defaults so the profiler can time it on the target device (their code is
not used). Both libraries refresh one factor matrix at a time (no batching by size), and so does
this module.

**Distributed Shampoo** (default ``RootInvShampooPreconditionerConfig`` with ``EigenConfig``,
perturbation before the computation): for a factor ``F`` of a ``k``-dimensional block, root
``2k`` (``1/(2k)`` is its default inverse exponent; 4 for a matrix block, 2 for a vector block):
``eigh(F + εI)`` (float64 retry when float32 ``eigh`` fails), the smallest eigenvalue read on the
host and, when it is below ε, every eigenvalue lifted by ``ε − λmin``; then ``Q·diag(λ^(−1/root))·Qᵀ``.

**SOAP** (heavyball 3.2.1): the first refresh is an ``eigh`` per factor (:func:`soap_basis`); every
later one (what runs each ``precondition_frequency`` steps, :func:`soap_basis_refresh`) is one power
step from the previous basis ``Q``: ``W = F Q``, eigenvalue estimates ``diag(Qᵀ F Q)``, ``W`` lifted
by ``max(floor, min(64·s·ε_float32, 1/8))·max|estimate|·Q``, its columns ordered by the estimates, a
QR with the signs of ``R``'s diagonal made positive, the columns put back in place; then the first
moment is rotated from the old bases into the new ones along every preconditioned dimension
(:func:`rotate_moment`).
"""

from __future__ import annotations

import torch

#: Distributed Shampoo's default ``epsilon``
SHAMPOO_EPSILON = 1e-12
#: heavyball's ``eps`` default, the floor of SOAP's lift
SOAP_FLOOR = 1e-8


def _eigh(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh``, retried in float64 (and cast back) when it fails to converge."""
    try:
        return torch.linalg.eigh(matrix)
    except RuntimeError:
        values, vectors = torch.linalg.eigh(matrix.double())
        return values.to(matrix.dtype), vectors.to(matrix.dtype)


def shampoo_root_inverse(factor: torch.Tensor, root: int, epsilon: float = SHAMPOO_EPSILON) -> torch.Tensor:
    """``(F + εI)^(−1/root)`` as Distributed Shampoo's default refresh computes it (module doc)."""
    eye = torch.eye(factor.shape[-1], dtype=factor.dtype, device=factor.device)
    values, vectors = _eigh(factor + epsilon * eye)
    smallest = float(values.min())  # read on the host, as the library does
    if smallest < epsilon:
        values = values - smallest + epsilon
    return (vectors * values.pow(-1.0 / root)) @ vectors.mT


def shampoo_refresh(factors: list[tuple[torch.Tensor, int]], epsilon: float = SHAMPOO_EPSILON) -> list[torch.Tensor]:
    """Every ``(factor, root)`` refreshed in turn."""
    return [shampoo_root_inverse(f, root, epsilon) for f, root in factors]


def soap_basis(factor: torch.Tensor) -> torch.Tensor:
    """SOAP's first refresh: the eigenvectors of ``F``, largest eigenvalue first."""
    return _eigh(factor)[1].flip(-1)


def soap_basis_refresh(factor: torch.Tensor, basis: torch.Tensor, floor: float = SOAP_FLOOR) -> torch.Tensor:
    """SOAP's later refresh of one factor's basis (or a stack of them): a power step and a QR
    (module doc)."""
    work = factor @ basis
    estimate = (basis * work).sum(-2)
    magnitude = estimate.abs().amax(-1, keepdim=True).clamp_min(torch.finfo(factor.dtype).tiny)
    lift = max(floor, min(64 * factor.shape[-1] * torch.finfo(factor.dtype).eps, 0.125))
    work = work + lift * magnitude.unsqueeze(-2) * basis
    index = torch.argsort(estimate, descending=True).unsqueeze(-2).expand_as(work)
    q, r = torch.linalg.qr(work.gather(-1, index))
    signs = r.diagonal(dim1=-2, dim2=-1).sign()
    q = q * torch.where(signs != 0, signs, torch.ones_like(signs)).unsqueeze(-2)
    return work.scatter(-1, index, q)


def rotate_moment(moment: torch.Tensor, old: list[torch.Tensor | None], new: list[torch.Tensor | None]) -> torch.Tensor:
    """The first moment (kept in the old eigenbasis) expressed in the new one: along every
    dimension with a basis, the mode product with ``Q_newᵀ Q_old``."""
    for d, (q_old, q_new) in enumerate(zip(old, new)):
        if q_old is None:
            continue
        moment = torch.tensordot(q_new.mT @ q_old, moment.movedim(d, 0), dims=1).movedim(0, d)
    return moment


def soap_refresh(states: list[tuple[list[torch.Tensor | None], list[torch.Tensor | None], torch.Tensor]]) -> list:
    """Every parameter's ``(factors, bases, first moment)`` refreshed in turn: new bases, rotated moment."""
    out = []
    for factors, bases, moment in states:
        new = [None if f is None else soap_basis_refresh(f, q) for f, q in zip(factors, bases)]
        out.append((new, rotate_moment(moment, bases, new)))
    return out
