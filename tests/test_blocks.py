"""THOR's packed block-diagonal factors and block products against dense references."""

from __future__ import annotations

import pytest
import torch

from thor_planner.optim.blocks import (
    DENSE_APPLY_MACS,
    diagonal_index,
    for_apply,
    group_packed,
    left,
    pack,
    packed_gram,
    packed_size,
    right,
    unpack,
)
from thor_planner.partition import extract_blocks, group_by_size, partition


def block_mask(dim: int, split: int) -> torch.Tensor:
    return torch.block_diag(*[torch.ones(s, s, dtype=torch.float64) for s in partition(dim, split).sizes()])


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize(("dim", "split"), [(37, 4), (32, 8), (10, 16), (1, 1), (9, 1)])
def test_packed_gram_is_the_block_diagonal_of_the_gram(dim, split, dense) -> None:
    part = partition(dim, split)
    rows = torch.randn(50, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(dim))
    packed = packed_gram(rows, part, dense=dense)
    assert packed.shape == (packed_size(part),)
    dense = rows.T @ rows
    blocks = unpack(packed, part)
    for got, want in zip(blocks, extract_blocks(dense, part), strict=True):
        torch.testing.assert_close(got, want)
    assert torch.equal(pack(blocks), packed)
    torch.testing.assert_close(packed[diagonal_index(part)].sum(), dense.trace())
    groups, ref = group_packed([packed], [part]), group_by_size([dense], [part])
    assert groups.index == ref.index
    for size in ref.stacks:
        torch.testing.assert_close(groups.stacks[size], ref.stacks[size])


@pytest.mark.parametrize(("dim", "split", "other"), [(37, 4, 5), (32, 8, 3), (300, 16, 40), (300, 32, 512), (300, 1, 40), (600, 1, 512)])
def test_left_and_right_equal_dense_products(dim, split, other) -> None:
    part = partition(dim, split)
    gen = torch.Generator().manual_seed(split)
    dense = torch.randn(dim, dim, dtype=torch.float64, generator=gen) * block_mask(dim, split)
    blocks = extract_blocks(dense, part)
    x = torch.randn(dim, other, dtype=torch.float64, generator=gen)
    batched, applied = [b.clone() for b in blocks], for_apply(blocks, part, other)
    dense_path = other * dim * (dim - part.block) <= DENSE_APPLY_MACS
    assert (applied[0].shape == (1, dim, dim)) == dense_path
    for b in (batched, applied):
        torch.testing.assert_close(left(b, x, part), dense @ x)
        torch.testing.assert_close(right(x.T.contiguous(), b, part), x.T @ dense)
