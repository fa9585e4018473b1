"""The one block partition of a Kronecker factor, shared by planner and runtime.

A factor of dimension ``d`` split at ``b`` keeps the diagonal blocks of size ``s = min(b, d)``:
``d // s`` full blocks followed by one smaller block of size ``d % s`` when ``s`` does not divide
``d``. Nothing is padded, so the blocks cover the factor exactly.

The information-loss computation, the timing and the THOR runtime all call :func:`partition`,
:func:`extract_blocks` and :func:`group_by_size`, so the planner measures exactly the blocks that
training inverts.

**Shards** (FSDP2): ``fully_shard`` cuts a parameter's first dimension (a layer's output features,
the dimension of its G factor) into one contiguous band of rows per rank, ``ceil(dim / N)`` rows
each, the last ranks fewer or none (:func:`shard_rows`). A G split *tiles* the shards when no block
crosses a band boundary (:func:`crossed_rows`): each rank then holds whole blocks of its own rows.
:func:`tiling_split` is the constraint, the planner's (``thor-plan profile --fsdp N``) and the
runtime's (``THOR(split=...)`` on a sharded model) alike.

A tensor cut along several dimensions (a parameter blocked as Distributed Shampoo blocks it,
``torch.split`` along every dimension: full chunks first, the remainder last, exactly
:func:`partition`'s sizes) is :func:`tensor_blocks`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Partition:
    """How a factor of dimension ``dim`` is cut into diagonal blocks at split ``split``."""

    dim: int
    split: int

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"Invalid dim={self.dim}: must be >= 1")
        if self.split < 1:
            raise ValueError(f"Invalid split={self.split}: must be >= 1")

    @property
    def block(self) -> int:
        """Size of the full blocks: the split, capped at the factor's dimension."""
        return min(self.split, self.dim)

    @property
    def num_full(self) -> int:
        return self.dim // self.block

    @property
    def remainder(self) -> int:
        """Size of the smaller last block (0 when the block size divides the dimension)."""
        return self.dim % self.block

    def sizes(self) -> list[int]:
        """Block sizes in order along the diagonal."""
        return [self.block] * self.num_full + ([self.remainder] if self.remainder else [])

    def size_counts(self) -> dict[int, int]:
        """Number of blocks of each size."""
        counts = {self.block: self.num_full}
        if self.remainder:
            counts[self.remainder] = counts.get(self.remainder, 0) + 1
        return counts


def partition(dim: int, split: int) -> Partition:
    """The partition of a ``dim``-dimensional factor at split ``split``."""
    return Partition(dim=int(dim), split=int(split))


def extract_blocks(factor: torch.Tensor, part: Partition) -> list[torch.Tensor]:
    """The diagonal blocks of ``factor`` as stacked tensors, full blocks first.

    Returns a list with one ``(num_full, s, s)`` tensor and, when there is a remainder, one
    ``(1, r, r)`` tensor. The full blocks are gathered with one strided view, not a Python loop,
    so a split of 1 on a 4608-dimensional factor costs one copy.
    """
    if factor.shape != (part.dim, part.dim):
        raise ValueError(f"factor of shape {tuple(factor.shape)} does not match dim={part.dim}")
    s, n = part.block, part.num_full
    full = factor[: n * s, : n * s].reshape(n, s, n, s).diagonal(dim1=0, dim2=2)  # (s, s, n)
    blocks = [full.permute(2, 0, 1)]
    if part.remainder:
        blocks.append(factor[n * s :, n * s :].unsqueeze(0))
    return blocks


def assemble_blocks(blocks: list[torch.Tensor], part: Partition) -> torch.Tensor:
    """The dense block-diagonal matrix with the given blocks (inverse of :func:`extract_blocks`)."""
    return torch.block_diag(*[b for stack in blocks for b in stack])


@dataclass
class BlockGroups:
    """Blocks of many factors grouped by size, so each size is one batched call.

    ``stacks[size]`` is a ``(count, size, size)`` tensor; ``index[i]`` lists, for factor ``i``,
    the ``(size, start, count)`` slices of those stacks that hold its blocks in diagonal order.
    """

    stacks: dict[int, torch.Tensor]
    index: list[list[tuple[int, int, int]]]

    def blocks_of(self, i: int) -> list[torch.Tensor]:
        """Factor ``i``'s stacked blocks, in the order :func:`extract_blocks` returns them."""
        return [self.stacks[size][start : start + count] for size, start, count in self.index[i]]

    def map(self, fn) -> "BlockGroups":
        """Apply ``fn`` to every stack (one call per block size) and keep the index."""
        return BlockGroups({size: fn(stack) for size, stack in self.stacks.items()}, self.index)


def group_by_size(factors: list[torch.Tensor], parts: list[Partition], extract=None) -> BlockGroups:
    """Partition every factor and group all blocks of the network by block size.

    ``extract(factor, part)`` returns a factor's stacked blocks; the default is
    :func:`extract_blocks` (dense factors). The runtime passes its unpacker for factors it keeps
    as packed diagonal blocks.
    """
    extract = extract or extract_blocks
    pieces: dict[int, list[torch.Tensor]] = {}
    offsets: dict[int, int] = {}
    index: list[list[tuple[int, int, int]]] = []
    for factor, part in zip(factors, parts, strict=True):
        entry = []
        for stack in extract(factor, part):
            size, count = stack.shape[-1], stack.shape[0]
            pieces.setdefault(size, []).append(stack)
            entry.append((size, offsets.get(size, 0), count))
            offsets[size] = offsets.get(size, 0) + count
        index.append(entry)
    stacks = {size: torch.cat(p) if len(p) > 1 else p[0].contiguous() for size, p in pieces.items()}
    return BlockGroups(stacks, index)


def block_counts(dims: list[int], splits: list[int]) -> dict[int, int]:
    """How many blocks of each size a set of factors has (the shape of the batched work)."""
    counts: dict[int, int] = {}
    for dim, split in zip(dims, splits, strict=True):
        for size, count in partition(dim, split).size_counts().items():
            counts[size] = counts.get(size, 0) + count
    return dict(sorted(counts.items()))


def matmul_right(x: torch.Tensor, blocks: list[torch.Tensor], part: Partition) -> torch.Tensor:
    """``x @ blockdiag(blocks)`` for ``x`` of shape ``(rows, dim)`` without forming the dense matrix."""
    s, n = part.block, part.num_full
    rows = x.shape[0]
    out = torch.empty_like(x)
    head = x[:, : n * s].reshape(rows, n, s)
    out[:, : n * s] = torch.einsum("rns,nst->rnt", head, blocks[0]).reshape(rows, n * s)
    if part.remainder:
        out[:, n * s :] = x[:, n * s :] @ blocks[1][0]
    return out


def matmul_left(blocks: list[torch.Tensor], x: torch.Tensor, part: Partition) -> torch.Tensor:
    """``blockdiag(blocks) @ x`` for ``x`` of shape ``(dim, cols)``."""
    return matmul_right(x.T, [b.transpose(-1, -2) for b in blocks], part).T


def shard_rows(dim: int, shards: int) -> list[tuple[int, int]]:
    """``(offset, rows)`` of each rank's band when FSDP2 shards ``dim`` rows over ``shards`` ranks:
    ``torch.chunk``'s cut, ``ceil(dim / shards)`` rows each, the last ranks fewer, possibly none."""
    if shards < 1:
        raise ValueError(f"Invalid shards={shards}: must be >= 1")
    chunk = -(-dim // shards)
    return [(min(r * chunk, dim), max(0, min(chunk, dim - r * chunk))) for r in range(shards)]


def crossed_rows(part: Partition, bands: list[tuple[int, int]]) -> list[int]:
    """The band boundaries (first rows of the bands after the first) that fall inside a block of
    ``part``: empty when its blocks tile the bands."""
    ends, edge = set(), 0
    for size in part.sizes():
        edge += size
        ends.add(edge)
    return [offset for offset, rows in bands if 0 < offset < part.dim and rows and offset not in ends]


def every_shard_holds_rows(dim: int, shards: int) -> bool:
    """Whether every rank holds at least one of ``dim`` rows (else the layer cannot be tiled)."""
    return all(rows > 0 for _, rows in shard_rows(dim, shards))


def tiling_split(dim: int, shards: int, split: int, allowed=None) -> int | None:
    """The largest split ``<= split`` whose blocks tile the ``shards`` bands of ``dim`` rows, among
    ``allowed`` (e.g. the planner's candidates) or else among all integers (1 always tiles);
    ``None`` when none of ``allowed`` does. A split that tiles already is returned as it is."""
    bands = shard_rows(dim, shards)
    choices = sorted({int(b) for b in allowed if b <= split}, reverse=True) if allowed is not None \
        else [split, *range(min(split, dim), 0, -1)]
    return next((b for b in choices if not crossed_rows(partition(dim, b), bands)), None)


def tensor_blocks(x: torch.Tensor, parts: Sequence[Partition], lead: int = 0) -> list[torch.Tensor]:
    """The blocks of ``x`` cut along each of its dimensions after the first ``lead`` ones.

    Dimension ``lead + d`` is cut by ``parts[d]`` (full chunks of ``parts[d].block``, then the
    remainder). The blocks come as stacks of equally shaped blocks, one stack per *region* (a choice
    of the full chunks or the remainder along every dimension): each stack is
    ``(count, *x.shape[:lead], *block_shape)``, its blocks in C order over the chunk indices. Every
    element of ``x`` lies in exactly one block. One strided view and one copy per region.
    """
    if x.dim() != lead + len(parts) or any(x.shape[lead + d] != p.dim for d, p in enumerate(parts)):
        raise ValueError(f"tensor of shape {tuple(x.shape)} does not match the partitions "
                         f"{[p.dim for p in parts]} after {lead} leading dimensions")
    pieces = [[(0, p.num_full, p.block)] + ([(p.num_full * p.block, 1, p.remainder)] if p.remainder else [])
              for p in parts]
    stacks = []
    for region in itertools.product(*pieces):
        view = x
        for d, (start, count, size) in enumerate(region):
            view = view.narrow(lead + d, start, count * size)
        shape = list(x.shape[:lead]) + [n for _, count, size in region for n in (count, size)]
        view = view.reshape(shape)
        k = len(parts)
        order = [lead + 2 * d for d in range(k)] + list(range(lead)) + [lead + 2 * d + 1 for d in range(k)]
        blocks = view.permute(order).reshape(-1, *x.shape[:lead], *[size for _, _, size in region])
        stacks.append(blocks)
    return stacks
