import pytest
import torch

from thor_planner.inversion.backends import BACKENDS, invert_groups, invert_stack
from thor_planner.partition import (
    assemble_blocks, block_counts, extract_blocks, group_by_size, matmul_left, matmul_right, partition,
)


def spd(d, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(d, d + 3, generator=g, dtype=torch.float64)
    return x @ x.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def mask(part):
    return torch.block_diag(*[torch.ones(s, s, dtype=torch.float64) for s in part.sizes()])


@pytest.mark.parametrize("dim,split,sizes", [
    (10, 4, [4, 4, 2]), (8, 8, [8]), (7, 16, [7]), (3, 1, [1, 1, 1]), (4608, 2048, [2048, 2048, 512]),
])
def test_partition_sizes_cover_the_factor(dim, split, sizes):
    part = partition(dim, split)
    assert part.sizes() == sizes
    assert sum(part.sizes()) == dim


@pytest.mark.parametrize("dim,split", [(10, 4), (12, 3), (9, 1), (5, 8), (33, 8)])
def test_blocks_are_the_block_diagonal_part(dim, split):
    f = spd(dim)
    part = partition(dim, split)
    assert torch.equal(assemble_blocks(extract_blocks(f, part), part), f * mask(part))


@pytest.mark.parametrize("dim,split", [(10, 4), (9, 1), (16, 16)])
def test_block_matmuls_equal_dense(dim, split):
    f = spd(dim)
    part = partition(dim, split)
    blocks = extract_blocks(f, part)
    dense = f * mask(part)
    x = torch.randn(5, dim, dtype=torch.float64)
    torch.testing.assert_close(matmul_right(x, blocks, part), x @ dense)
    torch.testing.assert_close(matmul_left(blocks, x.T, part), dense @ x.T)


def test_group_by_size_batches_all_factors_and_maps_back():
    factors = [spd(10, 1), spd(20, 2), spd(33, 3)]
    parts = [partition(f.shape[0], 8) for f in factors]
    groups = group_by_size(factors, parts)
    assert {s: t.shape[0] for s, t in groups.stacks.items()} == {8: 7, 2: 1, 4: 1, 1: 1}
    assert block_counts([10, 20, 33], [8, 8, 8]) == {1: 1, 2: 1, 4: 1, 8: 7}
    for i, (f, p) in enumerate(zip(factors, parts)):
        assert torch.equal(assemble_blocks(groups.blocks_of(i), p), f * mask(p))


@pytest.mark.parametrize("backend", [b for b in sorted(BACKENDS) if b != "cupy"])  # cupy: CUDA tensors only
def test_every_backend_inverts_damped_blocks(backend):
    factors = [spd(24, 4).float(), spd(17, 5).float()]
    parts = [partition(f.shape[0], 8) for f in factors]
    inv = invert_groups(group_by_size(factors, parts), 0.1, backend)
    for i, (f, p) in enumerate(zip(factors, parts)):
        ref = torch.linalg.inv((f.double() * mask(p)) + 0.1 * torch.eye(f.shape[0], dtype=torch.float64))
        torch.testing.assert_close(assemble_blocks(inv.blocks_of(i), p).double(), ref, rtol=1e-4, atol=1e-5)


def test_failed_blocks_are_retried_and_never_nan():
    good = spd(4).float()
    indefinite = -torch.eye(4)  # Cholesky fails in float32; a larger damping makes it definite
    nan = torch.full((4, 4), float("nan"))
    out = invert_stack(torch.stack([good, indefinite, nan]), 0.5)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0].double(), torch.linalg.inv(good.double() + 0.5 * torch.eye(4, dtype=torch.float64)),
                               rtol=1e-5, atol=1e-6)
    assert torch.allclose(out[1] @ (indefinite + 5.0 * torch.eye(4)), torch.eye(4), atol=1e-5)  # damping ×10
    assert torch.equal(out[2], torch.eye(4) / 0.5)
