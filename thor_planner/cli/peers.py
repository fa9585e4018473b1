"""What the CLI prints for a plan made for a peer optimizer (``--for shampoo|soap``): the block
size and refresh interval with how the rule reached them, the constructor arguments to paste, and
the per-parameter table of ``thor-plan show``."""

from __future__ import annotations

from rich.markup import escape

from thor_planner.planning.peers import constructor_text
from thor_planner.planning.plan import Plan
from thor_planner.targets import TARGETS

from .console import console, print_table


def _seconds(s: float) -> str:
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


def summarise_peer(plan: Plan, plan_path=None) -> None:
    """The block size and interval, how they were chosen, warnings, and the lines to paste."""
    target, co, rule = TARGETS[plan.optimizer], plan.crossover, plan.rule
    crossing = f"crossover at b≈{co.x:.0f}" if co.x is not None else "the curves do not cross"
    if co.interval is not None and co.x is not None and f"{co.interval[0]:.0f}" != f"{co.interval[1]:.0f}":
        crossing += f", interval b≈{co.interval[0]:.0f}–{co.interval[1]:.0f}"
    how = crossing if rule["name"] == "crossover" else f"rule {rule['name']}; {crossing}"
    console.print(f"[bold]{escape(target.title)}: {target.block_kwarg}={plan.block_size}, "
                  f"{target.interval_kwarg}={plan.refresh_interval}[/] ({escape(how)}) for "
                  f"{len(plan.parameters)} parameters" + (f", {len(plan.skipped)} skipped" if plan.skipped else ""))
    console.print(escape(f"Refresh {_seconds(float(rule['refresh_seconds']))} every {plan.refresh_interval} steps of "
                         f"{_seconds(float(rule['step_seconds']))}: within {float(rule['overhead']):.0%} of the "
                         "step time (--overhead)"), highlight=False)
    if co.tie_break:
        console.print(escape(f"Note: {co.tie_break}."), highlight=False)
    if co.warning:
        console.print(f"[yellow]Warning:[/] {escape(co.warning)}", highlight=False)
    busy = plan.device.get("busy")
    if isinstance(busy, dict) and busy.get("busy") and busy.get("warning"):
        console.print(f"[yellow]Warning:[/] {escape(str(busy['warning']))}", highlight=False)
    for line in constructor_text(plan, plan_path):
        console.out("    " + line, highlight=False)


def show_peer(plan: Plan, plan_path) -> None:
    """``thor-plan show`` for a peer plan."""
    cap, params = plan.capture, plan.model.get("num_params")
    params = f"{params:,}" if isinstance(params, int) else "?"
    console.print(f"[bold]{escape(str(plan.model.get('name')))}[/] ({params} parameters) "
                  f"on {escape(str(plan.device.get('type')))} · {escape(str(plan.device.get('name')))} "
                  f"· plan for {escape(TARGETS[plan.optimizer].title)}")
    console.print(escape(f"data: {cap.get('data')}, {cap.get('batches')}×{cap.get('batch_size')} samples, "
                         f"gradient statistics · rule {plan.rule.get('name')}, "
                         f"loss threshold {plan.rule.get('loss_threshold'):g}"))
    summarise_peer(plan, plan_path)
    rows = [[pp.name, "×".join(map(str, pp.shape)) or "scalar", pp.blocks, f"{pp.loss:.3f}"] for pp in plan.parameters]
    print_table(console, ["parameter", "shape", f"blocks at {plan.block_size}", "loss"], rows, right=3)
    for s in plan.skipped:
        console.print(escape(f"skipped {s['name']}: {s['reason']}"))
