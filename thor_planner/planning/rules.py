"""Curves and rules that turn measurements into a global split.

``crossover`` (THOR's rule): the loss-fraction curve (fraction of factors whose information loss is
below the threshold; rises with b) meets the normalized-performance curve (p_1/p_b; falls with b).
x is linear in b, the crossing is interpolated linearly between candidates and snapped to the
nearest candidate. ``budget``: the largest candidate whose preconditioner costs per training step,
its refresh amortized over the update interval plus, where measured, the per-step work the split
adds over the cheapest one (applying the blocks every step, capturing them every factor step), stay
under a fraction of one training step. ``refresh_interval``: the same budget
solved for the interval at a given refresh time (the plans for Distributed Shampoo and SOAP).

**Uncertainty.** Each candidate's inversion time was measured several times (min and max kept).
The performance curve then lies between ``min(p_1)/max(p_b)`` and ``max(p_1)/min(p_b)`` (1 at the
first candidate), so the crossing lies between where the loss-fraction curve meets the lower curve
and where it meets the upper one: ``crossover.interval = [low, high]`` (``high`` is the last
candidate when the upper curve does not cross). When the candidates nearest to the points of that
interval are more than one, the interval *spans* them and the measurements cannot tell them apart;
the split is then the candidate whose nearest-region (on the linear b axis, regions split at the
midpoints between candidates) holds the largest share of the interval, the larger one on a tie.
That reduces to the usual snapping when the timings do not spread, and it depends on where the
whole spread lies rather than on the median alone, which moves with noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import pandas as pd

DEGENERATE_LOSS_FRACTION = 0.05


@dataclass(frozen=True)
class Advice:
    """What a warning about the crossing tells the user to do, by what the run accepts."""

    degenerate: str
    no_crossing: str


_BUDGET = "Use '--rule budget --overhead F' to choose by the time you can afford."
_NO_BUDGET = "the budget rule, which chooses by the time you can afford, needs timings measured on the device itself"
#: A training step was timed on the device: the budget rule applies.
MEASURED = Advice(degenerate=_BUDGET, no_crossing=_BUDGET)
#: Timings predicted from a device profile (no training step; the budget rule is refused).
PREDICTED = Advice(
    degenerate=("Profile with candidates from 16 ('--candidates 16,32,64,...'): performance is then relative to "
                f"b = 16, where inversion is no longer nearly free ({_NO_BUDGET})."),
    no_crossing=f"'--max-split' or '--candidates' caps the split ({_NO_BUDGET}).")


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
    interval: tuple[float, float] | None = None
    spans: tuple[int, ...] = ()
    tie_break: str | None = None


def crossover(candidates: Sequence[int], loss_frac: Sequence[float], perf: Sequence[float],
              advice: Advice = MEASURED) -> Choice:
    """Where the rising loss-fraction curve first meets the falling performance curve; a warning
    when it is degenerate or missing ends with ``advice``."""
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
                          f"candidate, so the split is {candidates[-1]}. {advice.no_crossing}")
        b0, b1 = candidates[i - 1], candidates[i]
        t = -diff[i - 1] / (diff[i] - diff[i - 1])
        x = b0 + t * (b1 - b0)
        y = loss_frac[i - 1] + t * (loss_frac[i] - loss_frac[i - 1])
    split = min(candidates, key=lambda b: (abs(b - x), b))
    return Choice(split, x, y, degenerate_warning(candidates, loss_frac, split, x, advice))


def degenerate_warning(candidates: Sequence[int], loss_frac: Sequence[float], split: int, x: float,
                       advice: Advice) -> str | None:
    """The warning for a crossing that keeps almost no curvature information: the curves meet
    before the second candidate (performance relative to a nearly free first one), or under
    ``DEGENERATE_LOSS_FRACTION`` of the factors lose less than the threshold at the split it picks.
    The fraction is judged at the split (a measured point), not at the interpolated crossing, where
    timing noise moving x a little along a steep loss curve would flip the verdict, and the rule
    ``auto`` with it."""
    kept = loss_frac[candidates.index(split)]
    at_start = len(candidates) < 2 or x <= candidates[1]
    if not at_start and kept >= DEGENERATE_LOSS_FRACTION:
        return None
    return (f"Degenerate crossover at b≈{x:.0f} (loss fraction {kept:.0%} at split {split}): inverting "
            "small blocks is so cheap on this device that the performance curve collapses before the loss curve "
            f"rises, so the crossover keeps almost no curvature information. {advice.degenerate}")


def budget(
    candidates: Sequence[int], seconds: Sequence[float], *, step_seconds: float, overhead: float, interval: int,
    per_step: Sequence[float] | None = None,
) -> Choice:
    """The largest candidate whose cost per step, ``seconds / interval + per_step``, is at most
    ``overhead × step_seconds`` (``per_step``: each candidate's per-step seconds, 0 when not given);
    when none is, the cheapest, with a warning."""
    extra = list(per_step) if per_step is not None else [0.0] * len(candidates)
    costs = [s / interval + e for s, e in zip(seconds, extra)]
    allowed = overhead * step_seconds
    fits = [b for b, c in zip(candidates, costs) if c <= allowed]
    if fits:
        return Choice(max(fits))
    i = min(range(len(costs)), key=lambda k: (costs[k], k))  # per-step work need not grow from the first
    what = (f"costs {costs[i]:.3g} s per step (refresh {seconds[i]:.3g} s / {interval} steps + "
            f"{extra[i]:.3g} s of per-step work)" if per_step is not None
            else f"takes {seconds[i]:.3g} s per refresh, {costs[i]:.3g} s per step over {interval} steps")
    return Choice(candidates[i], None, None,
                  f"No candidate fits the budget: even b={candidates[i]}, the cheapest, {what}, over {overhead:g} × "
                  f"{step_seconds:.3g} s. Raise --overhead or --interval.")


def refresh_interval(refresh_seconds: float, *, step_seconds: float, overhead: float) -> int:
    """The fewest steps between refreshes that keep the refresh, amortized over them, within
    ``overhead`` × one training step: the smallest ``n >= 1`` with
    ``refresh_seconds / n <= overhead · step_seconds`` (the budget rule solved for the interval)."""
    if not (step_seconds > 0 and overhead > 0):
        raise ValueError(f"Invalid step_seconds={step_seconds} or overhead={overhead}: both must be > 0")
    allowed = overhead * step_seconds
    return max(1, math.ceil(refresh_seconds / allowed * (1 - 1e-12)))


def factor_split(losses: Sequence[float], candidates: Sequence[int], global_split: int, dim: int,
                 threshold: float) -> int:
    """A factor's split: the smallest candidate ≤ the global split whose loss is below the
    threshold, else the global split; capped at the factor's dimension."""
    for b, loss in zip(candidates, losses):
        if b <= global_split and loss < threshold:
            return min(b, dim)
    return min(global_split, dim)


def perf_bounds(min_s: Sequence[float], max_s: Sequence[float]) -> tuple[list[float], list[float]]:
    """The performance curve's lower and upper bounds from each candidate's fastest and slowest run."""
    lo = [1.0] + [min_s[0] / m if m > 0 else 1.0 for m in max_s[1:]]
    hi = [1.0] + [max_s[0] / m if m > 0 else 1.0 for m in min_s[1:]]
    return lo, hi


def _shares(candidates: Sequence[int], low: float, high: float) -> dict[int, float]:
    """How much of [low, high] lies in each candidate's nearest-region (linear b)."""
    edges = [-float("inf")] + [(a + b) / 2 for a, b in zip(candidates, candidates[1:])] + [float("inf")]
    out = {}
    for c, left, right in zip(candidates, edges, edges[1:]):
        part = min(high, right) - max(low, left)
        if part > 0 or left <= low < right:
            out[c] = max(part, 0.0)
    return out


def crossover_with_spread(candidates: Sequence[int], loss_frac: Sequence[float], perf: Sequence[float],
                          min_s: Sequence[float], max_s: Sequence[float], advice: Advice = MEASURED) -> Choice:
    """:func:`crossover` of the medians, with the interval the timing spread allows and the
    tie-break of the module doc when that interval spans several candidates."""
    median = crossover(candidates, loss_frac, perf, advice)
    lo_perf, hi_perf = perf_bounds(min_s, max_s)
    early, late = crossover(candidates, loss_frac, lo_perf), crossover(candidates, loss_frac, hi_perf)
    if early.x is None:
        return median
    low = early.x
    high = late.x if late.x is not None else float(candidates[-1])
    if median.x is not None:
        low, high = min(low, median.x), max(high, median.x)
    shares = _shares(candidates, low, high)
    spans = tuple(sorted(shares))
    if len(spans) < 2 or median.x is None:
        return replace(median, interval=(low, high), spans=spans)
    split = max(spans, key=lambda c: (shares[c], c))
    held = shares[split] / (high - low) if high > low else 1.0
    note = (f"the interval b≈{low:.0f}–{high:.0f} spans candidates {', '.join(map(str, spans))}: "
            f"{split} holds the largest share of it ({held:.0%})")
    return replace(median, split_dim=split, interval=(low, high), spans=spans, tie_break=note,
                   warning=degenerate_warning(candidates, loss_frac, split, median.x, advice))
