"""Amortized training-step time of THOR against SGD, kfac-pytorch and Distributed Shampoo.

    python bench/gpu_step.py [--device auto|cpu|cuda] [--steps N] [--no-write]

On CUDA: ResNet-50 (built-in; ``torchvision:resnet50`` too when torchvision imports), batch 256,
224×224, synthetic batch, fp32 and bf16 autocast + channels_last. On the CPU the same script runs
ResNet-18 (10 classes) at 32×32, batch 32, fp32. Every optimizer gets a fresh model (same seed),
``--warmup`` untimed steps, then ``--steps`` timed steps (zero_grad, forward, cross-entropy,
backward, [preconditioner], step) with one synchronisation at the end: ms/step amortized over the
window, so it includes every factor capture and check point inside it (their count is listed).
All rows come from one process, one after the other; peak memory is CUDA's max allocated.

Rows: ``sgd``; ``thor`` = ``THOR(model, plan)`` at kfac-pytorch's cadence (factors every 10 steps,
check points every 100); ``thor_late`` = the plan's schedule late in training (factors every 10,
check points ``interval_max`` apart: the window holds none, so one measured refresh is added
amortized over ``interval_max`` steps); ``thor_128`` / ``thor_dense`` (no plan, split 128 / dense,
kfac cadence); the breakdown ``precondition_only`` (no capture, no check point in the window) and
``capture`` (factors every 10, no check point); ``kfac_pytorch`` (factors every 10, inverses every
100) and ``distributed_shampoo`` (max_preconditioner_dim 1024, precondition_frequency 100, SGD
grafting, momentum 0.9) when they import (see their install notes), else ``absent``.

The plan comes from a quick ``thor-plan profile`` of the same model on this device.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import machine_line, write_json, write_section  # noqa: E402

from thor_planner import THOR  # noqa: E402
from thor_planner.inputs.models import load_model  # noqa: E402
from thor_planner.planning.planner import make_plan  # noqa: E402
from thor_planner.profiling.profiler import ProfileConfig, run_profile  # noqa: E402
from thor_planner.timing.candidates import TimingConfig  # noqa: E402

GOALS = {"thor": 1.10, "thor_late": 1.05}
CPU_GOAL = 1.3
FAR = 10**9  # a schedule step no run reaches


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


class Case:
    def __init__(self, device: torch.device, model: str, precision: str):
        self.device, self.model, self.precision = device, model, precision
        cuda = device.type == "cuda"
        self.classes, self.size, self.batch = (1000, 224, 256) if cuda else (10, 32, 32)
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(self.batch, 3, self.size, self.size, generator=gen).to(device)
        self.y = torch.randint(0, self.classes, (self.batch,), generator=gen).to(device)
        if precision == "bf16":
            self.x = self.x.contiguous(memory_format=torch.channels_last)

    @property
    def name(self) -> str:
        return f"{self.model}, batch {self.batch}, {self.size}×{self.size}, {self.precision}"

    def build(self):
        torch.manual_seed(0)
        model = load_model(self.model, num_classes=self.classes).model.to(self.device)
        if self.precision == "bf16":
            model = model.to(memory_format=torch.channels_last)
        return model

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

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

    def time(self, make, warmup: int, steps: int) -> dict:
        """``make(model) -> (optimizer, preconditioner or None)``; ms per timed step and peak GiB."""
        model = self.build()
        opt, pre = make(model)
        step = self.step_fn(model, opt, pre)
        for _ in range(warmup):
            step()
        self.sync()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        self.sync()
        ms = (time.perf_counter() - start) / steps * 1e3
        peak = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None
        checks = None
        if isinstance(opt, THOR):
            checks = sum(l.trace.updates + l.trace.keeps + l.trace.stops for l in opt._layers[:1])
        out = {"ms": round(ms, 3), "peak_gib": None if peak is None else round(peak, 3)}
        if checks is not None:
            out["check_points_incl_warmup"] = checks
        del model, opt, pre
        return out

    def refresh_ms(self, plan, warmup: int) -> float:
        """One check point that re-inverts every layer (ω1 = 0), measured as the extra time of a step."""
        model = self.build()
        sched = dataclasses.replace(plan.schedule, factor_every=1, interval_initial=FAR, interval_max=FAR,
                                    omega1=0.0, omega2=0.0)
        opt = THOR(model, plan, lr=0.1, momentum=0.9, schedule=sched)
        step = self.step_fn(model, opt)
        for _ in range(warmup):
            step()
        times = {"plain": [], "check": []}
        for i in range(6):
            kind = "check" if i % 2 else "plain"
            if kind == "check":
                opt._next_check = opt._step
            self.sync()
            start = time.perf_counter()
            step()
            self.sync()
            times[kind].append(time.perf_counter() - start)
            if kind == "check":
                opt._next_check = FAR
        return (statistics.median(times["check"]) - statistics.median(times["plain"])) * 1e3


def schedule_of(plan, factor_every: int, interval: int):
    return dataclasses.replace(plan.schedule, factor_every=factor_every, interval_initial=interval,
                               interval_max=max(interval, plan.schedule.interval_initial) if interval < FAR
                               else interval, interval_growth=1.0)


def run_case(case: Case, plan, warmup: int, steps: int, found: dict) -> dict:
    kfac_cadence = schedule_of(plan, 10, 100)
    rows: dict[str, dict | str] = {}

    def thor(**kw):
        return lambda m: (THOR(m, lr=0.1, momentum=0.9, **kw), None)

    def planned(schedule):
        return lambda m: (THOR(m, plan, lr=0.1, momentum=0.9, schedule=schedule), None)

    rows["sgd"] = case.time(lambda m: (torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), None), warmup, steps)
    rows["thor"] = case.time(planned(kfac_cadence), warmup, steps)
    late = dataclasses.replace(plan.schedule, interval_initial=plan.schedule.interval_max)
    rows["thor_late"] = case.time(planned(dataclasses.replace(late, interval_max=FAR, interval_initial=FAR)),
                                  warmup, steps)
    refresh = case.refresh_ms(plan, warmup=3)
    rows["thor_late"]["refresh_ms"] = round(refresh, 3)
    rows["thor_late"]["ms"] = round(rows["thor_late"]["ms"] + refresh / late.interval_max, 3)
    rows["thor_128"] = case.time(thor(split=128, schedule=kfac_cadence), warmup, steps)
    rows["thor_dense"] = case.time(thor(split=None, schedule=kfac_cadence), warmup, steps)
    rows["precondition_only"] = case.time(planned(schedule_of(plan, FAR, FAR)), warmup, steps)
    rows["capture"] = case.time(planned(schedule_of(plan, 10, FAR)), warmup, steps)
    kfac_cls = found["kfac_pytorch"]
    if kfac_cls is None:
        rows["kfac_pytorch"] = "absent"
    else:
        def make_kfac(m):
            pre = kfac_cls(m, factor_update_steps=10, inv_update_steps=100, damping=0.001, factor_decay=0.95,
                           kl_clip=0.001, lr=0.1)
            return torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), pre
        try:
            rows["kfac_pytorch"] = case.time(make_kfac, warmup, steps)
        except Exception as exc:  # noqa: BLE001 - a peer that fails on this case is reported, not fatal
            rows["kfac_pytorch"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    shampoo = found["distributed_shampoo"]
    if shampoo is None:
        rows["distributed_shampoo"] = "absent"
    else:
        from distributed_shampoo.shampoo_types import ClassicMomentumConfig
        cls, sgd_graft = shampoo

        def make_shampoo(m):
            return cls(m.parameters(), lr=0.1, betas=(0.0, 0.999), epsilon=1e-12, weight_decay=5e-5,
                       max_preconditioner_dim=1024, precondition_frequency=100, grafting_config=sgd_graft(),
                       iterate_averaging_config=ClassicMomentumConfig(momentum=0.9)), None
        try:
            rows["distributed_shampoo"] = case.time(make_shampoo, warmup, steps)
        except Exception as exc:  # noqa: BLE001
            rows["distributed_shampoo"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    sgd = rows["sgd"]["ms"]
    for row in rows.values():
        if isinstance(row, dict):
            row["vs_sgd"] = round(row["ms"] / sgd, 3)
            if row.get("peak_gib") is not None and rows["sgd"].get("peak_gib"):
                row["peak_vs_sgd"] = round(row["peak_gib"] / rows["sgd"]["peak_gib"], 3)
    return rows


def quick_plan(case: Case):
    cfg = ProfileConfig(model=case.model, num_classes=case.classes, input_size=case.size, batches=2,
                        batch_size=8 if case.device.type == "cpu" else 32, device=case.device.type,
                        timing=TimingConfig(budget_s=0.1))
    measurements, _ = run_profile(cfg)
    return make_plan(measurements)


def goals(rows: dict, cuda: bool) -> list[str]:
    out = []
    if cuda:
        for key, goal in GOALS.items():
            r = rows[key]["vs_sgd"]
            out.append(f"{key}/SGD {r:.2f}× (goal ≤ {goal}×: {'met' if r <= goal else f'missed by {(r / goal - 1) * 100:.0f}%'})")
        for peer in ("kfac_pytorch", "distributed_shampoo"):
            if isinstance(rows[peer], dict):
                ahead = rows["thor"]["ms"] < rows[peer]["ms"]
                out.append(f"thor vs {peer}: {rows['thor']['ms']:.1f} vs {rows[peer]['ms']:.1f} ms "
                           f"({'met' if ahead else 'missed'})")
        peak = rows["thor"].get("peak_vs_sgd")
        if peak is not None:
            out.append(f"peak memory thor/SGD {peak:.2f}× (goal ≤ 1.10×: {'met' if peak <= 1.10 else 'missed'})")
    else:
        r = rows["thor"]["vs_sgd"]
        out.append(f"CPU thor/SGD {r:.2f}× (goal ≤ {CPU_GOAL}×: {'met' if r <= CPU_GOAL else 'missed'})")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 100 on CUDA, 30 on CPU)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    cuda = device.type == "cuda"
    steps = args.steps or (100 if cuda else 30)
    found = peers()
    models = ["resnet50"] if cuda else ["resnet18"]
    if cuda:
        try:
            import torchvision  # noqa: F401
            models.append("torchvision:resnet50")
        except Exception:  # noqa: BLE001
            pass
    precisions = ["fp32", "bf16"] if cuda else ["fp32"]
    results = {"device": torch.cuda.get_device_name(device) if cuda else machine_line(),
               "command": "python bench/gpu_step.py " + " ".join(sys.argv[1:]), "steps": steps,
               "warmup": args.warmup, "cases": {}}
    lines = ["## Training step: THOR vs SGD and peers (`bench/gpu_step.py`)", "",
             f"Machine: {machine_line()}. Command: `{results['command'].strip()}`. {steps} timed steps after "
             f"{args.warmup} warm-up steps per row, one process; see the script's docstring for each row.", ""]
    for model in models:
        for precision in precisions:
            case = Case(device, model, precision)
            plan = quick_plan(case)
            rows = run_case(case, plan, args.warmup, steps, found)
            results["cases"][case.name] = {"plan_split": plan.split_dim, "rows": rows, "goals": goals(rows, cuda)}
            print(case.name, json.dumps(rows), flush=True)
            lines += [f"### {case.name} (plan split {plan.split_dim})", "",
                      "| row | ms/step | / SGD | peak GiB |", "|---|---:|---:|---:|"]
            for key, row in rows.items():
                if isinstance(row, dict):
                    peak = "" if row.get("peak_gib") is None else f"{row['peak_gib']:.2f}"
                    lines.append(f"| {key} | {row['ms']:.2f} | {row['vs_sgd']:.2f}× | {peak} |")
                else:
                    lines.append(f"| {key} | {row} | | |")
            lines += ["", "Goals: " + "; ".join(results["cases"][case.name]["goals"]) + ".", ""]
    first = next(iter(results["cases"].values()))["rows"]
    results.update({k: v for k, v in first.items()})
    if not cuda:
        lines.append("On the CPU each row is a single short run: rows differ by run-to-run noise of tens of percent "
                     "(bench/step_overhead.py alternates runs and takes medians for the CPU goal).")
        lines.append("")
        lines.append("GPU goals (ResNet-50, batch 256, 224×224: ≤ 1.10× at kfac-pytorch's cadence, ≤ 1.05× late "
                     "in training, ahead of kfac-pytorch and Distributed Shampoo, peak memory ≤ 1.10×): not "
                     "measured on this machine (no GPU).")
    body = "\n".join(lines)
    if args.no_write:
        print(body)
        return
    write_section("gpu_step", body)
    write_json(f"gpu_step{'' if cuda else '-cpu'}", results)


if __name__ == "__main__":
    main()
