import pytest
import torch

from thor_planner.infoloss import factor_losses, lambda_max, loss_table, reference_losses

CANDIDATES = [1, 16, 32, 64, 128, 256, 512]


def correlated(dim, rows=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = rows or 2 * dim
    x = torch.randn(rows, dim, generator=g) * torch.linspace(0.2, 2.0, dim) + torch.randn(rows, 1, generator=g)
    return x.T @ x / rows


def test_block_diagonal_factor_has_zero_loss():
    blocks = [correlated(16, seed=i) for i in range(4)]
    f = torch.block_diag(*blocks)
    losses = factor_losses(f, [1, 16, 32, 64])
    assert losses[1:] == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)
    assert losses[0] > 0.1


def test_known_coupled_case():
    # [[1, c], [c, 1]] has λmax = 1 + c; its diagonal part has λmax = 1: loss = c / (1 + c).
    c = 0.6
    f = torch.tensor([[1.0, c], [c, 1.0]])
    assert factor_losses(f, [1, 2]) == pytest.approx([c / (1 + c), 0.0], abs=1e-7)


@pytest.mark.parametrize("dim", [40, 300, 700])
def test_matches_float64_reference(dim):
    f = correlated(dim, rows=dim // 2 + 10, seed=dim)  # rank-deficient, like late ResNet layers
    cands = [b for b in CANDIDATES if b < dim]
    fast, ref = factor_losses(f, cands), reference_losses(f, cands)
    assert max(abs(a - b) for a, b in zip(fast, ref)) < 1e-3


def test_lanczos_path_matches_eigvalsh_for_large_blocks():
    stack = torch.stack([correlated(400, seed=s) for s in range(3)])
    ref = torch.linalg.eigvalsh(stack.double())[:, -1]
    torch.testing.assert_close(lambda_max(stack), ref, rtol=1e-5, atol=0)


def test_loss_fraction_is_monotone_over_power_of_two_candidates():
    # Nested partitions (powers of two) can only lose less as b grows.
    for seed in range(3):
        losses = factor_losses(correlated(300, seed=seed), CANDIDATES)
        assert all(a >= b - 1e-9 for a, b in zip(losses[1:], losses[2:]))
        assert losses[-1] == 0.0 or CANDIDATES[-1] < 300


def test_loss_table_layout():
    f = correlated(20)
    table = loss_table([("fc", "linear", "a", f), ("fc", "linear", "g", torch.zeros(3, 3))], [1, 16])
    assert list(table.columns) == ["layer", "kind", "factor", "dim", "1", "16"]
    assert table.loc[1, ["1", "16"]].tolist() == [0.0, 0.0]  # an all-zero factor loses nothing


def warm_start_trap(s=512, seed=0):
    """Two s-blocks coupled only through u (block 1's top eigenvector) and v (block 2's *second*
    eigenvector): the factor's top eigenvector is a mix of u and v, so its restriction to block 2 is
    block 2's second eigenvector. Block spectra: block 1 top 0.7; block 2 top 0.762, second 0.719."""
    g = torch.Generator().manual_seed(seed)
    q1, _ = torch.linalg.qr(torch.randn(s, s, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(s, s, generator=g, dtype=torch.float64))
    rest = torch.linspace(0.5, 0.0, s - 2, dtype=torch.float64)
    l1 = torch.cat([torch.tensor([0.7, 0.5], dtype=torch.float64), rest])
    l2 = torch.cat([torch.tensor([0.762, 0.719], dtype=torch.float64), rest])
    f = torch.block_diag((q1 * l1) @ q1.T, (q2 * l2) @ q2.T)
    zeros = torch.zeros(s, dtype=torch.float64)
    u, v = torch.cat([q1[:, 0], zeros]), torch.cat([zeros, q2[:, 1]])
    f = f + 0.2904 * (torch.outer(u, v) + torch.outer(v, u))
    return f, q2[:, 1]


def test_warm_started_lanczos_does_not_lock_onto_a_blocks_second_eigenvector():
    f, second = warm_start_trap()
    values, vectors = torch.linalg.eigh(f)
    top = vectors[:, -1]
    assert abs(float((top[512:] / top[512:].norm()) @ second)) > 1 - 1e-9  # the trap is set
    full = float(values[-1])
    blocks = max(float(torch.linalg.eigvalsh(f[:512, :512])[-1]), float(torch.linalg.eigvalsh(f[512:, 512:])[-1]))
    ref = 1 - blocks / full  # float64 eigvalsh: block 2's top eigenvalue, 0.762
    assert ref == pytest.approx(0.238, abs=1e-3) and 1 - 0.719 / full == pytest.approx(0.281, abs=1e-3)
    assert factor_losses(f.float(), [512])[0] == pytest.approx(ref, abs=1e-4)
