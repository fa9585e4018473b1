"""AlgoPerf's time-to-target scoring, on plain data (no torch); every result converts to JSON.

The terms and rules are those of MLCommons AlgoPerf (github.com/mlcommons/algorithmic-efficiency:
its rules document and ``scoring/performance_profile.py``):

- an **evaluation** is ``(step, seconds, value)``: the training step, the seconds of training so far
  (evaluation time excluded) and the validation value measured there;
- a **trial** is one training run: its evaluations in the order they were made;
- a **study** is one tuning run: the trials of one search (its own seed);
- a trial's **time to target** is the ``seconds`` of its first evaluation whose value meets the
  target: ``value <= target`` when the metric is minimised (``"min"``: loss, bits per byte),
  ``value >= target`` when it is maximised (``"max"``: accuracy); ``∞`` (and no step) otherwise;
- a study's time is its fastest trial's;
- an optimizer's **score on a workload** is the median of its studies' times; the median of a list
  holding ``∞`` is ``∞`` when more than half of an odd number (half or more of an even number) are
  ``∞``. Steps to target are reported beside it: the median of the fastest trials' steps;
- a workload's **target** is the baseline's best validation value within the budget, the median
  over the baseline's re-runs (:func:`target_from_baseline`);
- the **performance profile** of an optimizer is ``ρ(τ)``: the fraction of workloads on which its
  score is within ``τ`` times the best optimizer's score there (``∞`` never is), on a grid of
  ``τ`` from 1 to ``max_tau`` (AlgoPerf counts a score more than 4× the best as ``∞``, hence the
  default ``max_tau=4``); the **benchmark score** is the area under ``ρ`` divided by the width of
  the ``τ`` range (AlgoPerf's leaderboard score, in [0, 1]; :func:`benchmark_score`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

DIRECTIONS = ("min", "max")
SCALES = ("linear", "log")
INF = math.inf


class Evaluation(NamedTuple):
    """One validation measurement of a trial (a plain ``(step, seconds, value)`` tuple works too)."""

    step: int
    seconds: float
    value: float


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"Invalid direction={direction!r}: must be 'min' or 'max'")


def meets(value: float, target: float, direction: str) -> bool:
    """Whether ``value`` reaches ``target`` (``<=`` for ``"min"``, ``>=`` for ``"max"``; NaN never does)."""
    _check_direction(direction)
    return value <= target if direction == "min" else value >= target


def time_to_target(evals: Sequence[Sequence[float]], target: float,
                   direction: str) -> tuple[float, int | None]:
    """``(seconds, step)`` of the first evaluation meeting ``target``; ``(inf, None)`` when none does."""
    _check_direction(direction)
    for step, seconds, value in evals:
        if meets(value, target, direction):
            return float(seconds), int(step)
    return INF, None


def study_time_to_target(trials: Sequence[Sequence[Sequence[float]]], target: float,
                         direction: str) -> tuple[float, int | None]:
    """The fastest trial's ``(seconds, step)`` to ``target`` (fewer steps break a tie)."""
    if not trials:
        raise ValueError("A study needs at least one trial")
    hits = [time_to_target(trial, target, direction) for trial in trials]
    return min(hits, key=lambda hit: (hit[0], INF if hit[1] is None else hit[1]))


def median(values: Sequence[float]) -> float:
    """The median of ``values``, which may hold ``inf`` (the mean of the two middle values when
    their number is even, so ``inf`` when either is)."""
    if not values:
        raise ValueError("The median of no values is undefined")
    if any(math.isnan(v) for v in values):
        raise ValueError(f"Invalid values={list(values)}: NaN has no place in a median")
    return float(statistics.median(values))


def json_number(value: float | None) -> float | None:
    """``value`` as JSON allows it: ``None`` for ``inf`` (not reached) and for ``None``."""
    return None if value is None or math.isinf(value) else value


@dataclass(frozen=True)
class WorkloadScore:
    """An optimizer's score on one workload: the median over studies of the fastest trial's time
    to target (``inf`` when not reached), the median of those trials' steps (``None`` then), and
    each study's time and steps."""

    seconds: float
    steps: float | None
    study_seconds: tuple[float, ...]
    study_steps: tuple[int | None, ...]

    @property
    def reached(self) -> bool:
        return not math.isinf(self.seconds)

    def to_json(self) -> dict:
        return {"seconds": json_number(self.seconds), "steps": self.steps, "reached": self.reached,
                "study_seconds": [json_number(s) for s in self.study_seconds],
                "study_steps": list(self.study_steps)}


def workload_score(studies: Sequence[Sequence[Sequence[Sequence[float]]]], target: float,
                   direction: str) -> WorkloadScore:
    """Score the ``studies`` (each a list of trials, each a list of evaluations) on one workload."""
    if not studies:
        raise ValueError("A workload score needs at least one study")
    hits = [study_time_to_target(trials, target, direction) for trials in studies]
    seconds = median([s for s, _ in hits])
    steps = None if math.isinf(seconds) else median([INF if n is None else n for _, n in hits])
    return WorkloadScore(seconds=seconds, steps=steps, study_seconds=tuple(s for s, _ in hits),
                         study_steps=tuple(n for _, n in hits))


def best_value(evals: Sequence[Sequence[float]], direction: str) -> float:
    """A trial's best validation value (NaN values skipped; the worst possible when all are NaN)."""
    _check_direction(direction)
    values = [value for _, _, value in evals if not math.isnan(value)]
    worst = INF if direction == "min" else -INF
    if not values:
        return worst
    return min(values) if direction == "min" else max(values)


def target_from_baseline(best_values: Sequence[float], direction: str) -> float:
    """AlgoPerf's target: the median over the baseline's re-runs of each run's best validation value
    within the budget. A diverged run (NaN) counts as the worst value for ``direction``."""
    _check_direction(direction)
    worst = INF if direction == "min" else -INF
    return median([worst if math.isnan(v) else float(v) for v in best_values])


@dataclass(frozen=True)
class Profile:
    """A performance profile: the ``τ`` grid, ``ρ(τ)`` per optimizer on it, and the ratios (score /
    best score on the workload; ``inf`` when not reached) it was computed from."""

    taus: tuple[float, ...]
    rho: dict[str, tuple[float, ...]]
    ratios: dict[str, dict[str, float]]
    scale: str

    def to_json(self) -> dict:
        return {"scale": self.scale, "taus": list(self.taus),
                "rho": {k: list(v) for k, v in self.rho.items()},
                "ratios": {k: {w: json_number(r) for w, r in v.items()} for k, v in self.ratios.items()}}


def _checked_workloads(times: Mapping[str, Mapping[str, float]]) -> list[str]:
    """The workloads every optimizer of ``times`` was scored on (they must all have the same)."""
    if not times:
        raise ValueError("A performance profile needs at least one optimizer")
    first, *_ = times.values()
    workloads = sorted(first)
    if not workloads:
        raise ValueError("A performance profile needs at least one workload")
    for name, row in times.items():
        if sorted(row) != workloads:
            raise ValueError(f"Optimizer {name!r} has times for {sorted(row)}; expected {workloads}")
        if any(math.isnan(t) or t < 0 for t in row.values()):
            raise ValueError(f"Invalid times for {name!r}: {dict(row)}; must be >= 0 or inf")
    return workloads


def _ratio(seconds: float, best: float) -> float:
    if math.isinf(seconds):
        return INF
    return 1.0 if seconds == best else seconds / best


def tau_grid(max_tau: float, num_points: int, scale: str) -> tuple[float, ...]:
    """``num_points`` values of ``τ`` from 1 to ``max_tau``, evenly spaced in ``τ`` or in ``log τ``."""
    if scale not in SCALES:
        raise ValueError(f"Invalid scale={scale!r}: must be 'linear' or 'log'")
    if not max_tau >= 1:
        raise ValueError(f"Invalid max_tau={max_tau}: must be >= 1")
    if num_points < 2:
        raise ValueError(f"Invalid num_points={num_points}: must be >= 2")
    fractions = [i / (num_points - 1) for i in range(num_points)]
    if scale == "linear":
        return tuple(1.0 + (max_tau - 1.0) * f for f in fractions)
    return tuple(max_tau ** f for f in fractions)


def performance_profile(times: Mapping[str, Mapping[str, float]], *, max_tau: float | None = 4.0,
                        num_points: int = 100, scale: str = "linear") -> Profile:
    """AlgoPerf's performance profile of ``times`` (optimizer → workload → score in seconds, ``inf``
    when not reached). ``max_tau=None`` takes the largest finite ratio (at least 1), as AlgoPerf's
    plotting code does; a workload no optimizer reached counts against every optimizer."""
    workloads = _checked_workloads(times)
    best = {w: min(row[w] for row in times.values()) for w in workloads}
    ratios = {name: {w: _ratio(row[w], best[w]) for w in workloads} for name, row in times.items()}
    if max_tau is None:
        finite = [r for row in ratios.values() for r in row.values() if not math.isinf(r)]
        max_tau = max(finite, default=1.0)
    taus = tau_grid(max_tau, num_points, scale)
    rho = {name: tuple(sum(r <= tau for r in row.values()) / len(workloads) for tau in taus)
           for name, row in ratios.items()}
    return Profile(taus=taus, rho=rho, ratios=ratios, scale=scale)


def benchmark_score(profile: Profile) -> dict[str, float]:
    """AlgoPerf's leaderboard score of each optimizer: the area under ``ρ`` (trapezoids, over ``τ``
    or over ``log10 τ`` as the profile's scale), divided by the width of that range."""
    xs = profile.taus if profile.scale == "linear" else tuple(math.log10(t) for t in profile.taus)
    width = xs[-1] - xs[0]
    scores = {}
    for name, rho in profile.rho.items():
        if width == 0:
            scores[name] = rho[0]
            continue
        area = sum((x1 - x0) * (r0 + r1) / 2 for x0, x1, r0, r1 in zip(xs, xs[1:], rho, rho[1:]))
        scores[name] = area / width
    return scores
