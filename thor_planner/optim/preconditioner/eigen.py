"""The Kronecker-eigenbasis family (``family="eigen"``): Adam run in the eigenbasis of each layer's
A and G blocks, as SOAP runs it in Shampoo's (Vyas et al., 2024) and EK-FAC rescales K-FAC's
(George et al., 2018).

At a refresh every block of A and G is decomposed, ``A_b = Q_A Λ_A Q_Aᵀ``, ``G_b = Q_G Λ_G Q_Gᵀ``
(eigenvalues descending; :func:`~thor_planner.inversion.eigen.eigh_groups`). Every step, with ``∇``
the layer's gradient matrix (bias as the last column) and block-diagonal ``Q``::

    R = Q_Gᵀ ∇ Q_A                          the gradient in the eigenbasis
    m ← β1 m + (1 − β1) R,  v ← β2 v + (1 − β2) R∘R      Adam's moments, kept in the eigenbasis
    V = Q_G ( m̂ / (sqrt(v̂) + eps) ) Q_Aᵀ      m̂, v̂ bias-corrected by the layer's own step count

``V`` is already Adam-scaled, so the layer takes it as AdamW would take its own direction (the
learning rate, betas, eps and decoupled weight decay of its param group); it is not regrafted. The
family stands in for AdamW only (``graft="adamw"``).

**When the basis changes** (a refresh the trace rule sends to "update"), with the rotation
``P = Q_newᵀ Q_old`` of each side: the first moment is linear in the gradient and moves exactly,
``m ← P_G m P_Aᵀ``; the second moment, a per-coordinate mean of squares, moves as the squares of
independent coordinates would, ``v ← (P_G∘P_G) v (P_A∘P_A)ᵀ``. Both are exact when the basis did not
change (``P`` a signed identity) and cost four block products per refresh, not per step. (SOAP
keeps ``m`` in the original space, projecting it every step, and carries ``v`` over by sorting the
new directions by eigenvalue.)

Per step the family costs two block-diagonal rotations of the gradient and two of the update
(``2·g·a·(s_G + s_A)`` multiply-adds each way for a ``g × a`` layer at block sizes ``s_G``, ``s_A``);
per refresh one batched ``eigh`` per block size, about ``9 s³`` flops a block against a Cholesky
inverse's ``s³``: the profiler times it on the device (``thor-plan profile --family eigen``) and the
planner picks the split it can afford.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from thor_planner.inversion.eigen import eigh_groups
from thor_planner.optim.blocks import for_apply, left, right
from thor_planner.optim.preconditioner.base import Blocks, Family, LayerPreconditioner
from thor_planner.partition import BlockGroups, Partition


def _transposed(blocks: Blocks) -> Blocks:
    return [b.mT for b in blocks]


def _rotation(new: Blocks, old: Blocks) -> Blocks:
    """``Q_newᵀ Q_old`` block by block (the same partition on both sides)."""
    return [torch.bmm(n.mT, o) for n, o in zip(new, old)]


class EigenState(LayerPreconditioner):
    """A layer's eigenbases (held as :func:`~thor_planner.optim.blocks.left` / ``right`` apply them)
    and Adam's moments in that basis."""

    def __init__(self, a_part: Partition, g_part: Partition) -> None:
        super().__init__(a_part, g_part)
        self.qa: Blocks | None = None
        self.qg: Blocks | None = None
        self.exp_avg: torch.Tensor | None = None  # (g_dim, a_dim), in the eigenbasis
        self.exp_avg_sq: torch.Tensor | None = None
        self.step: torch.Tensor | None = None  # 0-dim float: steps counted into the moments

    @property
    def ready(self) -> bool:
        return self.qa is not None

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """``Q_Gᵀ x Q_A``: a matrix into the eigenbasis."""
        return right(left(_transposed(self.qg), x, self.g_part), self.qa, self.a_part)

    def unrotate(self, x: torch.Tensor) -> torch.Tensor:
        """``Q_G x Q_Aᵀ``: a matrix out of the eigenbasis."""
        return right(left(self.qg, x, self.g_part), _transposed(self.qa), self.a_part)

    def install(self, a_solved: Blocks, g_solved: Blocks, *, replay: bool = False) -> None:
        qa = for_apply(a_solved, self.a_part, other=self.g_part.dim)
        qg = for_apply(g_solved, self.g_part, other=self.a_part.dim)
        if not replay and self.exp_avg is not None and self.qa is not None:
            pa, pg = _rotation(qa, self.qa), _rotation(qg, self.qg)
            self.exp_avg = right(left(pg, self.exp_avg, self.g_part), _transposed(pa), self.a_part)
            sq_a, sq_g = [p * p for p in pa], [p * p for p in pg]
            self.exp_avg_sq = right(left(sq_g, self.exp_avg_sq, self.g_part), _transposed(sq_a), self.a_part)
        self.qa, self.qg = qa, qg

    def direction(self, grad: torch.Tensor, *, group: Mapping, ok: torch.Tensor | None) -> torch.Tensor:
        (beta1, beta2), eps = group["betas"], group["eps"]
        r = self.rotate(grad)
        if self.exp_avg is None:
            self.exp_avg, self.exp_avg_sq = torch.zeros_like(r), torch.zeros_like(r)
            self.step = torch.zeros((), dtype=torch.float32, device=r.device)
        m, v = self.exp_avg, self.exp_avg_sq
        if ok is None:
            self.step += 1
            m.lerp_(r, 1 - beta1)
            v.mul_(beta2).addcmul_(r, r, value=1 - beta2)
        else:  # a skipped step (decided on the device): moments and count stay exactly as they were
            r = torch.where(ok, r, torch.zeros((), dtype=r.dtype, device=r.device))
            self.step += ok.float()
            m.mul_(torch.where(ok, beta1, 1.0)).add_(r, alpha=1 - beta1)
            v.mul_(torch.where(ok, beta2, 1.0)).addcmul_(r, r, value=1 - beta2)
        t = self.step.double()
        m_hat = m / (1 - beta1 ** t).to(m.dtype)
        denom = (v / (1 - beta2 ** t).to(v.dtype)).sqrt_().add_(eps)
        return self.unrotate(m_hat / denom)

    def state_dict(self) -> dict:
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq, "step": self.step}

    def load_state_dict(self, state: dict, device: torch.device, dtype: torch.dtype) -> None:
        def moved(t, to_dtype):
            return None if t is None else t.to(device=device, dtype=to_dtype, copy=True)

        self.exp_avg, self.exp_avg_sq = moved(state["exp_avg"], dtype), moved(state["exp_avg_sq"], dtype)
        self.step = moved(state["step"], torch.float32)


class EigenFamily(Family):
    """``family="eigen"``: Adam in the Kronecker eigenbasis (stands in for AdamW)."""

    name = "eigen"
    own_moments = True
    grafts = ("adamw",)
    flops_per_cube = 9.0  # a symmetric eigendecomposition with eigenvectors (Golub & Van Loan)
    uses_backends = False

    def solve(self, groups: BlockGroups, shift: float) -> BlockGroups:
        return eigh_groups(groups)

    def layer(self, a_part: Partition, g_part: Partition) -> EigenState:
        return EigenState(a_part, g_part)
