"""A cost model of block inversion on one device, built from a device profile's measurements.

Per (backend, block size) the profile holds the median seconds of one batched call at several
block counts. The time at any count is interpolated between those points in log(count)–log(time)
(batched kernels are far from linear in the count: launch-bound at small counts, cache-bound at
large ones); above the largest measured count it grows by the last segment's cost per extra
block (in proportion to the count when that is not positive or there is one point). A cell without
points falls back to its least-squares line ``fixed_s + per_block_s · count`` (:func:`fit_linear`,
stored in the profile as a summary). Between measured block sizes, the two neighbours' times at the
same count are interpolated in log(size)–log(time); above the largest measured size the last two
sizes' log–log slope is extended; below the smallest measured size above 1 the smallest one is
used (such blocks are overhead-bound). Size 1 has its own cell (a reciprocal, whatever the backend).

The whole-network refresh, as :func:`timing.time_candidates` measures it, is predicted as
``Σ over sizes time(backend_s, s, count_s) + grouping``, where grouping is
:func:`partition.group_by_size` (slicing every factor, copying its blocks into per-size stacks):
``per_factor_s · factors + per_row_s · narrow rows + per_byte_s · bytes + per_large_byte_s ·
large-stack bytes``. Block rows narrower than a 64-byte line (s < 16) each cost a line read;
stacks of ≥ :data:`LARGE_STACK_BYTES` are fresh memory each time on CPU (glibc serves allocations
above its 32 MiB mmap threshold with new pages, so every byte also costs a page fault). The four
coefficients are fitted by non-negative least squares from timed groupings of synthetic factors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from thor_planner.inversion.backends import DEFAULT_BACKEND

_TINY = 1e-12


def fit_linear(counts: Sequence[float], seconds: Sequence[float]) -> tuple[float, float]:
    """``(fixed, per_block)`` minimising ``Σ ((fixed + per_block·c − t) / t)²``, both ≥ 0.

    One measurement gives ``(0, t/c)``. Exact data (``t = f + p·c``) is recovered exactly.
    """
    if len(counts) != len(seconds) or not counts:
        raise ValueError("fit_linear needs as many counts as seconds, at least one")
    if len(counts) == 1 or len(set(counts)) == 1:
        return 0.0, sum(t / c for c, t in zip(counts, seconds)) / len(counts)
    w = [1.0 / t for t in seconds]  # rows scaled by 1/t: minimise relative errors
    a = [(wi, wi * c) for wi, c in zip(w, counts)]
    b = [wi * t for wi, t in zip(w, seconds)]
    s11 = sum(x * x for x, _ in a)
    s12 = sum(x * y for x, y in a)
    s22 = sum(y * y for _, y in a)
    r1 = sum(x * bi for (x, _), bi in zip(a, b))
    r2 = sum(y * bi for (_, y), bi in zip(a, b))
    det = s11 * s22 - s12 * s12
    fixed, per_block = (s22 * r1 - s12 * r2) / det, (s11 * r2 - s12 * r1) / det
    if per_block < 0:
        return sum(bi * x for (x, _), bi in zip(a, b)) / s11, 0.0
    if fixed < 0:
        return 0.0, r2 / s22
    return fixed, per_block


@dataclass(frozen=True)
class CellFit:
    """One backend at one block size: measured ``(counts, seconds)`` points and their linear fit."""

    fixed_s: float
    per_block_s: float
    counts: tuple[int, ...] = ()
    seconds: tuple[float, ...] = ()

    def time(self, count: float) -> float:
        """Seconds of one batched call of ``count`` blocks."""
        cs, ts = self.counts, self.seconds
        if not cs:
            return self.fixed_s + self.per_block_s * count
        if count <= cs[0]:
            return ts[0]
        if count >= cs[-1]:  # beyond: the last segment's cost per extra block (≥ 0), else proportional
            slope = (ts[-1] - ts[-2]) / (cs[-1] - cs[-2]) if len(cs) > 1 else 0.0
            return ts[-1] + (slope if slope > 0 else ts[-1] / cs[-1]) * (count - cs[-1])
        i = next(k for k in range(1, len(cs)) if cs[k] >= count)
        return _loglerp(cs[i - 1], ts[i - 1], cs[i], ts[i], count)


def _loglerp(x0: float, y0: float, x1: float, y1: float, x: float) -> float:
    ly0, ly1 = math.log(max(y0, _TINY)), math.log(max(y1, _TINY))
    t = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
    return math.exp(ly0 + t * (ly1 - ly0))


LARGE_STACK_BYTES = 32 * 2**20


def grouping_features(factors: int, counts: Mapping[int, int]) -> tuple[float, float, float, float]:
    """``(factors, narrow rows, bytes in stacks < 32 MiB, bytes in stacks ≥ 32 MiB)`` of a grouping."""
    rows = float(sum(c * s for s, c in counts.items() if s < 16))
    sizes = {s: 4.0 * c * s * s for s, c in counts.items()}
    small = sum(v for v in sizes.values() if v < LARGE_STACK_BYTES)
    return float(factors), rows, small, sum(sizes.values()) - small


def nonnegative_lstsq(rows: Sequence[Sequence[float]], targets: Sequence[float]) -> list[float]:
    """Least squares on relative errors (rows scaled by 1/target) with every coefficient ≥ 0
    (negative ones are dropped and the rest refitted)."""
    import torch

    x = torch.tensor(rows, dtype=torch.float64)
    y = torch.tensor(targets, dtype=torch.float64)
    x, y = x / y[:, None], torch.ones_like(y)
    active = list(range(x.shape[1]))
    coef = torch.zeros(x.shape[1], dtype=torch.float64)
    while active:
        sol = torch.linalg.lstsq(x[:, active], y[:, None], driver="gelsd").solution.flatten()
        if bool((sol >= 0).all()):
            coef[active] = sol
            break
        active = [a for a, v in zip(active, sol.tolist()) if v > 0]
    return coef.tolist()


@dataclass(frozen=True)
class GroupingCost:
    """Seconds of :func:`partition.group_by_size` (see the module docstring)."""

    per_factor_s: float = 0.0
    per_row_s: float = 0.0
    per_byte_s: float = 0.0
    per_large_byte_s: float = 0.0

    def seconds(self, factors: int, counts: Mapping[int, int]) -> float:
        f, rows, small, large = grouping_features(factors, counts)
        return self.per_factor_s * f + self.per_row_s * rows + self.per_byte_s * small \
            + (self.per_byte_s + self.per_large_byte_s) * large


class CostModel:
    """Predicted seconds of batched inversions and whole-network refreshes on one device."""

    def __init__(self, fits: Mapping[str, Mapping[int, CellFit]], grouping: GroupingCost = GroupingCost(),
                 limits: Mapping[str, int] | None = None):
        """``limits[name]``: the smallest size where ``name`` was excluded (inaccurate) or pruned; the
        model gives no prediction for it at that size or above."""
        self.fits = {name: dict(sorted(cells.items())) for name, cells in fits.items() if cells}
        self.grouping = grouping
        self.limits = dict(limits or {})

    @property
    def backends(self) -> list[str]:
        return list(self.fits)

    def usable(self, backend: str, size: int) -> bool:
        """Whether the model can predict ``backend`` at ``size`` (has data, below its limit)."""
        cells = self.fits.get(backend)
        if not cells or (size > 1 and size >= self.limits.get(backend, math.inf)):
            return False
        return size in cells or (size > 1 and any(s > 1 for s in cells))

    def predict(self, backend: str, size: int, count: int) -> float | None:
        """Seconds of one batched call of ``count`` blocks of ``size``, or ``None`` without data."""
        if not self.usable(backend, size):
            return None
        cells = self.fits[backend]
        if size in cells:
            return cells[size].time(count)
        sizes = [s for s in cells if s > 1]
        if size < sizes[0]:
            return cells[sizes[0]].time(count)
        hi = min((s for s in sizes if s > size), default=None)
        if hi is None:  # above the largest measured size: extend the last log–log slope
            if len(sizes) < 2:
                return cells[sizes[-1]].time(count) * (size / sizes[-1]) ** 3
            lo, hi = sizes[-2], sizes[-1]
        else:
            lo = max(s for s in sizes if s < size)
        return _loglerp(lo, cells[lo].time(count), hi, cells[hi].time(count), size)

    def best(self, size: int, count: int, names: Sequence[str] | None = None) -> tuple[str, float]:
        """The backend with the smallest predicted time at (``size``, ``count``) and that time."""
        preds = {n: self.predict(n, size, count) for n in (names or self.backends)}
        preds = {n: t for n, t in preds.items() if t is not None}
        if not preds:
            raise ValueError(f"the cost model has no data for block size {size}")
        name = min(preds, key=preds.__getitem__)
        return name, preds[name]

    def choose(self, counts: Mapping[int, int], backend: str = "auto") -> dict[int, str]:
        """Backend per size: the predicted fastest (``"auto"``), else ``backend`` where the model has
        data for it (falling back to the default backend, then to the fastest, where it has none)."""
        out = {}
        for size, count in sorted(counts.items()):
            if backend != "auto" and self.usable(backend, size):
                out[size] = backend
            elif backend != "auto" and self.usable(DEFAULT_BACKEND, size):
                out[size] = DEFAULT_BACKEND
            else:
                out[size] = self.best(size, count)[0]
        return out

    def refresh_seconds(self, counts: Mapping[int, int], factors: int, backends: Mapping[int, str]) -> float:
        """Predicted seconds of one whole-network refresh (``counts``: size → blocks)."""
        total = self.grouping.seconds(factors, counts)
        for size, count in counts.items():
            t = self.predict(backends[size], size, count)
            if t is None:
                raise ValueError(f"no prediction for backend {backends[size]!r} at block size {size}")
            total += t
        return total
