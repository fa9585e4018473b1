"""Curves and rules that turn measurements into a global split.

``crossover`` (THOR's rule): the loss-fraction curve (fraction of factors whose information loss is
below the threshold; rises with b) meets the normalized-performance curve (p_1/p_b; falls with b).
x is linear in b, the crossing is interpolated linearly between candidates and snapped to the
nearest candidate. ``budget``: the largest candidate whose inversion time, amortized over the
update interval, stays under a fraction of one training step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

DEGENERATE_LOSS_FRACTION = 0.05


def loss_fraction(losses: pd.DataFrame, candidates: Sequence[int], threshold: float) -> list[float]:
    """For each candidate, the fraction of factors whose loss is below ``threshold``."""
    if len(losses) == 0:
        raise ValueError("No factor losses to summarise")
    return [float((losses[str(b)] < threshold).mean()) for b in candidates]


def normalized_perf(seconds: Sequence[float]) -> list[float]:
    """p_1 / p_b, with p_1 the time at the smallest candidate (1.0 there, falling as time grows)."""
    first = seconds[0]
    return [first / s if s > 0 else 1.0 for s in seconds]


@dataclass(frozen=True)
class Choice:
    """A global split and how it was reached."""

    split_dim: int
    x: float | None = None
    y: float | None = None
    warning: str | None = None


def crossover(candidates: Sequence[int], loss_frac: Sequence[float], perf: Sequence[float]) -> Choice:
    """Where the rising loss-fraction curve first meets the falling performance curve."""
    if not (len(candidates) == len(loss_frac) == len(perf)) or not candidates:
        raise ValueError("candidates, loss fraction and performance must have the same non-zero length")
    diff = [lf - p for lf, p in zip(loss_frac, perf)]
    if diff[0] >= 0:
        x, y = float(candidates[0]), float(loss_frac[0])
    else:
        i = next((i for i in range(1, len(diff)) if diff[i] >= 0), None)
        if i is None:
            return Choice(candidates[-1], None, None,
                          "The curves do not cross: block inversion stays cheap up to the largest "
                          f"candidate, so the split is {candidates[-1]}. Consider the 'budget' rule.")
        b0, b1 = candidates[i - 1], candidates[i]
        t = -diff[i - 1] / (diff[i] - diff[i - 1])
        x = b0 + t * (b1 - b0)
        y = loss_frac[i - 1] + t * (loss_frac[i] - loss_frac[i - 1])
    split = min(candidates, key=lambda b: (abs(b - x), b))
    warning = None
    at_start = len(candidates) < 2 or x <= candidates[1]
    if at_start or y < DEGENERATE_LOSS_FRACTION:
        warning = (f"Degenerate crossover at b≈{x:.0f} (loss fraction {y:.0%}): inverting small blocks "
                   "is so cheap on this device that the performance curve collapses before the loss "
                   "curve rises, so the crossover keeps almost no curvature information. "
                   "Use '--rule budget --overhead F' to choose by the time you can afford.")
    return Choice(split, x, y, warning)


def budget(
    candidates: Sequence[int], seconds: Sequence[float], *, step_seconds: float, overhead: float, interval: int
) -> Choice:
    """The largest candidate whose inversion time / interval ≤ overhead × step_seconds."""
    allowed = overhead * step_seconds * interval
    fits = [b for b, s in zip(candidates, seconds) if s <= allowed]
    if not fits:
        return Choice(candidates[0], None, None,
                      f"No candidate fits the budget: even b={candidates[0]} takes {seconds[0]:.3g} s per "
                      f"refresh, over {overhead:g} × {step_seconds:.3g} s × {interval} steps. "
                      "Raise --overhead or --interval.")
    return Choice(max(fits))


def factor_split(losses: Sequence[float], candidates: Sequence[int], global_split: int, dim: int,
                 threshold: float) -> int:
    """A factor's split: the smallest candidate ≤ the global split whose loss is below the
    threshold, else the global split; capped at the factor's dimension."""
    for b, loss in zip(candidates, losses):
        if b <= global_split and loss < threshold:
            return min(b, dim)
    return min(global_split, dim)
