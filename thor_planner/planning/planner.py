"""From measurements to a plan: the global split by a rule, then each factor's split.

The plan's ``crossover`` always describes where the curves cross (``x``, ``y``, the timing-spread
``interval`` and the candidates it ``spans``), whichever rule chose; ``split_dim`` is the global
split the rule chose (for ``budget``, not the crossing's nearest candidate).

With ``world_size`` N > 1 (data-parallel training) the rules see one rank's refresh time: the
measured whole-network time of each candidate times the busiest rank's share under the runtime's
LPT assignment of layers to ranks (``curves.inversion_seconds_per_rank``; ``inversion_seconds`` stays
the measured whole-network time, and ``rule.world_size`` records N). The per-step work the budget
adds (``curves.per_step_seconds``, :func:`split_work`) is counted whole on every rank: every DDP
rank applies every layer's blocks and captures every Gram; under FSDP a rank applies its shards only, so there the
budget errs on the cheap side.

With ``fsdp`` N > 1 (the model sharded with FSDP2 over N ranks) every G split must tile the layer's
shards (:func:`~thor_planner.partition.tiling_split`): a split whose blocks would cross a band
boundary becomes the largest candidate below it that tiles, and the layer records the split it
replaced and that split's loss (``g_split_unconstrained``, ``g_loss_unconstrained``) beside its
own. A layer some rank holds no rows of (fewer rows than ranks need) cannot be tiled: the runtime
gathers its rows, so its split is left as it is and ``rule.fsdp_gathered`` lists it. The rules then
see one rank's refresh time under FSDP (its bands' G blocks and its LPT share of the rest,
:func:`~thor_planner.planning.assignment.sharded_loads`, at each candidate constrained the same way).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from enum import Enum

from thor_planner.version import __version__
from thor_planner.planning.rules import (MEASURED, PREDICTED, budget, crossover_with_spread, factor_split,
                                         loss_fraction, normalized_perf)
from thor_planner.utils.errors import UserError
from thor_planner.partition import every_shard_holds_rows, partition, tiling_split
from thor_planner.planning.assignment import rank_share, sharded_loads
from thor_planner.planning.measurements import Measurements
from thor_planner.planning.plan import Crossover, LayerPlan, Plan, Schedule


class Rule(str, Enum):
    """``crossover``: THOR's rule, where the curves meet; ``budget``: the largest split whose refresh,
    amortized over ``interval`` steps, plus the per-step work it adds over the cheapest candidate
    (where the profile measured it: the blocks applied every step, captured every ``factor_every``
    steps) stays under ``overhead`` × one training step; ``auto``: the crossover, unless it is degenerate or missing (on CPUs, where small blocks invert almost for free)
    and a training step was measured, then the budget rule."""

    crossover = "crossover"
    budget = "budget"
    auto = "auto"


@dataclass(frozen=True, kw_only=True)
class RuleConfig:
    """The rule that picks the global split, and its parameters."""

    name: Rule = Rule.auto
    loss_threshold: float = 0.01
    overhead: float = 0.05
    interval: int = 100
    #: data-parallel ranks the plan is for: each rank inverts its LPT share of the layers
    world_size: int = 1
    #: FSDP2 ranks the model is sharded over: every G split tiles the shards (1: no constraint)
    fsdp: int = 1

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
        if self.fsdp < 1:
            raise ValueError(f"Invalid fsdp={self.fsdp}: must be >= 1")


def _layer_dims(m: Measurements) -> list[tuple[int, int]]:
    dims: dict[str, dict[str, int]] = {}
    for row in m.losses.to_dict("records"):
        dims.setdefault(row["layer"], {})[row["factor"]] = int(row["dim"])
    return [(d["a"], d["g"]) for d in dims.values()]


def _fsdp_share(pairs: list[tuple[int, int]], split: int, ranks: int, candidates: list[int]) -> float:
    """The busiest FSDP rank's share of a refresh with every factor at ``split`` (G tiled as planned)."""
    parts = []
    for a, g in pairs:
        tiled = tiling_split(g, ranks, split, candidates) if every_shard_holds_rows(g, ranks) else None
        parts.append((partition(a, split), partition(g, tiled or split)))
    total = sum(float(sum(s**3 for s in p.sizes())) for pair in parts for p in pair)
    return max(sharded_loads(parts, ranks)) / total if total else 1.0


def per_rank_shares(m: Measurements, world_size: int, fsdp: int = 1) -> list[float]:
    """Per candidate, the busiest rank's share of the whole-network refresh on ``world_size``
    data-parallel ranks (:func:`~thor_planner.planning.assignment.rank_share`) or, with ``fsdp`` > 1,
    on that many FSDP ranks; all 1.0 on one rank."""
    pairs = _layer_dims(m)
    if fsdp > 1:
        return [_fsdp_share(pairs, b, fsdp, m.candidates) for b in m.candidates]
    if world_size <= 1:
        return [1.0] * len(m.candidates)
    return [rank_share(pairs, b, world_size) for b in m.candidates]


def _g_split(row: dict, losses: list[float], cands: list[int], split: int, rule: RuleConfig) -> dict:
    """A G factor's split fields: as planned, then tiled over ``rule.fsdp`` shards (with the split it
    replaced and that split's loss when the constraint changed it)."""
    dim = int(row["dim"])
    loss_of = dict(zip(cands, losses))
    out = {"g_split": split, "g_loss": loss_of.get(split, 0.0)}  # split == dim (not a candidate): no loss
    if rule.fsdp <= 1 or not every_shard_holds_rows(dim, rule.fsdp):
        return out
    tiled = tiling_split(dim, rule.fsdp, split, cands)
    if tiled is None:
        raise UserError(f"No candidate split of G in {row['layer']} (dim {dim}) tiles its {rule.fsdp} FSDP shards of "
                        f"{-(-dim // rule.fsdp)} rows: add 1 or a divisor of {-(-dim // rule.fsdp)} to --candidates")
    if tiled != split:
        out.update(g_split=tiled, g_loss=loss_of[tiled], g_split_unconstrained=split, g_loss_unconstrained=out["g_loss"])
    return out


def _layer_plans(m: Measurements, cands: list[int], global_split: int, rule: RuleConfig,
                 schedule: Schedule) -> list[LayerPlan]:
    """Every layer's splits: :func:`~thor_planner.planning.rules.factor_split`, G tiled for FSDP."""
    by_layer: dict[str, dict] = {}
    for row in m.losses.to_dict("records"):
        by_layer.setdefault(row["layer"], {})[row["factor"]] = row
    layers = []
    for name, rows in by_layer.items():
        a, g = rows["a"], rows["g"]
        fields = {}
        for which, row in (("a", a), ("g", g)):
            losses = [float(row[str(b)]) for b in cands]
            split = factor_split(losses, cands, global_split, int(row["dim"]), rule.loss_threshold)
            if which == "a":
                fields.update(a_split=split, a_loss=dict(zip(cands, losses)).get(split, 0.0))
            else:
                fields.update(_g_split(row, losses, cands, split, rule))
        layers.append(LayerPlan(name=name, kind=a["kind"], a_dim=int(a["dim"]), g_dim=int(g["dim"]),
                                omega1=schedule.omega1, omega2=schedule.omega2, **fields))
    return layers


def _rule_info(rule: RuleConfig, layers: list[LayerPlan]) -> dict:
    info: dict = {"name": rule.name.value, "loss_threshold": rule.loss_threshold}
    if rule.world_size > 1:
        info["world_size"] = rule.world_size
    if rule.fsdp > 1:
        info["fsdp"] = rule.fsdp
        gathered = [lp.name for lp in layers if not every_shard_holds_rows(lp.g_dim, rule.fsdp)]
        if gathered:
            info["fsdp_gathered"] = gathered
    return info


def _chosen_rule(rule: RuleConfig, crossing, m: Measurements) -> Rule:
    """The rule that picks the split: ``auto`` resolved (budget when the crossing came with a
    warning and a step was timed); the budget rule refused without a measured step."""
    measured = m.meta.get("step_seconds") is not None
    if rule.name is Rule.auto:
        return Rule.budget if crossing.warning is not None and measured else Rule.crossover
    if rule.name is Rule.budget and not measured:
        raise UserError("The budget rule needs a training step timed on the target device; timings "
                        "predicted from a device profile have none: use --rule crossover")
    return rule.name


def split_work(costs: list[tuple[float, float]], factor_every: int) -> list[float]:
    """Per candidate, the per-step work its split adds over the cheapest candidate's: ``apply_s +
    capture_s / factor_every`` less its minimum. What every split pays alike (the eigenbasis family's
    Adam update, which stands in for AdamW's own; the capture's fixed share) does not choose a split."""
    work = [a + c / factor_every for a, c in costs]
    least = min(work)
    return [w - least for w in work]


def make_plan(m: Measurements, rule: RuleConfig = RuleConfig(), schedule: Schedule = Schedule()) -> Plan:
    """Apply ``rule`` to the measurements and write every layer's splits (for measurements made for
    a peer optimizer: its block size and refresh interval, :func:`.peers.make_peer_plan`)."""
    if m.optimizer != "thor":
        from thor_planner.planning.peers import make_peer_plan

        return make_peer_plan(m, rule)
    cands, seconds = m.candidates, m.seconds
    costs = m.step_costs
    per_step = split_work(costs, schedule.factor_every) if costs is not None else None
    shares = per_rank_shares(m, rule.world_size, rule.fsdp)
    per_rank = [s * f for s, f in zip(seconds, shares)]
    frac = loss_fraction(m.losses, cands, rule.loss_threshold)
    perf = normalized_perf(per_rank)
    advice = MEASURED if m.meta.get("step_seconds") is not None else PREDICTED  # only what the run accepts
    crossing = crossover_with_spread(cands, frac, perf, [float(v) * f for v, f in zip(m.timings["min_s"], shares)],
                                     [float(v) * f for v, f in zip(m.timings["max_s"], shares)], advice)
    chosen = _chosen_rule(rule, crossing, m)
    budget_info = {}
    if chosen is Rule.crossover:
        choice = crossing
    else:
        step = float(m.meta["step_seconds"])
        choice = budget(cands, per_rank, step_seconds=step, overhead=rule.overhead, interval=rule.interval,
                        per_step=per_step)
        budget_info = {"overhead": rule.overhead, "interval": rule.interval, "step_seconds": step,
                       "counts": "refresh / interval + per-step work" if per_step is not None else "refresh / interval"}
        if rule.name is Rule.auto:
            budget_info.update(chose="budget", because=crossing.warning.split(":")[0])
    layers = _layer_plans(m, cands, choice.split_dim, rule, schedule)
    extra_curves = {"inversion_seconds_per_rank": per_rank} if rule.world_size > 1 or rule.fsdp > 1 else {}
    if per_step is not None:
        extra_curves["per_step_seconds"] = per_step
    return Plan(
        tool_version=__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        model=m.meta["model"], device=m.meta["device"], capture=m.meta["capture"],
        rule={**_rule_info(rule, layers), **budget_info}, candidates=cands,
        curves={"loss_fraction": frac, "inversion_seconds": seconds, "normalized_perf": perf, **extra_curves},
        crossover=Crossover(x=crossing.x, y=crossing.y, split_dim=choice.split_dim, warning=choice.warning,
                            interval=list(crossing.interval) if crossing.interval else None,
                            spans=list(crossing.spans) if crossing.interval else None,
                            tie_break=crossing.tie_break if chosen is Rule.crossover else None),
        schedule=schedule, layers=layers, skipped=list(m.meta.get("skipped", [])), family=m.family,
    )
