"""Block-diagonal factors held packed: only the blocks THOR inverts are ever computed or stored.

THOR uses nothing of a factor but its diagonal blocks (at the layer's split) and its trace, so the
runtime captures ``A`` and ``G`` block by block: for inputs ``rows`` of shape ``(R, d)`` the full
blocks cost one batched matmul, ``R·d·s`` multiply-adds instead of ``R·d²`` for the dense
``rowsᵀ rows``, and the running averages, the finiteness checks and the checkpoints shrink from
``d²`` to ``d·s`` numbers. A packed factor is one 1-D tensor: the ``num_full`` blocks of size
``s`` row-major one after the other, then the ``r × r`` remainder block (the partition of
:mod:`thor_planner.partition`). At split = dim it is exactly the flattened dense factor, computed
by the same ``rowsᵀ rows``.
"""

from __future__ import annotations

import functools

import torch

from thor_planner.partition import BlockGroups, Partition, group_by_size


def packed_size(part: Partition) -> int:
    return part.num_full * part.block**2 + part.remainder**2


def packed_gram(rows: torch.Tensor, part: Partition, *, dense: bool = False) -> torch.Tensor:
    """The diagonal blocks of ``rowsᵀ rows`` (``rows``: ``(R, dim)``), packed.

    ``dense=False``: one batched product of the column blocks (``R·d·s`` multiply-adds);
    ``dense=True``: one ``d × d`` GEMM and its diagonal blocks taken out (``R·d²``, but a single large
    GEMM, which is faster on a GPU than the batched product of tall, skinny operands).
    """
    s, n, r = part.block, part.num_full, part.remainder
    if n == 1 and r == 0:
        return (rows.T @ rows).reshape(-1)
    if s == 1:  # 1×1 blocks: the Gram's diagonal, one elementwise pass (not d batched 1×1 products)
        return (rows * rows).sum(0)
    if dense:
        full = rows.T @ rows
        head = full[: n * s, : n * s].reshape(n, s, n, s).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
        blocks = [head.reshape(-1)] + ([full[n * s :, n * s :].reshape(-1)] if r else [])
        return torch.cat(blocks)
    head = rows[:, : n * s].reshape(rows.shape[0], n, s).transpose(0, 1)  # (n, R, s)
    full = torch.bmm(head.transpose(1, 2), head).reshape(-1)
    if not r:
        return full
    tail = rows[:, n * s :]
    return torch.cat([full, (tail.T @ tail).reshape(-1)])


def unpack(packed: torch.Tensor, part: Partition) -> list[torch.Tensor]:
    """Views of the stacked blocks, as :func:`~thor_planner.partition.extract_blocks` returns them."""
    s, n, r = part.block, part.num_full, part.remainder
    blocks = [packed[: n * s * s].view(n, s, s)]
    if r:
        blocks.append(packed[n * s * s :].view(1, r, r))
    return blocks


def pack(blocks: list[torch.Tensor]) -> torch.Tensor:
    """The packed factor holding ``blocks`` (the inverse of :func:`unpack`)."""
    return torch.cat([b.reshape(-1) for b in blocks]) if len(blocks) > 1 else blocks[0].reshape(-1).clone()


def diagonal_index(part: Partition) -> torch.Tensor:
    """Positions of the factor's diagonal entries in its packed form (for traces)."""
    s, n, r = part.block, part.num_full, part.remainder
    full = (torch.arange(n)[:, None] * s * s + torch.arange(s) * (s + 1)).reshape(-1)
    return torch.cat([full, n * s * s + torch.arange(r) * (r + 1)])


@functools.lru_cache(maxsize=None)
def _diagonal_on(part: Partition, device: torch.device) -> torch.Tensor:
    return diagonal_index(part).to(device)


def packed_trace(packed: torch.Tensor, part: Partition) -> torch.Tensor:
    """The factor's trace (float64, left on the device), from its packed form."""
    return packed[_diagonal_on(part, packed.device)].double().sum()


def group_packed(factors: list[torch.Tensor], parts: list[Partition]) -> BlockGroups:
    """All blocks of packed factors grouped by block size (:func:`partition.group_by_size`)."""
    return group_by_size(factors, parts, extract=unpack)


#: Multiply-adds a dense product may waste on the zeros off the diagonal blocks and still beat the
#: batched one (about 20 µs of one CPU core; a batched product costs a few small-kernel launches).
DENSE_APPLY_MACS = 1_000_000


def for_apply(blocks: list[torch.Tensor], part: Partition, other: int) -> list[torch.Tensor]:
    """Copies of inverse ``blocks`` as :func:`left` / :func:`right` will apply them to a gradient whose
    other side has ``other`` entries: the blocks, or one dense block-diagonal matrix when that wastes
    at most :data:`DENSE_APPLY_MACS` multiply-adds (small factors: one matmul beats the batched path)."""
    if blocks[0].shape[-1] != part.dim and other * part.dim * (part.dim - part.block) <= DENSE_APPLY_MACS:
        return [torch.block_diag(*[b for stack in blocks for b in stack]).unsqueeze(0)]
    return [b.clone() for b in blocks]


def left(blocks: list[torch.Tensor], x: torch.Tensor, part: Partition) -> torch.Tensor:
    """``blockdiag(blocks) @ x`` for ``x`` of shape ``(dim, cols)``."""
    s, n = part.block, part.num_full
    if blocks[0].shape[-1] == part.dim:  # one block (split >= dim, or made dense by for_apply)
        return blocks[0][0] @ x
    if s == 1:  # a diagonal: scale the rows
        return x * blocks[0].reshape(-1, 1)
    out = x.new_empty(x.shape)
    torch.bmm(blocks[0], x[: n * s].reshape(n, s, x.shape[1]), out=out[: n * s].view(n, s, x.shape[1]))
    if len(blocks) > 1:
        out[n * s :] = blocks[1][0] @ x[n * s :]
    return out


def right(x: torch.Tensor, blocks: list[torch.Tensor], part: Partition) -> torch.Tensor:
    """``x @ blockdiag(blocks)`` for ``x`` of shape ``(rows, dim)``.

    The batched product reads and writes strided views (block ``i`` is columns ``i·s … i·s+s−1``
    of every row), so no transposed copy of ``x`` or of the result is made.
    """
    s, n = part.block, part.num_full
    if blocks[0].shape[-1] == part.dim:
        return x @ blocks[0][0]
    if s == 1:  # a diagonal: scale the columns
        return x * blocks[0].reshape(1, -1)
    rows = x.shape[0]
    out = x.new_empty(x.shape)
    torch.bmm(x[:, : n * s].reshape(rows, n, s).transpose(0, 1), blocks[0],
              out=out[:, : n * s].view(rows, n, s).transpose(0, 1))
    if len(blocks) > 1:
        out[:, n * s :] = x[:, n * s :] @ blocks[1][0]
    return out
