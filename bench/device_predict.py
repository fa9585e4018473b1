"""A device profile against measurement on the same device: the cost model's prediction of a model's
whole-network refresh at every candidate split, and the refresh measured.

    thor-plan device-profile --out FILE --cell-budget 0.25      # the profile (the GPU suite runs this)
    python bench/device_predict.py --profile FILE               # predicted vs measured, ResNet-50
    python bench/device_predict.py                              # measures the profile itself first

Predictions are what ``thor-plan profile --device-profile FILE`` would use
(:func:`thor_planner.timing.prediction.predict_candidates`: the profile's fastest accurate backend per
block size, the same for every candidate); measurements time exactly those blocks with those
backends (:func:`thor_planner.timing.candidates.time_candidates`, synthetic SPD factors of the
model's dimensions, median of ≥ 3 refreshes after a warm-up). Error = (predicted − measured) /
measured; goal: median |error| ≤ 15%.

Writes the profile as ``profiles/devices/<device>.json`` (the committed device profile; under
``$THOR_BENCH_OUT`` when set), ``results/device_predict-<device>.json`` and its section.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import OUT_ENV, device_slug, machine_line, results_root, write_json, write_section  # noqa: E402

from thor_planner.capture.collector import find_layers  # noqa: E402
from thor_planner.inputs.models import load_model  # noqa: E402
from thor_planner.profiling.profiler import default_candidates  # noqa: E402
from thor_planner.timing.candidates import TimingConfig, synthetic_factors, time_candidates  # noqa: E402
from thor_planner.timing.device_profile import load_device_profile, measure_device_profile  # noqa: E402
from thor_planner.timing.prediction import predict_candidates  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GOAL = 0.15


def profile_target(slug: str) -> Path:
    """Where the device profile is kept: the committed ``profiles/devices/<device>.json``, or the
    same path beside ``$THOR_BENCH_OUT`` (the GPU suite's copy of the repository's layout)."""
    import os

    base = results_root().parent if os.environ.get(OUT_ENV) else ROOT
    return base / "profiles" / "devices" / f"{slug}.json"


def get_profile(args, device: torch.device, target: Path):
    """The profile of ``--profile`` (copied to ``target``), or one measured now and saved there."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if args.profile is not None:
        if Path(args.profile).resolve() != target.resolve():
            shutil.copyfile(args.profile, target)
        return load_device_profile(target)
    profile = measure_device_profile(device, cell_budget_s=args.cell_budget)
    profile.source = str(target.relative_to(ROOT) if target.is_relative_to(ROOT) else target)
    profile.save(target)
    return profile


def compare(profile, model: str, device: torch.device, budget_s: float) -> tuple[list[dict], dict[int, str]]:
    """Predicted and measured refresh per candidate split of ``model``'s factors."""
    specs, _ = find_layers(load_model(model).model)
    dims = [d for s in specs for d in (s.a_dim, s.g_dim)]
    cands = default_candidates(max(dims))
    predicted, chosen = predict_candidates(profile, dims, cands, "auto")
    factors = synthetic_factors(dims, device=device)
    config = TimingConfig(budget_s=budget_s, min_repeats=3, max_repeats=7)
    measured = time_candidates(factors, cands, backends=chosen, config=config)
    rows = []
    for p, m in zip(predicted, measured):
        error = (p.median_s - m.median_s) / m.median_s
        rows.append({"split": p.candidate, "predicted_s": p.median_s, "measured_s": m.median_s,
                     "error": round(error, 4), "gflop": round(m.gflop, 4)})
    return rows, chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None, help="device profile file (default: measure one now)")
    parser.add_argument("--model", default="resnet50", help="whose factors to refresh (default resnet50)")
    parser.add_argument("--cell-budget", type=float, default=1.0, help="without --profile: seconds per cell")
    parser.add_argument("--budget", type=float, default=0.5, help="seconds of timing per candidate")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    slug = device_slug()
    target = profile_target(slug)
    profile = get_profile(args, device, target)
    start = time.perf_counter()
    rows, chosen = compare(profile, args.model, device, args.budget)
    errors = [abs(r["error"]) for r in rows]
    median = statistics.median(errors)
    met = "met" if median <= GOAL else "missed"
    write_json(f"device_predict-{slug}", {
        "device": profile.device.get("name"), "device_slug": slug, "machine": machine_line(),
        "model": args.model, "profile": str(target.name), "profile_wall_seconds": profile.wall_seconds,
        "profile_sizes": profile.sizes, "profile_counts": profile.counts,
        "backends": {str(s): n for s, n in sorted(chosen.items())}, "rows": rows,
        "median_abs_error": round(median, 4), "max_abs_error": round(max(errors), 4),
        "goal": f"median |error| <= {GOAL:.0%}: {met}",
        "compare_seconds": round(time.perf_counter() - start, 2)})
    lines = [f"## Device profile vs measurement: {args.model} whole-network refresh ({slug})", "",
             f"Machine: {machine_line()}. Profile `profiles/devices/{target.name}` "
             f"({profile.wall_seconds:.0f} s of measuring, sizes {profile.sizes}, counts {profile.counts}); "
             "per-size backends "
             f"{', '.join(f'{s}: {n}' for s, n in sorted(chosen.items()))}.", "",
             "| split | GFLOP | predicted | measured | error |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['split']} | {r['gflop']:.3g} | {r['predicted_s'] * 1e3:.2f} ms | "
              f"{r['measured_s'] * 1e3:.2f} ms | {r['error'] * 100:+.1f}% |" for r in rows]
    lines += ["", f"Median |error| {median * 100:.1f}%, largest {max(errors) * 100:.1f}% (goal: median ≤ "
              f"{GOAL * 100:.0f}%: {met})."]
    write_section("device_predict" if device.type == "cpu" else f"device_predict-{slug}", "\n".join(lines))


if __name__ == "__main__":
    main()
