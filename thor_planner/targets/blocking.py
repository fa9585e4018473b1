"""How Distributed Shampoo and heavyball's SOAP cut a parameter into preconditioned blocks at a
block size ``b``, written from their documented behaviour (and tested against the libraries when
they import); every cut goes through :func:`thor_planner.partition.partition`.

**Distributed Shampoo** (``max_preconditioner_dim = b``):

1. *Merge small dimensions* (its ``merge_small_dims``, with the default single-device
   ``target_parameter_dimensionality = 1``): dimensions of size 1 are dropped, then, from the last
   dimension to the first, a dimension is multiplied into its right-hand neighbour while the product
   stays ``<= b``. A (out, in) weight with ``out·in <= b`` becomes one vector of ``out·in`` entries
   (one full-matrix statistic), a (64, 64, 3, 3) kernel becomes (64, 576) at ``b >= 576``.
2. *Split every dimension* into chunks of ``b`` (``torch.split``: full chunks, then the remainder,
   which is :func:`~thor_planner.partition.partition`'s cut). A (out, in) weight is a grid of blocks
   of at most ``b × b``.
3. Every block keeps one statistic per dimension (a 2-D block ``G_b``: ``L = Σ G_b G_bᵀ`` over its
   own columns only, ``R = Σ G_bᵀ G_b`` over its own rows only) and refreshes each with a root inverse.

**SOAP** (heavyball 3.2.1, ``max_precond_dim = b``, defaults ``merge_dims=True``,
``precondition_1d=False``, ``split=False``):

1. *Merge trailing dimensions* (its ``dim_merger``): the first (fan-out) dimension is kept, the
   others are multiplied together from the last one while the product stays ``<= b``
   ((128, 64, 3, 3) → (128, 576) when ``b >= 576``).
2. *No split*: the parameter is one block. A dimension larger than ``b`` (or of size 1) gets **no**
   statistic — identity on that side, where Adam's diagonal second moment is all it has.
3. One-dimensional parameters (biases, norms) are never preconditioned: Adam at every ``b``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

from thor_planner.partition import Partition, partition


@dataclass(frozen=True)
class ParamBlocks:
    """A parameter as an optimizer sees it at one block size.

    ``merged``: the shape it is viewed as; ``parts``: the cut of each merged dimension (one block
    along a dimension that is not split); ``preconditioned``: whether that dimension of every block
    keeps a statistic (``False``: identity on that side).
    """

    shape: tuple[int, ...]
    merged: tuple[int, ...]
    parts: tuple[Partition, ...]
    preconditioned: tuple[bool, ...]

    @property
    def count(self) -> int:
        """How many blocks."""
        return math.prod(len(p.sizes()) for p in self.parts)

    @property
    def preconditions(self) -> bool:
        """Whether any block keeps any statistic (else the optimizer's step is its first-order one)."""
        return any(self.preconditioned)

    def block_shapes(self) -> Iterator[tuple[int, ...]]:
        """Every block's shape, in C order over the chunks."""
        return itertools.product(*(p.sizes() for p in self.parts))

    def factor_counts(self) -> dict[int, int]:
        """How many statistics (square matrices) of each size the blocks keep."""
        counts: dict[int, int] = {}
        for d, (part, kept) in enumerate(zip(self.parts, self.preconditioned)):
            if not kept:
                continue
            others = math.prod(len(p.sizes()) for i, p in enumerate(self.parts) if i != d)
            for size, n in part.size_counts().items():
                counts[size] = counts.get(size, 0) + n * others
        return dict(sorted(counts.items()))

    def summary(self) -> str:
        """``6 × 128×128`` (blocks), ``384×128: 384 identity`` (SOAP sides left out)."""
        shapes: dict[tuple[int, ...], int] = {}
        for s in self.block_shapes():
            shapes[s] = shapes.get(s, 0) + 1
        text = ", ".join(f"{n} × {'×'.join(map(str, s))}" if n > 1 else "×".join(map(str, s))
                         for s, n in shapes.items())
        left = [str(d) for d, kept in zip(self.merged, self.preconditioned) if not kept]
        if not self.preconditions:
            return f"{text}: first-order"
        return text + (f": {', '.join(left)} identity" if left else "")


def merge_small_dims(shape: tuple[int, ...], threshold: int) -> tuple[int, ...]:
    """Distributed Shampoo's merge of small dimensions (target dimensionality 1), see the module doc."""
    if 0 in shape:
        return (0,)
    dims = [d for d in reversed(shape) if d != 1] or [1]
    merged = [dims[0]]
    for d in dims[1:]:
        if merged[-1] * d <= threshold:
            merged[-1] *= d
        else:
            merged.append(d)
    return tuple(reversed(merged))


def shampoo_blocks(shape: tuple[int, ...], b: int) -> ParamBlocks:
    """A parameter blocked by Distributed Shampoo at ``max_preconditioner_dim = b``."""
    merged = merge_small_dims(tuple(shape), b)
    return ParamBlocks(tuple(shape), merged, tuple(partition(d, b) for d in merged), (True,) * len(merged))


def trailing_merge(shape: tuple[int, ...], threshold: int) -> tuple[int, ...]:
    """heavyball's ``dim_merger`` without splitting: the first dimension kept, the others merged
    from the last while the product stays ``<= threshold``."""
    if len(shape) <= 1:
        return tuple(shape) or (1,)
    merged, cumulative = [], 1
    for d in reversed(shape[1:]):
        if cumulative * d > threshold:
            if cumulative > 1:
                merged.append(cumulative)
                cumulative = d
            else:
                merged.append(d)
                cumulative = 1
        else:
            cumulative *= d
    if cumulative > 1:
        merged.append(cumulative)
    return (shape[0], *reversed(merged))


def soap_blocks(shape: tuple[int, ...], b: int) -> ParamBlocks:
    """A parameter as heavyball's SOAP preconditions it at ``max_precond_dim = b`` (one block)."""
    merged = trailing_merge(tuple(shape), b)
    one_dim = len(merged) < 2 or math.prod(shape) <= 1
    kept = tuple(not one_dim and 1 < d <= b for d in merged)
    return ParamBlocks(tuple(shape), merged, tuple(partition(d, d) for d in merged), kept)
