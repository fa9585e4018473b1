"""The learning-rate schedule every optimizer of ``thor-plan train`` gets: an optional linear
warm-up, then a cosine decay to zero (or a constant rate), per step.

``factor(t)`` multiplies each param group's base learning rate at step ``t`` of ``total``:
``(t + 1) / W`` for the first ``W = round(warmup · total)`` steps, then
``½ (1 + cos(π (t − W) / (total − W)))`` (``cosine``) or 1 (``constant``). It works on anything
with ``param_groups`` (the optimizers of :mod:`.optimizers` and the benchmarks' peers alike).
"""

from __future__ import annotations

import math

LR_SCHEDULES = ("cosine", "constant")


def lr_factor(step: int, total: int, schedule: str = "cosine", warmup: float = 0.0) -> float:
    """The multiplier of the base learning rate at ``step`` (0-based) of ``total``."""
    warm = round(warmup * total)
    if step < warm:
        return (step + 1) / warm
    if schedule == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(total - warm, 1)))


class LRSchedule:
    """Sets every param group's ``lr`` to its base rate times :func:`lr_factor` before each step."""

    def __init__(self, optimizer, total: int, schedule: str = "cosine", warmup: float = 0.0) -> None:
        self.optimizer, self.total, self.schedule, self.warmup = optimizer, total, schedule, warmup
        self.base = [group["lr"] for group in optimizer.param_groups]

    def apply(self, step: int) -> None:
        factor = lr_factor(step, self.total, self.schedule, self.warmup)
        for group, base in zip(self.optimizer.param_groups, self.base):
            group["lr"] = base * factor
