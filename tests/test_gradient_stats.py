"""The peer optimizers' statistics and their information loss, against references written plainly
here: a tiny model's per-batch gradients, Shampoo's L and R of every block, the dense Kronecker
statistics and their λmax, SOAP's identity sides; and the refresh each library runs."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from thor_planner.capture.gradient_stats import block_stacks, capture_gradients, matrix_view
from thor_planner.gradient_loss import gradient_loss_table, parameter_losses
from thor_planner.infoloss import reference_losses
from thor_planner.inversion.peer_refresh import (rotate_moment, shampoo_root_inverse, soap_basis, soap_basis_refresh,
                                                 soap_refresh)
from thor_planner.targets import TARGETS, shampoo_blocks

SHAMPOO, SOAP = TARGETS["shampoo"], TARGETS["soap"]


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 4))


def tiny_batches(count: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(5, 6, generator=gen), torch.randint(0, 4, (5,), generator=gen)) for _ in range(count)]


@pytest.fixture(scope="module")
def samples():
    return capture_gradients(tiny_model(), tiny_batches())


def test_capture_gradients_per_batch(samples) -> None:
    model = tiny_model()
    for t, (x, y) in enumerate(tiny_batches()):
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(samples.grads[name][t], p.grad)
    assert samples.names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert samples.batches == 3 and samples.skipped == []


class WithUnused(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Linear(6, 4), nn.BatchNorm1d(4))
        self.extra = nn.Linear(3, 3)  # never called: no gradient

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self[1](self[0](x))


def test_capture_leaves_the_model_and_lists_skipped() -> None:
    model = WithUnused()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = capture_gradients(model.eval(), tiny_batches(2), skip=r"^1\.")
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert got.names == ["0.weight", "0.bias"]
    assert got.skipped == [{"name": "1.weight", "reason": "matched --skip '^1\\\\.'"},
                           {"name": "1.bias", "reason": "matched --skip '^1\\\\.'"},
                           {"name": "extra.weight", "reason": "no gradient (not reached by the forward pass)"},
                           {"name": "extra.bias", "reason": "no gradient (not reached by the forward pass)"}]


def chunks(dim: int, b: int) -> list[range]:
    return [range(s, min(s + b, dim)) for s in range(0, dim, b)]


def test_shampoo_block_statistics_are_each_blocks_own(samples) -> None:
    """L of block (i, j) is (1/T) Σ G_ij G_ijᵀ over its own columns only, R over its own rows only; summed
    over the column blocks, the L of a row block is that row block of the whole parameter's L."""
    grads = samples.grads["0.weight"]  # (3, 10, 6)
    cut = shampoo_blocks((10, 6), 4)
    stacks = [(s, k) for s in block_stacks(grads, cut) for k in range(s.count)]
    blocks = [s.x[k] for s, k in stacks]
    expected = [grads[:, r][:, :, c] for r in chunks(10, 4) for c in chunks(6, 4)]
    assert sorted(tuple(b.shape) for b in blocks) == sorted(tuple(e.shape) for e in expected)
    for g in expected:
        left = sum(g[t] @ g[t].T for t in range(3)) / 3
        right = sum(g[t].T @ g[t] for t in range(3)) / 3
        match = [(s, k) for s, k in stacks if s.x[k].shape == g.shape and torch.equal(s.x[k], g)]
        assert len(match) == 1
        s, k = match[0]
        torch.testing.assert_close(s.factor(0)[k], left)
        torch.testing.assert_close(s.factor(1)[k], right)
        torch.testing.assert_close(s.diagonal(0)[k], left.diagonal())
        torch.testing.assert_close(s.trace()[k].float(), left.trace())
    whole_left = sum(grads[t] @ grads[t].T for t in range(3)) / 3
    summed = torch.zeros(4, 4)
    for c in chunks(6, 4):
        g = grads[:, 0:4][:, :, c]
        summed += sum(g[t] @ g[t].T for t in range(3)) / 3
    torch.testing.assert_close(summed, whole_left[0:4, 0:4])  # what blocking keeps of L's row block 0


def dense_kronecker(g: torch.Tensor) -> torch.Tensor:
    """L ⊗ R / tr for samples ``(T, r, c)``, in the row-major order of vec(G)."""
    t = g.shape[0]
    left = sum(g[i] @ g[i].T for i in range(t)) / t
    right = sum(g[i].T @ g[i] for i in range(t)) / t
    return torch.kron(left, right) / left.trace()


def dense_blocked(g: torch.Tensor, b: int, soap: bool = False) -> torch.Tensor:
    """F̂ as a dense matrix: Shampoo's blocks' products placed on vec(G)'s indices; SOAP's one block with
    the diagonal of every side larger than b."""
    t, rows, cols = g.shape
    out = torch.zeros(rows * cols, rows * cols, dtype=g.dtype)
    row_cuts, col_cuts = ([range(rows)], [range(cols)]) if soap else (chunks(rows, b), chunks(cols, b))
    for r in row_cuts:
        for c in col_cuts:
            blk = g[:, list(r)][:, :, list(c)]
            left = sum(blk[i] @ blk[i].T for i in range(t)) / t
            right = sum(blk[i].T @ blk[i] for i in range(t)) / t
            if soap and rows > b:
                left = torch.diag(left.diagonal())
            if soap and cols > b:
                right = torch.diag(right.diagonal())
            idx = torch.tensor([i * cols + j for i in r for j in c])
            out[idx[:, None], idx[None, :]] = torch.kron(left, right) / left.trace()
    return out


def lam(m: torch.Tensor) -> float:
    return float(torch.linalg.eigvalsh(m.double())[-1])


@pytest.mark.parametrize("b", [2, 3, 4, 8, 16])
def test_shampoo_loss_against_dense_statistics(samples, b: int) -> None:
    g = samples.grads["0.weight"].double()
    expected = max(0.0, 1 - lam(dense_blocked(g, b)) / lam(dense_kronecker(g)))
    assert parameter_losses(samples.grads["0.weight"], SHAMPOO, [b])[0] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("b", [4, 8, 16])
def test_soap_loss_against_dense_statistics(samples, b: int) -> None:
    g = samples.grads["0.weight"].double()  # 10 × 6: at b = 8 the 10-side keeps only its diagonal
    expected = max(0.0, 1 - lam(dense_blocked(g, b, soap=True)) / lam(dense_kronecker(g)))
    assert parameter_losses(samples.grads["0.weight"], SOAP, [b])[0] == pytest.approx(expected, abs=1e-5)
    assert (expected > 0.05) == (b < 10)


def test_vector_loss_is_thors_loss_of_its_full_matrix(samples) -> None:
    """A bias blocked by Shampoo keeps the diagonal blocks of its full matrix (1/T) Σ g gᵀ: THOR's L(F, b)."""
    g = samples.grads["0.bias"]
    full = sum(torch.outer(v, v) for v in g) / g.shape[0]
    assert parameter_losses(g, SHAMPOO, [2, 4, 8]) == pytest.approx(reference_losses(full, [2, 4, 8]), abs=1e-5)


def test_merged_parameter_keeps_everything(samples) -> None:
    """At b >= out·in Shampoo keeps the full matrix of the flattened weight: no loss."""
    assert shampoo_blocks((4, 10), 64).merged == (40,)
    assert parameter_losses(samples.grads["2.weight"], SHAMPOO, [64]) == [0.0]


def test_rank_one_and_iid_gradients() -> None:
    """A rank-1 gradient spread evenly over k × k blocks loses 1 − 1/k²; i.i.d. entries lose nothing."""
    g = torch.ones(1, 8, 8)
    assert parameter_losses(g, SHAMPOO, [2, 4, 8]) == pytest.approx([1 - 1 / 16, 1 - 1 / 4, 0.0], abs=1e-6)
    torch.manual_seed(0)
    iid = torch.randn(20000, 8, 8)
    assert max(parameter_losses(iid, SHAMPOO, [2, 4])) < 0.02


def test_loss_table(samples) -> None:
    table = gradient_loss_table(samples, SHAMPOO, [2, 8])
    assert list(table.columns) == ["parameter", "shape", "2", "8"]
    assert table["shape"].tolist() == ["10x6", "10", "4x10", "4"]
    assert ((table[["2", "8"]] >= 0) & (table[["2", "8"]] <= 1)).all().all()


def test_matrix_view_of_a_kernel() -> None:
    view = matrix_view(torch.randn(2, 3, 4, 5))
    assert view.shape == (3, 20) and view.count == 1


# ---------------------------------------------------------------------------------- refreshes


def spd(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3 * n, generator=gen)
    return x @ x.T / (3 * n)


def test_shampoo_root_inverse_is_the_matrix_power() -> None:
    f = spd(12)
    values, vectors = torch.linalg.eigh(f.double() + 1e-12 * torch.eye(12, dtype=torch.float64))
    expected = vectors @ torch.diag(values.pow(-0.25)) @ vectors.T
    torch.testing.assert_close(shampoo_root_inverse(f, 4).double(), expected, rtol=1e-4, atol=1e-4)


def test_shampoo_root_inverse_lifts_a_singular_factor() -> None:
    v = torch.randn(6, 1)
    out = shampoo_root_inverse(v @ v.T, 2, epsilon=1e-3)
    assert torch.isfinite(out).all()


def test_shampoo_root_inverse_matches_distributed_shampoo() -> None:
    mf = pytest.importorskip("distributed_shampoo.preconditioner.matrix_functions")
    f = spd(16, seed=3)
    theirs = mf.matrix_inverse_root(f, root=Fraction(4), epsilon=1e-12)
    torch.testing.assert_close(shampoo_root_inverse(f, 4, 1e-12), theirs, rtol=1e-4, atol=1e-4)


def test_soap_refresh_converges_to_the_eigenbasis() -> None:
    f = spd(10, seed=1)
    q = torch.linalg.qr(torch.randn(10, 10))[0]
    for _ in range(300):
        q = soap_basis_refresh(f, q)
    off = q.T @ f @ q
    assert (off - torch.diag(off.diagonal())).norm() < 1e-3 * off.norm()
    torch.testing.assert_close(q.T @ q, torch.eye(10), atol=1e-5, rtol=0)
    assert torch.allclose(soap_basis(f).T @ f @ soap_basis(f), torch.diag(torch.linalg.eigvalsh(f).flip(0)),
                          atol=1e-4)


def test_soap_refresh_matches_heavyball() -> None:
    utils = pytest.importorskip("heavyball.utils")
    f = spd(8, seed=2).unsqueeze(0)
    q = torch.linalg.qr(torch.randn(1, 8, 8))[0]
    theirs = [q.clone()]
    with torch.compiler.set_stance("force_eager"):
        utils.get_orthogonal_matrix_QR([f], theirs)
    torch.testing.assert_close(soap_basis_refresh(f, q), theirs[0], rtol=1e-4, atol=1e-5)


def test_rotate_moment() -> None:
    m = torch.randn(4, 5)
    q_old, q_new = torch.linalg.qr(torch.randn(4, 4))[0], torch.linalg.qr(torch.randn(4, 4))[0]
    torch.testing.assert_close(rotate_moment(m, [q_old, None], [q_new, None]), q_new.T @ q_old @ m)
    torch.testing.assert_close(rotate_moment(m, [q_old, None], [q_old, None]), m, atol=1e-5, rtol=0)
    (new, moment), = soap_refresh([([spd(4), None], [q_old, None], m)])
    assert new[1] is None and moment.shape == (4, 5) and math.isfinite(float(moment.sum()))


def test_refresh_timing_counts_every_statistic(samples) -> None:
    from thor_planner.timing.candidates import TimingConfig
    from thor_planner.timing.refresh import time_refresh_candidates

    config = TimingConfig(budget_s=0.01, max_repeats=2)
    rows = time_refresh_candidates(samples, SHAMPOO, [4, 16], device=torch.device("cpu"), config=config)
    assert [r.candidate for r in rows] == [4, 16]
    # 10×6: L 4,4,2 in 2 column chunks, R 4,2 in 3 row chunks; bias 10: 4,4,2; 4×10: L 4 ×3, R 4,4,2; bias 4
    assert rows[0].blocks == {2: 5 + 1 + 1, 4: 7 + 2 + 5 + 1}
    assert rows[1].blocks == {4: 2, 6: 1, 10: 3} and rows[1].gflop == pytest.approx((2 * 64 + 216 + 3000) / 1e9)
    assert all(r.median_s > 0 and 1 <= r.repeats <= 2 for r in rows)
    soap = time_refresh_candidates(samples, SOAP, [16], device=torch.device("cpu"), config=config)
    assert soap[0].blocks == {4: 1, 6: 1, 10: 2}  # the biases are Adam's
