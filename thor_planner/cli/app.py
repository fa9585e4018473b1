"""``thor-plan``: profile a model, plan its block splits, render the report, train with THOR.

Thin by design: parse, call :mod:`thor_planner`, print.
"""

from __future__ import annotations

import math
import shutil
from enum import Enum
from pathlib import Path

import typer
from rich.markup import escape

from thor_planner import __version__
from thor_planner.utils.errors import UserError
from thor_planner.inversion.backends import BACKENDS, DEFAULT_BACKEND
from thor_planner.planning.measurements import Measurements
from thor_planner.profiling.outputs import check_writable, write_profile, write_plan_and_report
from thor_planner.planning.plan import Plan
from thor_planner.planning.planner import Rule, RuleConfig, make_plan
from thor_planner.targets import TARGETS

from .console import (RUNS, BarProgress, console, err_console, first_missing, path_value, print_table,
                      terminate_as_interrupt, user_errors)
from .device_cmd import device_profile_cmd

app = typer.Typer(
    name="thor-plan",
    help="Plan THOR's per-layer Kronecker-factor block splits from measurements on your hardware.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class DeviceChoice(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class FisherChoice(str, Enum):
    sampled = "sampled"
    empirical = "empirical"


#: ``--for``: every plan target of the registry
TargetChoice = Enum("TargetChoice", {name: name for name in TARGETS}, type=str)


def _version(value: bool) -> None:
    if value:
        console.print(f"thor-plan {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Plan THOR's per-layer Kronecker-factor block splits from measurements on your hardware."""


def _rule_config(rule: Rule, threshold: float, overhead: float, interval: int, world_size: int = 1,
                 fsdp: int = 1) -> RuleConfig:
    if not 0 < threshold < 1:
        raise UserError(f"Invalid --threshold={threshold:g}: must be in (0, 1), e.g. 0.01 for 1%")
    if not 0 < overhead < math.inf:
        raise UserError(f"Invalid --overhead={overhead:g}: must be > 0, e.g. 0.05 for 5% of a training step")
    if interval < 1:
        raise UserError(f"Invalid --interval={interval}: must be >= 1 step")
    if world_size < 1:
        raise UserError(f"Invalid --world-size={world_size}: must be >= 1 (the number of data-parallel ranks)")
    if fsdp < 1:
        raise UserError(f"Invalid --fsdp={fsdp}: must be >= 1 (the number of ranks FSDP shards the model over)")
    if fsdp > 1 and world_size > 1 and fsdp != world_size:
        raise UserError(f"--world-size {world_size} and --fsdp {fsdp} describe the same ranks: give --fsdp alone")
    return RuleConfig(name=rule, loss_threshold=threshold, overhead=overhead, interval=interval,
                      world_size=world_size, fsdp=fsdp)


def _parse_candidates(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(c) for c in text.split(",") if c.strip())
    except ValueError:
        raise UserError(f"Invalid --candidates={text!r}: give comma-separated integers, e.g. 1,16,64,256") from None


def _summarise(plan: Plan, out: Path | None = None, plan_path: Path | None = None) -> None:
    if plan.for_peer:
        from .peers import summarise_peer

        summarise_peer(plan, plan_path or out)
        if out is not None:
            console.print(escape(f"Wrote {out}"))
        return
    co = plan.crossover
    crossing = f"crossover at b≈{co.x:.0f}" if co.x is not None else "the curves do not cross"
    if co.interval is not None and co.x is not None and f"{co.interval[0]:.0f}" != f"{co.interval[1]:.0f}":
        crossing += f", interval b≈{co.interval[0]:.0f}–{co.interval[1]:.0f}"
    rule = plan.rule["name"]
    if rule == "auto":
        rule = "auto: budget" if plan.rule.get("chose") == "budget" else "auto: crossover"
    how = crossing if rule in ("crossover", "auto: crossover") else f"rule {rule}; {crossing}"
    console.print(f"[bold]Global split {co.split_dim}[/] ({how}) for {len(plan.layers)} layers"
                  + (f", {len(plan.skipped)} skipped" if plan.skipped else ""))
    if plan.rule.get("chose") == "budget":
        work = " plus its per-step work" if "per_step_seconds" in plan.curves else ""
        console.print(escape(f"Note: {plan.rule['because']}: planned by the budget rule instead (the largest split "
                             f"whose refresh over {plan.rule['interval']} steps{work} stays under "
                             f"{plan.rule['overhead']:.0%} of the steps' time; --rule crossover keeps the crossing)."),
                      highlight=False)
    if co.tie_break:
        console.print(escape(f"Note: {co.tie_break}."), highlight=False)
    if co.warning:
        console.print(f"[yellow]Warning:[/] {escape(co.warning)}", highlight=False)
    for line in _fsdp_lines(plan):
        console.print(escape(line), highlight=False)
    busy = plan.device.get("busy")
    if isinstance(busy, dict) and busy.get("busy") and busy.get("warning"):
        console.print(f"[yellow]Warning:[/] {escape(str(busy['warning']))}", highlight=False)
    if out is not None:
        console.print(escape(f"Wrote {out}"))


def _fsdp_lines(plan: Plan) -> list[str]:
    """What planning for FSDP changed: G splits constrained to tile the shards, and at what loss."""
    shards = plan.rule.get("fsdp")
    if not shards:
        return []
    changed = [lp for lp in plan.layers if lp.g_split_unconstrained is not None]
    shown = [f"{lp.name} {lp.g_split_unconstrained}→{lp.g_split} (G loss {lp.g_loss_unconstrained:.3f}→{lp.g_loss:.3f})"
             for lp in changed[:5]] + ([f"and {len(changed) - 5} more"] if len(changed) > 5 else [])
    lines = [f"FSDP over {shards} ranks: " + (f"G splits reduced to tile the shards in {len(changed)} layers: "
                                               + ", ".join(shown) if changed else "every G split tiles the shards")]
    to_one = [lp for lp in changed if lp.g_split == 1 and -(-lp.g_dim // shards) > 1]
    if to_one:
        bands = ", ".join(f"{lp.name}: {-(-lp.g_dim // shards)}" for lp in to_one[:5])
        lines.append(f"FSDP: a G split of 1 keeps only G's diagonal; a candidate that divides the rows of a band "
                     f"({bands}) keeps more (--candidates)")
    gathered = plan.rule.get("fsdp_gathered") or []
    if gathered:
        lines.append(f"FSDP: {len(gathered)} layer{'s have' if len(gathered) > 1 else ' has'} too few rows for every "
                     f"rank to hold some: THOR gathers their rows: {', '.join(gathered[:5])}"
                     + (f" and {len(gathered) - 5} more" if len(gathered) > 5 else ""))
    return lines


def _offline_target(path: Path | None, rule: Rule):
    """The device profile to predict the timings from (None: time on this machine)."""
    from thor_planner.timing.device_profile import load_device_profile

    if path is None:
        return None
    if path.is_dir():
        raise UserError(f"Device profile '{path}' is a folder: pass the .json file that 'thor-plan device-profile' "
                        "wrote in it")
    target = load_device_profile(path)
    if rule is Rule.budget:
        raise UserError("--rule budget needs a training step timed on the target device, which --device-profile "
                        "does not have: use --rule crossover, or profile on the device itself")
    return target


ThresholdOpt = typer.Option(0.01, "--threshold", help="Information-loss threshold (fraction; 0.01 = 1%).")
OverheadOpt = typer.Option(0.05, "--overhead", help="budget rule: allowed preconditioner time per step (refresh amortized plus per-step work), as a fraction of one training step.")
IntervalOpt = typer.Option(100, "--interval", help="budget rule: steps between inverse refreshes to amortize over.")
RuleOpt = typer.Option(Rule.auto, "--rule", help="How to pick the global split: crossover (THOR's rule: where the loss and performance curves meet), budget (the largest split whose refresh, amortized over --interval steps, plus its per-step work stays under --overhead of a training step) or auto (crossover, unless it is degenerate or missing and a training step was timed here: then budget).")
WorldSizeOpt = typer.Option(1, "--world-size", help="Data-parallel ranks the plan is for: the rules use one rank's share of the inversions.")
FsdpOpt = typer.Option(1, "--fsdp", help="Plan for a model sharded with FSDP2 (fully_shard) over N ranks: every G split tiles the N shards of its layer's rows (the plan lists the splits this changed and their loss).")


@app.command()
def profile(
    model: str = typer.Option("resnet50", "--model", "-m", help="Built-in (resnet50, resnet18, cnn, mlp, bert-base, bert-tiny, gpt-tiny, gpt-small), 'pkg.module:factory', or torchvision:/timm:/hf: names when they import."),
    weights: Path = typer.Option(None, "--weights", parser=path_value, metavar="FILE", help="State dict to load (torch.load with weights_only=True)."),
    num_classes: int = typer.Option(None, "--num-classes", help="Classes of the model's head (built-ins and factories that take num_classes)."),
    data: str = typer.Option("synthetic", "--data", help="'synthetic' (default; random tokens for token models), 'digits', 'text' or 'tokens' (masked LMs), 'stdlib' or 'tokens' (causal LMs: the standard library's source, next-byte labels), 'pkg.module:factory' yielding (inputs, labels), or an image folder."),
    for_: TargetChoice = typer.Option("thor", "--for", help=f"The optimizer to plan for: {', '.join(TARGETS)} (thor: per-layer splits of THOR's factors; shampoo, soap: Distributed Shampoo's max_preconditioner_dim or SOAP's max_precond_dim and their precondition_frequency)."),
    batches: int = typer.Option(None, "--batches", help="Batches to capture statistics on (default 2; 8 for --for shampoo/soap, whose statistics are per batch)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Samples per batch."),
    input_size: int = typer.Option(None, "--input-size", help="Image side for synthetic data (default: the model's, 224 for ResNets); sequence length for token models (default: the model's, 128 for bert-* and gpt-tiny)."),
    seed: int = typer.Option(0, "--seed", help="Seed for data, Fisher label sampling and timing inputs."),
    fisher: FisherChoice = typer.Option(None, "--fisher", help="Labels for G: sampled from the model's output (true Fisher; default) or the batch labels (empirical). Shampoo and SOAP plans use the batch labels."),
    skip: str = typer.Option(None, "--skip", help="Regex of layer names to leave to SGD."),
    device: DeviceChoice = typer.Option(DeviceChoice.auto, "--device", help="Where to capture and time."),
    candidates: str = typer.Option(None, "--candidates", help="Comma-separated splits to evaluate (default: 1 and powers of two from 16)."),
    max_split: int = typer.Option(None, "--max-split", help="Largest default candidate (default 2048; 8192 for --for shampoo/soap)."),
    backend: str = typer.Option(None, "--backend", help=f"Inversion backend: auto (fastest accurate per block size; the default on CUDA) or one of {', '.join(sorted(BACKENDS))} (default on CPU: {DEFAULT_BACKEND})."),
    device_profile: Path = typer.Option(None, "--device-profile", parser=path_value, metavar="FILE", help="Plan offline: predict inversion times from this file (written by 'thor-plan device-profile' on the target device) instead of timing here."),
    time_budget: float = typer.Option(1.0, "--time-budget", help="Seconds of repeats per candidate after warm-up."),
    rule: Rule = RuleOpt,
    threshold: float = ThresholdOpt,
    overhead: float = OverheadOpt,
    interval: int = IntervalOpt,
    world_size: int = WorldSizeOpt,
    fsdp: int = FsdpOpt,
    out: Path = typer.Option(None, "--out", "-o", parser=path_value, metavar="FOLDER", help="Output folder (default: runs/<model>-<device>, which git ignores; the committed examples in profiles/ are never written by default)."),
    save_factors: bool = typer.Option(False, "--save-factors", help="Also write the captured factors (factors.pt; hundreds of MB for ResNet-50)."),
    refresh_backends: bool = typer.Option(False, "--refresh-backends", help="Check (and for auto, time) the backends again instead of reusing this device's cached choice."),
    family: str = typer.Option("inverse", "--family", help="The preconditioner family to plan for, whose refresh is timed: inverse (THOR's block inverses) or eigen (Adam in the Kronecker eigenbasis: an eigendecomposition per block). A comma list times the others too, for the report (e.g. eigen,inverse)."),
) -> None:
    """Measure a model on this machine and write plan.json, report.html, losses.csv, timings.csv
    (for THOR by default; --for shampoo or soap plans Distributed Shampoo's or SOAP's block size and
    refresh interval)."""
    from thor_planner.timing.device_profile import device_slug
    from thor_planner.profiling.profiler import ProfileConfig, run_profile
    from thor_planner.timing.device import resolve_device
    from thor_planner.timing.candidates import TimingConfig

    with user_errors("lower --batch-size, --batches or --input-size"):
        rule_cfg = _rule_config(rule, threshold, overhead, interval, world_size, fsdp)
        target = _offline_target(device_profile, rule)
        if not 0 < time_budget < math.inf:
            raise UserError(f"Invalid --time-budget={time_budget:g}: must be > 0 seconds")
        cfg = ProfileConfig(
            model=model, weights=str(weights) if weights else None, num_classes=num_classes, data=data,
            batches=batches, batch_size=batch_size, input_size=input_size, seed=seed,
            fisher=fisher.value if fisher is not None else None, target=for_.value,
            skip=skip, device=device.value, candidates=_parse_candidates(candidates), max_split=max_split,
            backend=backend, device_profile=str(device_profile) if device_profile else None,
            timing=TimingConfig(budget_s=time_budget), refresh_backends=refresh_backends,
            family=tuple(f.strip() for f in family.split(",") if f.strip()),
        )
        if TARGETS[cfg.target].peer:
            from thor_planner.planning.peers import check_peer_rule

            check_peer_rule(rule_cfg, TARGETS[cfg.target])
        if save_factors and TARGETS[cfg.target].peer:
            raise UserError(f"Invalid --save-factors for --for {cfg.target}: it saves THOR's Kronecker factors; "
                            "drop it")
        dev = resolve_device(cfg.device)
        where = device_slug(target.device) if target is not None else dev.type
        planned_for = "" if cfg.target == "thor" else f"-{cfg.target}"
        folder = out or RUNS / f"{model.replace(':', '-').replace('/', '-')}{planned_for}-{where}"
        created = first_missing(folder)
        bars = BarProgress()
        try:
            with terminate_as_interrupt():
                check_writable(folder)
                measurements, captured = run_profile(cfg, bars)
                plan = make_plan(measurements, rule_cfg)
                write_profile(folder, measurements, plan, captured if save_factors else None)
        except BaseException:
            if created is not None and created.is_dir():
                shutil.rmtree(created, ignore_errors=True)  # a failed run leaves no folder it made
            raise
        total = sum(bars.seconds.values())
        console.print(f"Measured in {total:.1f} s (" + ", ".join(f"{k} {v:.1f} s" for k, v in bars.seconds.items())
                      + ")" if err_console.is_terminal else f"Measured in {total:.1f} s")
        _summarise(plan, plan_path=folder / "plan.json")
        console.print(escape(f"Wrote {folder}/plan.json, report.html, losses.csv, timings.csv"
                             + (", factors.pt" if save_factors else "")))


@app.command("plan")
def plan_cmd(
    from_: Path = typer.Option(..., "--from", parser=path_value, metavar="FOLDER", help="A folder written by 'thor-plan profile' (needs losses.csv and timings.csv)."),
    rule: Rule = RuleOpt,
    threshold: float = ThresholdOpt,
    overhead: float = OverheadOpt,
    interval: int = IntervalOpt,
    world_size: int = WorldSizeOpt,
    fsdp: int = FsdpOpt,
) -> None:
    """Re-plan from saved measurements without measuring again; rewrites plan.json and report.html."""
    with user_errors():
        rule_cfg = _rule_config(rule, threshold, overhead, interval, world_size, fsdp)
        measurements = Measurements.load(from_)
        check_writable(from_)
        plan = make_plan(measurements, rule_cfg)
        write_plan_and_report(from_, plan, measurements)
        _summarise(plan, from_ / "plan.json")


@app.command()
def report(
    folder: Path = typer.Argument(..., parser=path_value, metavar="FOLDER", help="A folder written by 'thor-plan profile'."),
) -> None:
    """Re-render report.html from the folder's plan.json and CSVs."""
    from thor_planner.report.html import build_report
    from thor_planner.utils.atomic import atomic_write_text

    with user_errors():
        measurements = Measurements.load(folder)
        if not (folder / "plan.json").is_file():
            raise UserError(f"Profile folder '{folder}' lacks plan.json: write it with 'thor-plan plan --from {folder}'")
        plan = Plan.load(folder / "plan.json")
        if plan.candidates != measurements.candidates:
            raise UserError(f"'{folder / 'plan.json'}' is for candidates {','.join(map(str, plan.candidates))} but the "
                            f"measurements for {','.join(map(str, measurements.candidates))}: "
                            f"re-plan with 'thor-plan plan --from {folder}'")
        check_writable(folder)
        atomic_write_text(folder / "report.html", build_report(plan, measurements.losses, measurements.all_timings()))
        console.print(escape(f"Wrote {folder / 'report.html'}"))


@app.command()
def show(plan_path: Path = typer.Argument(..., metavar="PLAN", parser=path_value, help="A plan.json file.")) -> None:
    """Print a plan's provenance, rule, global split and per-layer splits."""
    with user_errors():
        plan = Plan.load(plan_path)
    if plan.for_peer:
        from .peers import show_peer

        show_peer(plan, plan_path)
        return
    cap, params = plan.capture, plan.model.get("num_params")
    params = f"{params:,}" if isinstance(params, int) else "?"
    console.print(f"[bold]{escape(str(plan.model.get('name')))}[/] ({params} parameters) "
                  f"on {escape(str(plan.device.get('type')))} · {escape(str(plan.device.get('name')))}")
    console.print(escape(f"data: {cap.get('data')}, {cap.get('batches')}×{cap.get('batch_size')} samples, "
                         f"Fisher {cap.get('fisher')} · rule {plan.rule.get('name')}, "
                         f"loss threshold {plan.rule.get('loss_threshold'):g}"))
    _summarise(plan)
    rows = [[lp.name, lp.kind, str(lp.a_dim), str(lp.a_split), f"{lp.a_loss:.3f}", str(lp.g_dim),
             str(lp.g_split) if lp.g_split_unconstrained is None else f"{lp.g_split} (FSDP; was {lp.g_split_unconstrained})",
             f"{lp.g_loss:.3f}"] for lp in plan.layers]
    print_table(console, ["layer", "kind", "A dim", "A split", "A loss", "G dim", "G split", "G loss"], rows, right=2)
    for s in plan.skipped:
        console.print(escape(f"skipped {s['name']}: {s['reason']}"))


app.command("device-profile")(device_profile_cmd)

from .train import train_cmd  # noqa: E402  (the train command lives in its own module)

app.command("train")(train_cmd)

from .tune import tune_cmd  # noqa: E402  (the tune command lives in its own module)

app.command("tune")(tune_cmd)


def _is_usage_error(exc: BaseException) -> bool:
    """click's UsageError family (bad option values, unknown options, missing arguments), whether
    typer uses click or its own copy of it."""
    return any(k.__name__ == "UsageError" for k in type(exc).__mro__) and hasattr(exc, "format_message")


def main() -> None:
    """The console script: usage errors (bad option values, unknown options) as one line, exit 2."""
    import sys

    try:
        code = app(standalone_mode=False, prog_name="thor-plan")
    except typer.Abort:
        err_console.print("Interrupted: nothing was written.")
        sys.exit(130)
    except Exception as exc:
        if not _is_usage_error(exc):
            raise
        message = exc.format_message()
        if not message:  # no arguments: the help was printed already
            sys.exit(2)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        err_console.print(f"[bold red]Error:[/] {escape(message)}{escape(hint)}", highlight=False)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
