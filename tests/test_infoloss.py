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
