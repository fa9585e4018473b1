"""How Distributed Shampoo and heavyball's SOAP cut a parameter at a block size: our model of it
(thor_planner.targets) against shapes worked out by hand, and against the libraries' own functions
when they import."""

from __future__ import annotations

import itertools

import pytest
import torch

from thor_planner.partition import partition, tensor_blocks
from thor_planner.targets import TARGETS, shampoo_blocks, soap_blocks, target
from thor_planner.targets.blocking import merge_small_dims, trailing_merge

SHAPES = [(10,), (1,), (7, 1), (1, 7), (10, 6), (6, 10), (16, 1, 3, 3), (32, 16, 3, 3), (5, 3, 3, 3), (3, 5, 2),
          (130, 7), (2, 2, 2, 2)]
SIZES = [2, 3, 4, 8, 16, 64, 1024]


def test_tensor_blocks_cover_every_element_once() -> None:
    x = torch.arange(2 * 5 * 7).reshape(2, 5, 7)
    stacks = tensor_blocks(x, [partition(5, 2), partition(7, 3)], lead=1)
    assert [tuple(s.shape) for s in stacks] == [(4, 2, 2, 3), (2, 2, 2, 1), (2, 2, 1, 3), (1, 2, 1, 1)]
    seen = torch.cat([s.movedim(1, -1).reshape(-1, 2) for s in stacks])
    assert sorted(seen[:, 0].tolist()) == list(range(35))  # batch 0's 35 elements, each once
    assert torch.equal(stacks[0][1], x[:, 0:2, 3:6])  # the blocks in C order over the chunks
    assert torch.equal(stacks[0][2], x[:, 2:4, 0:3])
    assert torch.equal(stacks[3][0], x[:, 4:5, 6:7])


def test_tensor_blocks_refuses_a_mismatch() -> None:
    with pytest.raises(ValueError, match="does not match the partitions"):
        tensor_blocks(torch.zeros(3, 4), [partition(4, 2)], lead=0)


@pytest.mark.parametrize("shape, b, merged, blocks", [
    ((10, 6), 4, (10, 6), [(4, 4), (4, 2), (4, 4), (4, 2), (2, 4), (2, 2)]),
    ((4, 3), 16, (12,), [(12,)]),                              # out·in <= b: one full-matrix vector
    ((16, 1, 3, 3), 64, (16, 9), [(16, 9)]),                   # size-1 dropped, kernel merged
    ((16, 1, 3, 3), 256, (144,), [(144,)]),
    ((32, 16, 3, 3), 64, (32, 16, 9), [(32, 16, 9)]),
    ((32, 16, 3, 3), 256, (32, 144), [(32, 144)]),
    ((5, 3, 3, 3), 16, (15, 9), [(15, 9)]),                    # fan-out merged with fan-in: Shampoo does
    ((130,), 64, (130,), [(64,), (64,), (2,)]),
])
def test_shampoo_blocks_by_hand(shape, b, merged, blocks) -> None:
    cut = shampoo_blocks(shape, b)
    assert cut.merged == merged
    assert list(cut.block_shapes()) == blocks
    assert all(cut.preconditioned) and cut.count == len(blocks)


@pytest.mark.parametrize("shape, b, merged, kept", [
    ((10, 6), 8, (10, 6), (False, True)),      # 10 > 8: identity on that side, no split
    ((10, 6), 16, (10, 6), (True, True)),
    ((32, 16, 3, 3), 64, (32, 16, 9), (True, True, True)),
    ((32, 16, 3, 3), 256, (32, 144), (True, True)),
    ((128, 64, 3, 3), 1024, (128, 576), (True, True)),
    ((10,), 64, (10,), (False,)),              # vectors: Adam (precondition_1d=False)
    ((7, 1), 64, (7,), (False,)),
    ((1, 7), 64, (1, 7), (False, True)),       # a side of size 1 keeps no statistic
])
def test_soap_blocks_by_hand(shape, b, merged, kept) -> None:
    cut = soap_blocks(shape, b)
    assert cut.merged == merged and cut.preconditioned == kept and cut.count == 1


def test_factor_counts_and_summary() -> None:
    cut = shampoo_blocks((10, 6), 4)
    # L of every block (sizes 4, 4, 2 in each of 2 column chunks), R (sizes 4, 2 in each of 3 row chunks)
    assert cut.factor_counts() == {4: 2 * 2 + 3, 2: 2 + 3}
    assert cut.summary() == "2 × 4×4, 2 × 4×2, 2×4, 2×2"
    assert soap_blocks((384, 128), 256).summary() == "384×128: 384 identity"
    assert soap_blocks((128,), 256).summary() == "128: first-order"
    assert soap_blocks((384, 128), 256).factor_counts() == {128: 1}


def test_registry() -> None:
    assert list(TARGETS) == ["thor", "shampoo", "soap"]
    assert not target("thor").peer and target("shampoo").peer and target("soap").peer
    assert target("shampoo").block_kwarg == "max_preconditioner_dim"
    assert target("soap").block_kwarg == "max_precond_dim"
    with pytest.raises(ValueError, match="Unknown plan target 'adam': choose one of thor, shampoo, soap"):
        target("adam")


def test_merge_helpers() -> None:
    assert merge_small_dims((1, 1), 8) == (1,)
    assert merge_small_dims((0, 3), 8) == (0,)
    assert trailing_merge((5,), 8) == (5,)
    assert trailing_merge((4, 2, 3), 8) == (4, 6)


def test_shampoo_blocks_match_distributed_shampoo() -> None:
    utils = pytest.importorskip("distributed_shampoo.utils.shampoo_utils")
    for shape, b in itertools.product(SHAPES, SIZES):
        merged = utils.merge_small_dims(shape, b, 1)
        assert shampoo_blocks(shape, b).merged == tuple(merged), (shape, b)
        theirs = [tuple(t.shape) for t in utils.multi_dim_split(torch.zeros(merged), b)]
        assert list(shampoo_blocks(shape, b).block_shapes()) == theirs, (shape, b)


def test_soap_blocks_match_heavyball() -> None:
    utils = pytest.importorskip("heavyball.utils")
    for shape, b in itertools.product(SHAPES, SIZES):
        grad = torch.randn(shape)
        merged = utils.dim_merger(grad, b)
        cut = soap_blocks(shape, b)
        assert cut.merged == tuple(merged.shape), (shape, b)
        state: dict = {}
        with torch.compiler.set_stance("force_eager"):  # heavyball compiles its helpers; eager is enough here
            utils.init_preconditioner(merged.unsqueeze(0), state, b, False)  # its leading bucket axis
        theirs = tuple(m is not None for m in state["GG"])
        ours = cut.preconditioned if cut.preconditions else (False,)
        assert ours == theirs or (not cut.preconditions and not any(theirs)), (shape, b, ours, theirs)
