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

Writes ``bench/results/reproducibility-<device>.json`` and its section of bench/RESULTS.md.
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
from results import machine_line, write_section  # noqa: E402

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
    from thor_planner.timing.device import device_info, resolve_device
    from thor_planner.timing.device_profile import device_slug

    device = device_slug(device_info(resolve_device("auto"), "auto"))
    with tempfile.TemporaryDirectory(prefix="thor-plan-cache-") as cache:
        quiet = [run_once(args.model, cache, 0) for _ in range(args.runs)]
        loaded = [run_once(args.model, cache, args.busy) for _ in range(args.runs)] if args.busy else []
    out = HERE / "results" / f"reproducibility-{device}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"device": device, "machine": machine_line(), "model": args.model,
                               "quiet": quiet, "busy_processes": args.busy, "busy": loaded}, indent=1) + "\n")
    split, count = summary(quiet)
    lines = [f"## Reproducibility: `thor-plan profile --model {args.model}`, {args.runs} identical runs ({device})",
             "", f"Machine: {machine_line()}. Raw numbers: `bench/results/{out.name}`.", "",
             "| runs | splits (count) | crossover b | interval spans two candidates | flagged busy |",
             "|---|---|---|---:|---:|"]
    for name, runs in (("quiet", quiet), (f"{args.busy} busy processes", loaded)):
        if not runs:
            continue
        counts = ", ".join(f"{s} ({n})" for s, n in collections.Counter(r["split"] for r in runs).most_common())
        xs = [r["crossover"] for r in runs if r["crossover"] is not None]
        span = f"{min(xs):.0f}–{max(xs):.0f}" if xs else "–"
        lines.append(f"| {name} | {counts} | {span} | {sum(len(r['spans'] or []) > 1 for r in runs)} | "
                     f"{sum(bool(r['busy']) for r in runs)} |")
    lines += ["", f"Goal: the same split in ≥ 9 of {args.runs} quiet runs: {count} of {args.runs} gave {split} "
              f"({'met' if count >= 0.9 * args.runs else 'missed'})."]
    if loaded:
        agree = sum(r["split"] == split for r in loaded)
        flagged = sum(bool(r["busy"]) for r in loaded if r["split"] != split)
        lines.append(f"Busy runs: {agree} of {len(loaded)} gave the quiet split; of the others, {flagged} were "
                     "flagged as busy.")
    write_section("reproducibility", "\n".join(lines))


if __name__ == "__main__":
    main()
