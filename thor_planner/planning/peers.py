"""Plans for Distributed Shampoo and SOAP: the block size and the refresh interval their users pick
by hand, chosen from measurements, and the keyword arguments to pass them.

**Block size** (``max_preconditioner_dim`` / ``max_precond_dim``): the rules THOR's split uses, on
the peer's curves. ``crossover``: where the fraction of parameters whose information loss
(:mod:`thor_planner.gradient_loss`) is below the threshold (rising in b) meets the normalized
refresh performance ``p_first / p_b`` (falling), with the same timing-spread interval and tie-break.
``budget``: the largest candidate whose refresh, amortized over ``--interval`` steps, stays under
``--overhead`` × one measured training step.

**Refresh interval** (``precondition_frequency``): the budget rule's trade solved for the interval
at the chosen block size: the fewest steps ``n`` with ``refresh_seconds / n <= overhead × step``
(:func:`~thor_planner.planning.rules.refresh_interval`): refresh as often as the budget allows.

The loader (:func:`peer_kwargs`, :meth:`Plan.shampoo_kwargs`, :meth:`Plan.soap_kwargs`) only
produces keyword arguments; nothing of the optimizers is imported here.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import replace

from thor_planner.planning.measurements import Measurements
from thor_planner.planning.plan import Crossover, ParamPlan, Plan
from thor_planner.planning.rules import (MEASURED, budget, crossover_with_spread, loss_fraction, normalized_perf,
                                         refresh_interval)
from thor_planner.targets import TARGETS, PlanTarget
from thor_planner.utils.errors import UserError
from thor_planner.version import __version__


def _shape(text) -> tuple[int, ...]:
    """``"128x384"`` → ``(128, 384)`` (``""``: a scalar)."""
    text = "" if text is None or text != text else str(text)
    return tuple(int(n) for n in text.split("x") if n)


def peer_parameters(m: Measurements, target: PlanTarget, block: int) -> list[ParamPlan]:
    """Every measured parameter at the chosen block size: how the optimizer cuts it, its loss."""
    out = []
    for row in m.losses.to_dict("records"):
        shape = _shape(row["shape"])
        out.append(ParamPlan(name=str(row["parameter"]), shape=list(shape),
                             blocks=target.blocks(shape, block).summary(), loss=float(row[str(block)])))
    return out


def crossing_warning(crossing, candidates: list[int], frac: list[float]) -> str | None:
    """The crossover rule's warning in a peer's terms (the same cases as THOR's: no crossing, or a
    degenerate one)."""
    advice = "Use '--rule budget --overhead F' to choose by the time you can afford."
    if crossing.warning is None:
        return None
    if crossing.x is None:
        return (f"The curves do not cross: refreshing smaller blocks is not cheap enough to meet the loss curve "
                f"(one matrix at a time, small blocks are many calls), so the block size is the largest candidate, "
                f"{candidates[-1]}. {advice}")
    block = crossing.split_dim
    kept = frac[candidates.index(block)]
    return (f"Degenerate crossover at b≈{crossing.x:.0f} (loss fraction {kept:.0%} at block {block}): the refresh "
            "performance falls below the loss fraction within the smallest block sizes, so the crossing rests on "
            f"their timings alone. {advice}")


def check_peer_rule(rule, target: PlanTarget) -> None:
    """Refuse what a peer plan does not model: data-parallel ranks (``--world-size``)."""
    if rule.world_size > 1:
        raise UserError(f"Invalid --world-size={rule.world_size} for --for {target.name}: plans for {target.title} "
                        "are made for one device (how it spreads blocks over ranks is not modelled); drop --world-size")


def make_peer_plan(m: Measurements, rule) -> Plan:
    """The plan for the optimizer ``m`` was measured for (``rule``: a :class:`~.planner.RuleConfig`)."""
    target = TARGETS[m.optimizer]
    check_peer_rule(rule, target)
    cands, seconds = m.candidates, m.seconds
    frac = loss_fraction(m.losses, cands, rule.loss_threshold)
    perf = normalized_perf(seconds)
    crossing = crossover_with_spread(cands, frac, perf, [float(v) for v in m.timings["min_s"]],
                                     [float(v) for v in m.timings["max_s"]], MEASURED)
    step = float(m.meta["step_seconds"])
    rule_info: dict = {"name": rule.name.value, "loss_threshold": rule.loss_threshold, "overhead": rule.overhead}
    warned = crossing_warning(crossing, cands, frac)
    chosen = rule.name.value
    if chosen == "auto":  # the crossing, unless it came with a warning: then the budget rule
        chosen = "budget" if warned is not None else "crossover"
        rule_info.update(chose=chosen, **({"because": warned.split(":")[0]} if warned is not None else {}))
    if chosen == "crossover":
        choice = replace(crossing, warning=warned)
    else:
        choice = budget(cands, seconds, step_seconds=step, overhead=rule.overhead, interval=rule.interval)
        rule_info["interval"] = rule.interval
    block = choice.split_dim
    refresh = seconds[cands.index(block)]
    rule_info.update(step_seconds=step, refresh_seconds=refresh)
    return Plan(
        tool_version=__version__, created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        model=m.meta["model"], device=m.meta["device"], capture=m.meta["capture"], rule=rule_info,
        candidates=cands, curves={"loss_fraction": frac, "inversion_seconds": seconds, "normalized_perf": perf},
        crossover=Crossover(x=crossing.x, y=crossing.y, split_dim=block, warning=choice.warning,
                            interval=list(crossing.interval) if crossing.interval else None,
                            spans=list(crossing.spans) if crossing.interval else None,
                            tie_break=crossing.tie_break if chosen == "crossover" else None),
        skipped=list(m.meta.get("skipped", [])), optimizer=target.name, block_size=block,
        refresh_interval=refresh_interval(refresh, step_seconds=step, overhead=rule.overhead),
        parameters=peer_parameters(m, target, block),
    )


def peer_kwargs(plan: Plan, optimizer: str, model=None) -> dict:
    """The constructor's keyword arguments a plan made for ``optimizer`` sets
    (:meth:`Plan.kwargs_for`): ``DistributedShampoo(model.parameters(), **peer_kwargs(plan, "shampoo"), lr=...)``."""
    return plan.kwargs_for(optimizer, model)


def constructor_text(plan: Plan, plan_path: str | None = None) -> list[str]:
    """The lines to paste for a peer plan: the import, the constructor with the planned keyword
    arguments, and the same through the loader when ``plan_path`` is given."""
    target = TARGETS[plan.optimizer]
    module, cls = target.constructor.rsplit(".", 1)
    args = ", ".join(f"{k}={v}" for k, v in peer_kwargs(plan, plan.optimizer).items())
    lines = [f"from {module} import {cls}", f"{cls}(model.parameters(), {args}, lr=...)"]
    if plan_path is not None:
        lines += ["# or, through the loader:", "from thor_planner import Plan",
                  f"{cls}(model.parameters(), **Plan.load({str(plan_path)!r}).{target.name}_kwargs(), lr=...)"]
    return lines
