"""From measurements to a plan: the global split by a rule, then each factor's split.

The plan's ``crossover`` always describes where the curves cross (``x``, ``y``, the timing-spread
``interval`` and the candidates it ``spans``), whichever rule chose; ``split_dim`` is the global
split the rule chose (for ``budget``, not the crossing's nearest candidate).

With ``world_size`` N > 1 (data-parallel training) the rules see one rank's refresh time: the
measured whole-network time of each candidate times the busiest rank's share under the runtime's
LPT assignment of layers to ranks (``curves.inversion_seconds_per_rank``; ``inversion_seconds`` stays
the measured whole-network time, and ``rule.world_size`` records N).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from enum import Enum

from thor_planner.version import __version__
from thor_planner.planning.rules import (MEASURED, PREDICTED, budget, crossover_with_spread, factor_split,
                                         loss_fraction, normalized_perf)
from thor_planner.utils.errors import UserError
from thor_planner.planning.assignment import rank_share
from thor_planner.planning.measurements import Measurements
from thor_planner.planning.plan import Crossover, LayerPlan, Plan, Schedule


class Rule(str, Enum):
    crossover = "crossover"
    budget = "budget"


@dataclass(frozen=True, kw_only=True)
class RuleConfig:
    """The rule that picks the global split, and its parameters."""

    name: Rule = Rule.crossover
    loss_threshold: float = 0.01
    overhead: float = 0.05
    interval: int = 100
    #: data-parallel ranks the plan is for: each rank inverts its LPT share of the layers
    world_size: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", Rule(self.name))
        if not 0 < self.loss_threshold < 1:
            raise ValueError(f"Invalid loss_threshold={self.loss_threshold}: must be in (0, 1)")
        if not self.overhead > 0:
            raise ValueError(f"Invalid overhead={self.overhead}: must be > 0")
        if self.interval < 1:
            raise ValueError(f"Invalid interval={self.interval}: must be >= 1")
        if self.world_size < 1:
            raise ValueError(f"Invalid world_size={self.world_size}: must be >= 1")


def per_rank_shares(m: Measurements, world_size: int) -> list[float]:
    """Per candidate, the busiest rank's share of the whole-network refresh on ``world_size`` ranks
    (:func:`~thor_planner.planning.assignment.rank_share`; all 1.0 on one rank)."""
    if world_size <= 1:
        return [1.0] * len(m.candidates)
    dims: dict[str, dict[str, int]] = {}
    for row in m.losses.to_dict("records"):
        dims.setdefault(row["layer"], {})[row["factor"]] = int(row["dim"])
    pairs = [(d["a"], d["g"]) for d in dims.values()]
    return [rank_share(pairs, b, world_size) for b in m.candidates]


def make_plan(m: Measurements, rule: RuleConfig = RuleConfig(), schedule: Schedule = Schedule()) -> Plan:
    """Apply ``rule`` to the measurements and write every layer's splits (for measurements made for
    a peer optimizer: its block size and refresh interval, :func:`.peers.make_peer_plan`)."""
    if m.optimizer != "thor":
        from thor_planner.planning.peers import make_peer_plan

        return make_peer_plan(m, rule)
    cands, seconds = m.candidates, m.seconds
    shares = per_rank_shares(m, rule.world_size)
    per_rank = [s * f for s, f in zip(seconds, shares)]
    frac = loss_fraction(m.losses, cands, rule.loss_threshold)
    perf = normalized_perf(per_rank)
    rule_info: dict = {"name": rule.name.value, "loss_threshold": rule.loss_threshold}
    if rule.world_size > 1:
        rule_info["world_size"] = rule.world_size
    advice = MEASURED if m.meta.get("step_seconds") is not None else PREDICTED  # only what the run accepts
    crossing = crossover_with_spread(cands, frac, perf, [float(v) * f for v, f in zip(m.timings["min_s"], shares)],
                                     [float(v) * f for v, f in zip(m.timings["max_s"], shares)], advice)
    if rule.name is Rule.crossover:
        choice = crossing
    else:
        if m.meta.get("step_seconds") is None:
            raise UserError("The budget rule needs a training step timed on the target device; timings "
                            "predicted from a device profile have none: use --rule crossover")
        step = float(m.meta["step_seconds"])
        choice = budget(cands, per_rank, step_seconds=step, overhead=rule.overhead, interval=rule.interval)
        rule_info.update(overhead=rule.overhead, interval=rule.interval, step_seconds=step)
    layers = []
    by_layer = {}
    for row in m.losses.to_dict("records"):
        by_layer.setdefault(row["layer"], {})[row["factor"]] = row
    for name, rows in by_layer.items():
        a, g = rows["a"], rows["g"]
        splits = {}
        for which, row in (("a", a), ("g", g)):
            losses = [float(row[str(b)]) for b in cands]
            split = factor_split(losses, cands, choice.split_dim, int(row["dim"]), rule.loss_threshold)
            loss_at = dict(zip(cands, losses)).get(split, 0.0)  # split == dim (not a candidate): no loss
            splits[which] = (split, loss_at)
        layers.append(LayerPlan(
            name=name, kind=a["kind"], a_dim=int(a["dim"]), g_dim=int(g["dim"]),
            a_split=splits["a"][0], g_split=splits["g"][0], a_loss=splits["a"][1], g_loss=splits["g"][1],
            omega1=schedule.omega1, omega2=schedule.omega2,
        ))
    return Plan(
        tool_version=__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        model=m.meta["model"], device=m.meta["device"], capture=m.meta["capture"], rule=rule_info,
        candidates=cands,
        curves={"loss_fraction": frac, "inversion_seconds": seconds, "normalized_perf": perf,
                **({"inversion_seconds_per_rank": per_rank} if rule.world_size > 1 else {})},
        crossover=Crossover(x=crossing.x, y=crossing.y, split_dim=choice.split_dim, warning=choice.warning,
                            interval=list(crossing.interval) if crossing.interval else None,
                            spans=list(crossing.spans) if crossing.interval else None,
                            tie_break=crossing.tie_break if rule.name is Rule.crossover else None),
        schedule=schedule, layers=layers, skipped=list(m.meta.get("skipped", [])),
    )
