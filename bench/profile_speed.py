"""Wall time of the default ResNet-50 profile on this machine, cold and warm, by stage, and the speed
of the information-loss computation against a plain float64 ``eigvalsh`` reference.

    python bench/profile_speed.py                 # cold + 3 warm runs, then the loss speed-up
    python bench/profile_speed.py --warm 5 --no-loss-speedup
    python bench/profile_speed.py --warm 4 --no-loss-speedup --reproducibility   # the GPU suite's stage

Each run is a fresh process (imports, CUDA initialisation and allocator warm-up included, as a user
running ``thor-plan profile`` twice would see): the *cold* run starts with an empty backend-choice
cache, the *warm* runs reuse the cache the cold run filled. ``total_seconds`` is the sum of the
stages (what the CLI prints as "Measured in"); ``process_seconds`` adds imports and model loading.
Writes ``bench/results/profile_speed-<device>.json``
(``{"device", "total_seconds", "stages", "cold": {...}, "warm": [...]}``; the top-level total and
stages are the median warm run's; rewritten after every run, so a run cut short keeps what it
measured) and its section of bench/RESULTS.md (``profile_speed-<device>`` on CUDA).
``--reproducibility``: the cold and warm runs are also the identical runs of
``bench/reproducibility.py`` (splits, crossover intervals), written as its JSON and section.

Reference for the loss speed-up: float64 ``eigvalsh`` of every factor and of every diagonal block
at every candidate (blocks batched per size), i.e. the same quantity computed the direct way.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results import device_name, device_slug, machine_line, write_json, write_section  # noqa: E402

from thor_planner.utils.progress import Progress  # noqa: E402

START = time.perf_counter()


class Stopwatch(Progress):
    def __init__(self):
        self.seconds = {}

    @contextmanager
    def stage(self, name, total):
        start = time.perf_counter()
        yield lambda *a, **k: None
        self.seconds[name] = time.perf_counter() - start


def child(model: str) -> None:
    """One default profile in this process; prints one JSON line."""
    from thor_planner.planning.planner import make_plan
    from thor_planner.profiling.profiler import ProfileConfig, run_profile

    watch = Stopwatch()
    measurements, _ = run_profile(ProfileConfig(model=model), watch)
    plan = make_plan(measurements)
    busy = plan.device.get("busy") or {}
    print(json.dumps({"total_seconds": sum(watch.seconds.values()), "stages": watch.seconds,
                      "process_seconds": time.perf_counter() - START, "split": plan.split_dim,
                      "crossover": plan.crossover.x, "interval": plan.crossover.interval,
                      "spans": plan.crossover.spans, "backends_cached": plan.device.get("backends_cached"),
                      "busy": busy.get("busy"), "others_peak_cores": busy.get("others_peak_cores")}))


def run_child(cache: str, model: str = "resnet50") -> dict:
    env = {**os.environ, "THOR_PLAN_CACHE_DIR": cache}
    done = subprocess.run([sys.executable, __file__, "--child", "--model", model], env=env, capture_output=True,
                          text=True, check=True, cwd=HERE.parent)
    return json.loads(done.stdout.strip().splitlines()[-1])


def reference_losses(factor: torch.Tensor, candidates) -> list[float]:
    from thor_planner.partition import extract_blocks, partition

    f = factor.double()
    full = float(torch.linalg.eigvalsh(f)[-1])
    out = []
    for b in candidates:
        if b >= f.shape[0] or full <= 0:
            out.append(0.0)
            continue
        part = partition(f.shape[0], b)
        top = max(float(torch.linalg.eigvalsh(s)[:, -1].max()) for s in extract_blocks(f, part))
        out.append(1 - top / full)
    return out


def loss_speedup_lines() -> list[str]:
    from thor_planner.capture.collector import capture_factors
    from thor_planner.infoloss import loss_table
    from thor_planner.inputs.data import synthetic_batches
    from thor_planner.inputs.models import load_model
    from thor_planner.profiling.profiler import default_candidates

    loaded = load_model("resnet50")
    captured = capture_factors(loaded.model, synthetic_batches(loaded.input_shape, loaded.num_classes, 8, 2, 0))
    named = [(s.name, s.kind, w, f) for s in captured.specs
             for w, f in (("a", captured.a[s.name]), ("g", captured.g[s.name]))]
    cands = default_candidates(max(f.shape[0] for *_, f in named))
    fast_t = []
    for _ in range(3):
        t = time.perf_counter()
        fast = loss_table(named, cands)
        fast_t.append(time.perf_counter() - t)
    t = time.perf_counter()
    ref = [reference_losses(f, cands) for *_, f in named]
    ref_s = time.perf_counter() - t
    diff = max(abs(float(fast.iloc[i][str(b)]) - ref[i][j]) for i in range(len(named)) for j, b in enumerate(cands))
    return [
        "## Information loss: fast path vs float64 `eigvalsh` reference (ResNet-50 factors)",
        "",
        "| method | seconds |",
        "|---|---:|",
        f"| thor-plan `loss_table` (median of {len(fast_t)}) | {statistics.median(fast_t):.2f} |",
        f"| float64 `eigvalsh` of every factor and block | {ref_s:.2f} |",
        "",
        f"Speed-up {ref_s / statistics.median(fast_t):.1f}× (goal ≥ 10×); largest absolute difference in "
        f"loss over all {len(named)}×{len(cands)} values: {diff:.1e} (goal ≤ 1e-3).",
    ]


def speed_lines(device: str, model: str, cold: dict, warm: list[dict], typical: dict, name: str) -> list[str]:
    gpu = torch.cuda.is_available()
    goal_cold, goal_warm = (8.0, 5.0) if gpu else (20.0, 15.0)
    stages = list(cold["stages"])
    return [
        f"## Default profile: `thor-plan profile --model {model}` ({device})",
        "",
        f"Machine: {machine_line()}. Defaults: synthetic data, 2 batches × 8. Each run a fresh "
        "process; cold: empty backend-choice cache; warm: the cache the cold run filled. "
        f"Raw numbers: `bench/results/{name}.json`.",
        "",
        "| run | " + " | ".join(stages) + " | measured | process | split | busy |",
        "|---|" + "---:|" * (len(stages) + 2) + "---|---|",
        *[f"| {run} | " + " | ".join(f"{r['stages'].get(s, 0):.1f}" for s in stages)
          + f" | {r['total_seconds']:.1f} | {r['process_seconds']:.1f} | {r['split']} | {r['busy']} |"
          for run, r in [("cold", cold)] + [(f"warm {i + 1}", r) for i, r in enumerate(warm)]],
        "",
        f"Goals: ≤ {goal_cold:g} s cold and ≤ {goal_warm:g} s warm (measured: sum of the stages). "
        f"Cold {cold['total_seconds']:.1f} s ({'met' if cold['total_seconds'] <= goal_cold else 'missed'}), "
        f"typical warm {typical['total_seconds']:.1f} s "
        f"({'met' if typical['total_seconds'] <= goal_warm else 'missed'}).",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="resnet50", help="the model profiled (default resnet50)")
    parser.add_argument("--warm", type=int, default=3, help="warm runs after the cold one")
    parser.add_argument("--no-loss-speedup", action="store_true", help="skip the information-loss comparison")
    parser.add_argument("--reproducibility", action="store_true",
                        help="also write bench/reproducibility.py's report from these runs")
    args = parser.parse_args()
    if args.child:
        child(args.model)
        return
    device = device_slug()
    name = f"profile_speed-{device}"
    runs: list[dict] = []

    def save() -> dict:
        cold, warm = runs[0], runs[1:]
        typical = sorted(warm, key=lambda r: r["total_seconds"])[len(warm) // 2] if warm else cold
        write_json(name, {"device": device, "device_name": device_name(), "machine": machine_line(),
                          "model": args.model, "total_seconds": typical["total_seconds"], "stages": typical["stages"],
                          "cold": cold, "warm": warm})
        return typical

    with tempfile.TemporaryDirectory(prefix="thor-plan-cache-") as cache:
        for i in range(1 + args.warm):
            runs.append(run_child(cache, args.model))
            print(f"{'cold' if i == 0 else f'warm {i}'}: {runs[-1]['total_seconds']:.1f} s measured, "
                  f"{runs[-1]['process_seconds']:.1f} s process, split {runs[-1]['split']}", flush=True)
            typical = save()
    lines = speed_lines(device, args.model, runs[0], runs[1:], typical, name)
    if not args.no_loss_speedup:
        lines += [""] + loss_speedup_lines()
    write_section("profile_speed" if not torch.cuda.is_available() else name, "\n".join(lines))
    if args.reproducibility:
        from reproducibility import write_report

        write_report(device, args.model, runs)

if __name__ == "__main__":
    main()
