"""Amortized training-step time of THOR against SGD, kfac-pytorch and Distributed Shampoo.

    python bench/gpu_step.py [--device auto|cpu|cuda] [--precisions fp32,bf16] [--window N] [--no-write]
    python bench/gpu_step.py --rehearse     # every row on the CPU in seconds (the small cnn, 8×8, batch 8)

On CUDA: ResNet-50 (built-in; ``--models resnet50,torchvision:resnet50`` adds torchvision's), batch
256, 224×224, synthetic batch, fp32 and bf16 autocast + channels_last. On the CPU: ResNet-18 (10
classes) at 32×32, batch 32, fp32. Every row gets a fresh model (same seed); all rows run in one
process, one after the other; peak memory is CUDA's max allocated over the timed steps.

Rows: ``sgd``; ``thor`` = ``THOR(model, plan)`` at kfac-pytorch's cadence (factors every 10 steps,
check points every 100); ``thor_late`` = the plan's schedule late in training (factors every 10,
check points ``interval_max`` apart); ``thor_128`` / ``thor_dense`` (no plan, split 128 / dense,
kfac cadence); the breakdown ``precondition_only`` (no capture, no check point) and ``capture``
(factors every 10, no check point), whose difference to ``thor`` is the check points;
``kfac_pytorch`` (factors every 10, inverses every 100) and ``distributed_shampoo``
(max_preconditioner_dim 1024, precondition_frequency 100, SGD grafting, momentum 0.9) when they
import (see their install notes), else ``absent``; a peer that raises on a case is reported
``failed: …``, and one that fails on channels_last is timed again in the default memory format
(``note`` says so; the SGD row stays channels_last).

How a row is timed. Each optimizer does periodic work: factor statistics every ``f`` steps (THOR
and kfac-pytorch 10; Shampoo every step) and one expensive *event* every ``E`` steps (THOR's check
point, kfac-pytorch's inverses, Shampoo's root inverses: E = 100; ``thor_late``: E = the plan's
``interval_max``). Timing whole cycles would take E steps per row, so every row instead

1. takes ``--warmup`` steps from a fresh model (the first holds an event for every optimizer but
   Shampoo);
2. is moved, through its own step counter, to just before an event and takes two steps, so one
   event has run on real statistics (Shampoo's first root inverse, at its step 100);
3. is moved to step 200 − W and takes W timed steps (``--window``, a multiple of 10: W/10 factor
   steps, no event), then step 200, a factor step with the event.

Each step is timed alone (CUDA events between steps, one synchronisation after the event step; the
host clock on the CPU). ms/step = mean of the W steps + (event step − mean factor step of the window) / E,
which is the mean over a cycle of E steps. Every THOR event re-inverts every layer (ω1 = 0 at that
check point): the most a check point costs; the trace rule can only make it cheaper.

The plan comes from a quick ``thor-plan profile`` of the same model on this device (one per model,
shared by both precisions). Results: ``results/gpu_step-<device>.json`` (``gpu_step-cpu.json`` on a
CPU) and the section ``gpu_step`` (``gpu_step-<device>`` on CUDA), rewritten after each case.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import device_name, device_slug, machine_line, write_json, write_section  # noqa: E402

from thor_planner import THOR  # noqa: E402
from thor_planner.inputs.models import load_model  # noqa: E402
from thor_planner.planning.planner import make_plan  # noqa: E402
from thor_planner.profiling.profiler import ProfileConfig, run_profile  # noqa: E402
from thor_planner.timing.candidates import TimingConfig  # noqa: E402

GOALS = {"thor": 1.10, "thor_late": 1.05}
PEAK_GOAL = 1.10
CPU_GOAL = 1.3
FAR = 10**9  # a schedule step no run reaches
KFAC_FACTORS, KFAC_EVENT = 10, 100  # kfac-pytorch's cadence
MEASURED_EVENT = 200  # the event step the timed window leads up to
PRIME_EVENT = 100  # the event stage 2 runs


def peers() -> dict[str, object]:
    """The peer optimizers that import here (``None`` when absent)."""
    found: dict[str, object] = {}
    try:
        from kfac.preconditioner import KFACPreconditioner
        found["kfac_pytorch"] = KFACPreconditioner
    except Exception:  # noqa: BLE001 - any import failure means absent
        found["kfac_pytorch"] = None
    try:
        from distributed_shampoo import DistributedShampoo, SGDPreconditionerConfig
        from distributed_shampoo.shampoo_types import ClassicMomentumConfig  # noqa: F401
        found["distributed_shampoo"] = (DistributedShampoo, SGDPreconditionerConfig)
    except Exception:  # noqa: BLE001
        found["distributed_shampoo"] = None
    return found


# ------------------------------------------------------------------------------ step counters


def place_none(opt, pre, step: int, event_at: int) -> None:
    """SGD: no periodic work."""


def place_thor(opt, pre, step: int, event_at: int) -> None:
    """THOR: the next step is ``step`` (factor steps at ``step % factor_every == 0``), the next
    check point ``event_at``."""
    opt._step, opt._next_check = step, event_at
    opt._activate()


def place_kfac(opt, pre, step: int, event_at: int) -> None:
    """kfac-pytorch: factors at ``steps % 10 == 0``, inverses at ``steps % 100 == 0``."""
    pre._steps = step


def place_shampoo(opt, pre, step: int, event_at: int) -> None:
    """Distributed Shampoo: the step counter is incremented before use (first step = 1); root
    inverses at ``step % precondition_frequency == 0``, preconditioning after the first."""
    from distributed_shampoo.shampoo_types import STEP

    for state in opt._per_group_state_lists:
        state[STEP].fill_(step - 1)


@dataclass(frozen=True)
class Row:
    """How to build one row's optimizer (``make(model) -> (optimizer, preconditioner or None)``),
    its cadence and how to move its step counter."""

    make: Callable
    place: Callable = place_none
    factor_every: int = 1
    event_every: int | None = None
    thor: bool = False


# ------------------------------------------------------------------------------------ a case


class Case:
    def __init__(self, device: torch.device, model: str, precision: str, classes: int, size: int, batch: int,
                 channels_last: bool | None = None):
        self.device, self.model, self.precision = device, model, precision
        self.classes, self.size, self.batch = classes, size, batch
        self.channels_last = precision == "bf16" if channels_last is None else channels_last
        channels = (load_model(model, num_classes=classes).input_shape or (3,))[0]
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(batch, channels, size, size, generator=gen).to(device)
        self.y = torch.randint(0, classes, (batch,), generator=gen).to(device)
        if self.channels_last:
            self.x = self.x.contiguous(memory_format=torch.channels_last)

    def contiguous(self) -> Case:
        """The same case in the default memory format."""
        return Case(self.device, self.model, self.precision, self.classes, self.size, self.batch, False)

    @property
    def name(self) -> str:
        return f"{self.model}, batch {self.batch}, {self.size}×{self.size}, {self.precision}"

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def build(self):
        torch.manual_seed(0)
        model = load_model(self.model, num_classes=self.classes).model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def step_fn(self, model, opt, pre=None):
        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                loss = F.cross_entropy(model(self.x), self.y)
            loss.backward()
            if pre is not None:
                pre.step()
            opt.step()
        return step

    def timed_steps(self, step, count: int) -> list[float]:
        """Seconds of each of ``count`` steps: CUDA events between steps (one synchronisation at the
        end), or the host clock on the CPU."""
        if not self.cuda:
            out = []
            for _ in range(count):
                start = time.perf_counter()
                step()
                out.append(time.perf_counter() - start)
            return out
        events = [torch.cuda.Event(enable_timing=True) for _ in range(count + 1)]
        events[0].record()
        for i in range(count):
            step()
            events[i + 1].record()
        torch.cuda.synchronize(self.device)
        return [a.elapsed_time(b) / 1e3 for a, b in zip(events, events[1:])]

    def run_row(self, row: Row, warmup: int, window: int) -> dict:
        """One row timed as the module docstring says (ms/step, its parts, peak GiB)."""
        model = self.build()
        opt, pre = row.make(model)
        step = self.step_fn(model, opt, pre)
        for _ in range(warmup):
            step()
        if row.event_every is not None:  # stage 2: one event on real statistics
            row.place(opt, pre, PRIME_EVENT - 1, PRIME_EVENT)
            with full_refresh(opt, row.thor):
                step()
                step()
        first = MEASURED_EVENT - window
        row.place(opt, pre, first, MEASURED_EVENT if row.event_every is not None else FAR)
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        event = row.event_every is not None
        with full_refresh(opt, row.thor):  # the window holds no check point: only the event step refreshes
            times = self.timed_steps(step, window + int(event))  # the event step right after the window
        out = window_summary(times[:window], first, row.factor_every)
        if event:
            out.update(amortize(out, times[-1] * 1e3, row.event_every))
        peak = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.cuda else None
        out["peak_gib"] = None if peak is None else round(peak, 3)
        del model, opt, pre, step
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
        return out


class full_refresh:
    """Within the block, every THOR check point re-inverts every layer (ω1 = ω2 = 0)."""

    def __init__(self, opt, thor: bool):
        self.layers = opt._layers if thor else []
        self.saved = [(l.omega1, l.omega2) for l in self.layers]

    def __enter__(self):
        for layer in self.layers:
            layer.omega1 = layer.omega2 = 0.0

    def __exit__(self, *exc):
        for layer, (o1, o2) in zip(self.layers, self.saved):
            layer.omega1, layer.omega2 = o1, o2


def window_summary(times: list[float], first: int, factor_every: int) -> dict:
    ms = [t * 1e3 for t in times]
    factor = [t for i, t in enumerate(ms) if (first + i) % factor_every == 0]
    plain = [t for i, t in enumerate(ms) if (first + i) % factor_every != 0]
    return {"ms": round(statistics.fmean(ms), 3), "window_ms": round(statistics.fmean(ms), 3),
            "factor_step_ms": round(statistics.fmean(factor), 3) if factor else None,
            "plain_step_median_ms": round(statistics.median(plain), 3) if plain else None,
            "window_steps": len(ms)}


def amortize(out: dict, event_ms: float, every: int) -> dict:
    base = out["factor_step_ms"] if out["factor_step_ms"] is not None else out["window_ms"]
    extra = event_ms - base
    return {"ms": round(out["window_ms"] + extra / every, 3), "event_step_ms": round(event_ms, 3),
            "event_extra_ms": round(extra, 3), "event_every": every}


# ------------------------------------------------------------------------------------- rows


def schedule_of(plan, factor_every: int, interval: int):
    return dataclasses.replace(plan.schedule, factor_every=factor_every, interval_initial=interval,
                               interval_max=interval, interval_growth=1.0)


def thor_rows(plan) -> dict[str, Row]:
    kfac = schedule_of(plan, KFAC_FACTORS, KFAC_EVENT)
    late_every = plan.schedule.interval_max
    late = schedule_of(plan, plan.schedule.factor_every, late_every)

    def planned(schedule):
        return lambda m: (THOR(m, plan, lr=0.1, momentum=0.9, schedule=schedule), None)

    def unplanned(split):
        return lambda m: (THOR(m, lr=0.1, momentum=0.9, split=split, schedule=kfac), None)

    def row(make, factor_every, event_every):
        return Row(make, place_thor, factor_every, event_every, thor=True)

    return {
        "thor": row(planned(kfac), KFAC_FACTORS, KFAC_EVENT),
        "thor_late": row(planned(late), plan.schedule.factor_every, late_every),
        "thor_128": row(unplanned(128), KFAC_FACTORS, KFAC_EVENT),
        "thor_dense": row(unplanned(None), KFAC_FACTORS, KFAC_EVENT),
        "precondition_only": row(planned(schedule_of(plan, FAR, FAR)), FAR, None),
        "capture": row(planned(schedule_of(plan, KFAC_FACTORS, FAR)), KFAC_FACTORS, None),
    }


def peer_rows(found: dict) -> dict[str, Row | str]:
    rows: dict[str, Row | str] = {}
    kfac_cls = found["kfac_pytorch"]
    if kfac_cls is None:
        rows["kfac_pytorch"] = "absent"
    else:
        def make_kfac(m):
            pre = kfac_cls(m, factor_update_steps=KFAC_FACTORS, inv_update_steps=KFAC_EVENT, damping=0.001,
                           factor_decay=0.95, kl_clip=0.001, lr=0.1)
            return torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), pre
        rows["kfac_pytorch"] = Row(make_kfac, place_kfac, KFAC_FACTORS, KFAC_EVENT)
    shampoo = found["distributed_shampoo"]
    if shampoo is None:
        rows["distributed_shampoo"] = "absent"
    else:
        from distributed_shampoo.shampoo_types import ClassicMomentumConfig
        cls, sgd_graft = shampoo

        def make_shampoo(m):
            return cls(m.parameters(), lr=0.1, betas=(0.0, 0.999), epsilon=1e-12, weight_decay=5e-5,
                       max_preconditioner_dim=1024, precondition_frequency=KFAC_EVENT,
                       grafting_config=sgd_graft(),
                       iterate_averaging_config=ClassicMomentumConfig(momentum=0.9)), None
        rows["distributed_shampoo"] = Row(make_shampoo, place_shampoo, 1, KFAC_EVENT)
    return rows


def failure(exc: BaseException) -> str:
    return f"failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:120]}"


def run_row(case: Case, key: str, row: Row, warmup: int, window: int) -> dict | str:
    """``case.run_row``; a peer that fails is reported (``failed: …``), and one that fails on
    channels_last is measured again in the default memory format, with a note saying so."""
    try:
        return case.run_row(row, warmup, window)
    except Exception as exc:  # noqa: BLE001 - a row that fails on this case is reported, not fatal
        if key == "sgd":  # every ratio needs it
            raise
        reason = failure(exc)
        gc.collect()
        if case.cuda:
            torch.cuda.empty_cache()
    if not case.channels_last or row.thor:
        return reason
    try:
        out = case.contiguous().run_row(row, warmup, window)
    except Exception as exc:  # noqa: BLE001
        return f"{reason}; in the default memory format: {failure(exc)}"
    return {**out, "note": f"default memory format (channels_last {reason})"}


def run_case(case: Case, plan, warmup: int, window: int, found: dict, on_row: Callable[[dict], None]) -> dict:
    """Every row of ``case`` (goal rows and peers first); ``on_row(rows so far)`` after each."""
    sgd = Row(lambda m: (torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), None))
    thor = thor_rows(plan)
    order = {"sgd": sgd, "thor": thor.pop("thor"), "thor_late": thor.pop("thor_late"), **peer_rows(found),
             **thor}
    rows: dict[str, dict | str] = {}
    for key, row in order.items():
        start = time.perf_counter()
        rows[key] = row if isinstance(row, str) else run_row(case, key, row, warmup, window)
        print(f"  {key}: {rows[key] if isinstance(rows[key], str) else rows[key]['ms']} "
              f"({time.perf_counter() - start:.1f} s)", flush=True)
        relative_to_sgd(rows)
        on_row(rows)
    return rows


def relative_to_sgd(rows: dict) -> None:
    base = rows["sgd"]
    for row in rows.values():
        if isinstance(row, dict):
            row["vs_sgd"] = round(row["ms"] / base["ms"], 3)
            if row.get("peak_gib") is not None and base.get("peak_gib"):
                row["peak_vs_sgd"] = round(row["peak_gib"] / base["peak_gib"], 3)


def quick_plan(device: torch.device, model: str, classes: int, size: int, batch_size: int, budget_s: float):
    cfg = ProfileConfig(model=model, num_classes=classes, input_size=size, batches=2, batch_size=batch_size,
                        device=device.type, timing=TimingConfig(budget_s=budget_s))
    measurements, _ = run_profile(cfg)
    return make_plan(measurements)


def goals(rows: dict, cuda: bool) -> list[str]:
    """The goals the rows measured so far meet or miss."""
    if "thor" not in rows:
        return []
    if isinstance(rows["thor"], str):
        return [f"thor {rows['thor']}"]
    if not cuda:
        r = rows["thor"]["vs_sgd"]
        return [f"CPU thor/SGD {r:.2f}× (goal ≤ {CPU_GOAL}×: {'met' if r <= CPU_GOAL else 'missed'})"]
    out = []
    for key, goal in GOALS.items():
        if isinstance(rows.get(key), dict):
            r = rows[key]["vs_sgd"]
            out.append(f"{key}/SGD {r:.2f}× (goal ≤ {goal}×: "
                       f"{'met' if r <= goal else f'missed by {(r / goal - 1) * 100:.0f}%'})")
    for peer in ("kfac_pytorch", "distributed_shampoo"):
        if isinstance(rows.get(peer), dict):
            ahead = rows["thor"]["ms"] < rows[peer]["ms"]
            out.append(f"thor vs {peer}: {rows['thor']['ms']:.1f} vs {rows[peer]['ms']:.1f} ms "
                       f"({'met' if ahead else 'missed'})")
        elif peer in rows:
            out.append(f"thor vs {peer}: {rows[peer]}")
    peak = rows["thor"].get("peak_vs_sgd")
    if peak is not None:
        out.append(f"peak memory thor/SGD {peak:.2f}× (goal ≤ {PEAK_GOAL:.2f}×: "
                   f"{'met' if peak <= PEAK_GOAL else 'missed'})")
    return out


def case_lines(name: str, entry: dict) -> list[str]:
    lines = [f"### {name} (plan split {entry['plan_split']})", "",
             "| row | ms/step | / SGD | window ms/step | event step ms (every) | peak GiB |",
             "|---|---:|---:|---:|---:|---:|"]
    notes = []
    for key, row in entry["rows"].items():
        if isinstance(row, dict):
            peak = "" if row.get("peak_gib") is None else f"{row['peak_gib']:.2f}"
            event = f"{row['event_step_ms']:.1f} ({row['event_every']})" if "event_step_ms" in row else ""
            if "note" in row:
                notes.append(f"{key}: {row['note']}.")
                key += " *"
            lines.append(f"| {key} | {row['ms']:.2f} | {row['vs_sgd']:.2f}× | {row['window_ms']:.2f} | "
                         f"{event} | {peak} |")
        else:
            lines.append(f"| {key} | {row} | | | | |")
    lines += [""] + (["\\* " + " ".join(notes), ""] if notes else [])
    return lines + ["Goals: " + "; ".join(entry["goals"]) + ".", ""]


def write_results(results: dict, args, cuda: bool, slug: str, quiet: bool = False) -> None:
    lines = [f"## Training step: THOR vs SGD and peers (`bench/gpu_step.py`, {results['device']})", "",
             f"Machine: {machine_line()}. Command: `{results['command'].strip()}`. Per row: {args.warmup} "
             f"warm-up steps, one event on real statistics, then {results['window']} timed steps and one "
             "event step (see the script's docstring); one process.", ""]
    for name, entry in results["cases"].items():
        lines += case_lines(name, entry)
    if not cuda:
        lines += ["On the CPU each row is a single short run: rows differ by run-to-run noise of tens of "
                  "percent (bench/step_overhead.py alternates runs and takes medians for the CPU goal).", "",
                  "GPU goals (ResNet-50, batch 256, 224×224: ≤ 1.10× at kfac-pytorch's cadence, ≤ 1.05× late "
                  "in training, ahead of kfac-pytorch and Distributed Shampoo, peak memory ≤ 1.10×): not "
                  "measured on this machine (no GPU)."]
    body = "\n".join(lines)
    if args.no_write:
        if not quiet:
            print(body)
        return
    write_section("gpu_step" if not cuda else f"gpu_step-{slug}", body, echo=not quiet)
    write_json(f"gpu_step-{slug}" if cuda else "gpu_step-cpu", results)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--models", default=None,
                        help="comma-separated (default resnet50 on CUDA, resnet18 on a CPU)")
    parser.add_argument("--precisions", default=None, help="fp32,bf16 (default both on CUDA, fp32 on CPU)")
    parser.add_argument("--window", type=int, default=None,
                        help="timed steps before the event step, a multiple of 10 below 100 (default 20)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps of a fresh model (default 3)")
    parser.add_argument("--rehearse", action="store_true", help="tiny sizes on the CPU: every row in seconds")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    if args.rehearse:
        args.device = "cpu"
    args.window = args.window or (10 if args.rehearse else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.rehearse else 3)
    if args.window % KFAC_FACTORS or not 0 < args.window < KFAC_EVENT:
        parser.error(f"--window={args.window}: must be a multiple of 10 below 100")
    return args


def main() -> None:
    args = parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    cuda = device.type == "cuda"
    # (classes, input size, batch, plan batch, plan timing budget)
    shape = (1000, 224, 256, 32, 0.1) if cuda else (10, 8, 8, 4, 0.01) if args.rehearse else \
        (10, 32, 32, 8, 0.1)
    classes, size, batch, plan_batch, budget = shape
    models = (args.models or ("resnet50" if cuda else "cnn" if args.rehearse else "resnet18")).split(",")
    precisions = (args.precisions or ("fp32,bf16" if cuda or args.rehearse else "fp32")).split(",")
    found = peers()
    slug = device_slug()
    results = {"device": device_name() if cuda else machine_line(), "device_slug": slug,
               "command": "python bench/gpu_step.py " + " ".join(sys.argv[1:]), "window": args.window,
               "warmup": args.warmup, "cases": {}}
    for model in models:
        start = time.perf_counter()
        plan = quick_plan(device, model, classes, size, plan_batch, budget)
        print(f"{model}: plan split {plan.split_dim} ({time.perf_counter() - start:.1f} s)", flush=True)
        for precision in precisions:
            case = Case(device, model, precision, classes, size, batch)
            print(case.name, flush=True)

            def save(rows: dict, name: str = case.name) -> None:  # after each row: a cut-short run keeps it
                results["cases"][name] = {"plan_split": plan.split_dim, "rows": rows,
                                          "goals": goals(rows, cuda)}
                write_results(results, args, cuda, slug, quiet=True)

            run_case(case, plan, args.warmup, args.window, found, save)
            print("  goals: " + "; ".join(results["cases"][case.name]["goals"]), flush=True)
    write_results(results, args, cuda, slug)

if __name__ == "__main__":
    main()
