"""Profile time of the plans for Distributed Shampoo and SOAP: ``thor-plan profile --model gpt-tiny
--data stdlib --for shampoo`` (and ``--for soap``) on this machine, one run each, by stage, with the
plan each made.

    python bench/peer_plans.py                          # shampoo, then soap, on the CPU
    python bench/peer_plans.py --targets shampoo --device cuda

Each run is a fresh process (imports and model loading included in ``process_seconds``; the stages
are what the CLI prints as "Measured in"). The timings of a shared machine move with the other
processes' load: the section records the load average before each run and the profiler's own
busy monitor (other processes' peak cores while timing). Writes ``bench/results/peer_plans-<device>.json``,
each run's plan as ``bench/results/peer_plans-<device>-<target>.plan.json`` (``thor-plan show`` reads
it) and its section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results import machine_line, write_json, write_section  # noqa: E402

CHILD = r"""
import json, sys, time
from contextlib import contextmanager
from thor_planner.utils.progress import Progress
from thor_planner.profiling.profiler import ProfileConfig, run_profile
from thor_planner.planning.planner import make_plan
from thor_planner.profiling.outputs import write_profile

class Stopwatch(Progress):
    def __init__(self):
        self.seconds = {}
    @contextmanager
    def stage(self, name, total):
        start = time.perf_counter()
        yield lambda *a, **k: None
        self.seconds[name] = time.perf_counter() - start
    def note(self, text):
        print(text, file=sys.stderr)

target, device, out = sys.argv[1], sys.argv[2], sys.argv[3]
watch = Stopwatch()
m, _ = run_profile(ProfileConfig(model="gpt-tiny", data="stdlib", device=device, target=target), watch)
plan = make_plan(m)
write_profile(out, m, plan)
print(json.dumps({"stages": watch.seconds, "candidates": plan.candidates,
                  "loss_fraction": plan.curves["loss_fraction"], "refresh_seconds": plan.curves["inversion_seconds"],
                  "block_size": plan.block_size, "refresh_interval": plan.refresh_interval,
                  "step_seconds": plan.rule["step_seconds"], "crossover_x": plan.crossover.x,
                  "warning": plan.crossover.warning, "busy": plan.device.get("busy", {}),
                  "parameters": len(plan.parameters), "skipped": len(plan.skipped),
                  "batches": plan.capture["batches"]}))
"""


def run(target: str, device: str) -> dict:
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", CHILD, target, device, out], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent)] + sys.path)})
        wall = time.perf_counter() - start
        if proc.returncode == 0:
            plan = HERE / "results" / f"peer_plans-{device}-{target}.plan.json"
            plan.parent.mkdir(exist_ok=True)
            plan.write_text((Path(out) / "plan.json").read_text())
    if proc.returncode != 0:
        raise SystemExit(f"profile --for {target} failed:\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"target": target, "process_seconds": wall, "load_before": load,
            "total_seconds": sum(result["stages"].values()), **result}


def section(runs: list[dict], device: str) -> str:
    lines = [f"## Plans for Shampoo and SOAP: profile time on gpt-tiny (`bench/peer_plans.py`, {device})", "",
             f"Machine: {machine_line()}. **Shared with other processes while measuring** (load average before "
             "each run below; the profiler's busy monitor reports the others' peak cores while timing): the "
             "seconds are one run each and noisy, the refresh times most of all.", ""]
    for r in runs:
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in r["stages"].items())
        busy = r["busy"]
        lines += [f"### `thor-plan profile --model gpt-tiny --data stdlib --for {r['target']}`", "",
                  f"- Measured in **{r['total_seconds']:.1f} s** ({stages}); {r['process_seconds']:.1f} s for the "
                  f"whole process; load average {r['load_before']:.1f} before it; other processes' peak "
                  f"{busy.get('others_peak_cores', '?')} cores while timing "
                  f"({busy.get('disturbed', '?')} of {busy.get('measurements', '?')} measurements disturbed).",
                  f"- {r['batches']} batches of 8 windows; {r['parameters']} parameters planned, {r['skipped']} "
                  "skipped.",
                  f"- Plan: block size **{r['block_size']}**, refresh interval **{r['refresh_interval']}** steps "
                  f"(step {r['step_seconds'] * 1e3:.0f} ms, 5% overhead); curves cross at "
                  + (f"b≈{r['crossover_x']:.0f}." if r["crossover_x"] is not None else "no b (they do not cross)."),
                  "", "| block size | " + " | ".join(map(str, r["candidates"])) + " |",
                  "|---|" + "---|" * len(r["candidates"]),
                  "| parameters with loss < 1% | " + " | ".join(f"{v:.0%}" for v in r["loss_fraction"]) + " |",
                  "| refresh (s) | " + " | ".join(f"{v:.3g}" for v in r["refresh_seconds"]) + " |", "",
                  f"The plan: `bench/results/peer_plans-{device}-{r['target']}.plan.json` "
                  f"(`thor-plan show` prints it).", ""]
        if r["warning"]:
            lines += [f"Warning printed: {r['warning']}", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="shampoo,soap")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    runs = [run(t, args.device) for t in args.targets.split(",")]
    write_json(f"peer_plans-{args.device}", {"machine": machine_line(), "runs": runs})
    write_section(f"peer_plans-{args.device}", section(runs, args.device))


if __name__ == "__main__":
    main()
