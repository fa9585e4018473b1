"""Does the same command give the same plan? The global split over identical runs of the default
profile, on a quiet machine and with CPU-burning processes alongside.

    python bench/reproducibility.py                       # 10 quiet runs + 10 with 2 busy processes
    python bench/reproducibility.py --model resnet18 --runs 10 --busy 2

Each run is a fresh process running ``thor-plan profile``'s pipeline with its defaults (one shared
backend-choice cache, filled by the first run, as for a user). Busy runs start ``--busy`` processes
that spin on the CPU for the whole run and are stopped after it. For every run: the split, the
crossover x, its interval, the candidates the interval spans and whether the run noticed the load
(``device.busy``). Goal: the same split in ≥ 9 of 10 quiet runs (on a GPU and on a CPU), and busy
runs either agreeing with the quiet split or flagged as busy.

Writes ``bench/results/reproducibility-<device>.json`` and its section of bench/RESULTS.md
(``reproducibility-<device>`` on CUDA). ``bench/profile_speed.py --reproducibility`` writes the same
from its own runs (the GPU suite's 5 identical runs).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results import device_name, device_slug, machine_line, write_json, write_section  # noqa: E402

SPIN = "while True:\n    pass\n"


def child(model: str) -> None:
    from thor_planner.planning.planner import make_plan
    from thor_planner.profiling.profiler import ProfileConfig, run_profile

    measurements, _ = run_profile(ProfileConfig(model=model))
    plan = make_plan(measurements)
    busy = plan.device.get("busy") or {}
    print(json.dumps({"split": plan.split_dim, "crossover": plan.crossover.x, "interval": plan.crossover.interval,
                      "spans": plan.crossover.spans, "busy": busy.get("busy"),
                      "others_peak_cores": busy.get("others_peak_cores")}))


def run_once(model: str, cache: str, busy: int) -> dict:
    env = {**os.environ, "THOR_PLAN_CACHE_DIR": cache}
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(busy)]
    try:
        done = subprocess.run([sys.executable, __file__, "--child", "--model", model], env=env,
                              capture_output=True, text=True, check=True, cwd=HERE.parent)
    finally:
        for proc in spinners:
            proc.kill()
            proc.wait()
    return json.loads(done.stdout.strip().splitlines()[-1])


def summary(runs: list[dict]) -> tuple[int, int]:
    """The most common split and how many runs gave it."""
    split, count = collections.Counter(r["split"] for r in runs).most_common(1)[0]
    return split, count


def goal_line(runs: list[dict]) -> str:
    """Whether the runs agree: the same split in all of them, or the crossover interval of every run
    spanning every split the runs gave (the measurements cannot tell those candidates apart)."""
    splits = {r["split"] for r in runs}
    if len(splits) == 1:
        return f"all {len(runs)} runs gave split {next(iter(splits))} (met)"
    covered = all(splits <= set(r.get("spans") or [r["split"]]) for r in runs)
    return (f"splits {sorted(splits)}; every run's crossover interval spans them all: "
            f"{'yes (met)' if covered else 'no (missed)'}")


def write_report(device: str, model: str, quiet: list[dict], busy: int = 0, loaded: list[dict] = ()) -> None:
    """``results/reproducibility-<device>.json`` and the section (``reproducibility`` on a CPU,
    ``reproducibility-<device>`` on CUDA)."""
    import torch

    data = {"device": device, "device_name": device_name(), "machine": machine_line(), "model": model,
            "quiet": quiet, "busy_processes": busy, "busy": list(loaded), "goal": goal_line(quiet) if quiet else None}
    out = write_json(f"reproducibility-{device}", data)
    split, count = summary(quiet)
    lines = [f"## Reproducibility: `thor-plan profile --model {model}`, {len(quiet)} identical runs ({device})",
             "", f"Machine: {machine_line()}. Raw numbers: `bench/results/{out.name}`.", "",
             "| runs | splits (count) | crossover b | interval spans two candidates | flagged busy |",
             "|---|---|---|---:|---:|"]
    for name, runs in (("quiet", quiet), (f"{busy} busy processes", loaded)):
        if not runs:
            continue
        counts = ", ".join(f"{s} ({n})" for s, n in collections.Counter(r["split"] for r in runs).most_common())
        xs = [r["crossover"] for r in runs if r["crossover"] is not None]
        span = f"{min(xs):.0f}–{max(xs):.0f}" if xs else "–"
        lines.append(f"| {name} | {counts} | {span} | {sum(len(r['spans'] or []) > 1 for r in runs)} | "
                     f"{sum(bool(r['busy']) for r in runs)} |")
    met = "met" if count >= 0.9 * len(quiet) else "missed"
    lines += ["", f"Goal: the same split in ≥ 9 of 10 quiet runs (GPU suite: in all 5, or an interval that "
              f"spans them): {count} of {len(quiet)} gave {split} ({met}); {goal_line(quiet)}."]
    if loaded:
        agree = sum(r["split"] == split for r in loaded)
        flagged = sum(bool(r["busy"]) for r in loaded if r["split"] != split)
        lines.append(f"Busy runs: {agree} of {len(loaded)} gave the quiet split; of the others, {flagged} were "
                     "flagged as busy.")
    name = "reproducibility" if not torch.cuda.is_available() else f"reproducibility-{device}"
    write_section(name, "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--busy", type=int, default=2, help="CPU-burning processes during the busy runs (0: none)")
    args = parser.parse_args()
    if args.child:
        child(args.model)
        return
    device = device_slug()
    with tempfile.TemporaryDirectory(prefix="thor-plan-cache-") as cache:
        quiet = [run_once(args.model, cache, 0) for _ in range(args.runs)]
        loaded = [run_once(args.model, cache, args.busy) for _ in range(args.runs)] if args.busy else []
    write_report(device, args.model, quiet, args.busy, loaded)

if __name__ == "__main__":
    main()
