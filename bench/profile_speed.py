"""Wall time of the default ResNet-50 profile on this machine, by stage, and the speed of the
information-loss computation against a plain float64 ``eigvalsh`` reference on the same factors.

    python bench/profile_speed.py            # writes its section of bench/RESULTS.md

Reference: float64 ``eigvalsh`` of every factor and of every diagonal block at every candidate
(blocks batched per size), i.e. the same quantity computed the direct way.
"""

from __future__ import annotations

import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import machine_line, write_section  # noqa: E402

from thor_planner.infoloss import loss_table  # noqa: E402
from thor_planner.partition import extract_blocks, partition  # noqa: E402
from thor_planner.profiling.profiler import ProfileConfig, run_profile  # noqa: E402
from thor_planner.utils.progress import Progress  # noqa: E402


class Stopwatch(Progress):
    def __init__(self):
        self.seconds = {}

    @contextmanager
    def stage(self, name, total):
        start = time.perf_counter()
        yield lambda *a, **k: None
        self.seconds[name] = time.perf_counter() - start


def reference_losses(factor: torch.Tensor, candidates) -> list[float]:
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


def main() -> None:
    runs = []
    for _ in range(2):
        watch = Stopwatch()
        start = time.perf_counter()
        measurements, captured = run_profile(ProfileConfig(model="resnet50"), watch)
        runs.append((time.perf_counter() - start, watch.seconds))
    total, stages = min(runs, key=lambda r: r[0])
    cands = measurements.candidates
    named = [(s.name, s.kind, w, f) for s in captured.specs for w, f in (("a", captured.a[s.name]), ("g", captured.g[s.name]))]

    fast_t, ref_t = [], []
    for _ in range(3):
        t = time.perf_counter(); fast = loss_table(named, cands); fast_t.append(time.perf_counter() - t)
    t = time.perf_counter()
    ref = [reference_losses(f, cands) for *_, f in named]
    ref_t.append(time.perf_counter() - t)
    diff = max(abs(float(fast.iloc[i][str(b)]) - ref[i][j]) for i in range(len(named)) for j, b in enumerate(cands))

    lines = [
        "## Default profile: `thor-plan profile --model resnet50` (CPU)",
        "",
        f"Machine: {machine_line()}. Defaults: synthetic data, 2 batches × 8 at 224×224, "
        f"{len(named)} factors, candidates {cands}. Best of {len(runs)} runs "
        f"(totals {', '.join(f'{r[0]:.1f}' for r in runs)} s).",
        "",
        "| stage | seconds |",
        "|---|---:|",
        *[f"| {k} | {v:.1f} |" for k, v in stages.items()],
        f"| **total** | **{total:.1f}** |",
        "",
        "Goal: ≤ 30 s total on 2 cores.",
        "",
        "## Information loss: fast path vs float64 `eigvalsh` reference (ResNet-50 factors)",
        "",
        "| method | seconds |",
        "|---|---:|",
        f"| thor-plan `loss_table` (median of {len(fast_t)}) | {statistics.median(fast_t):.2f} |",
        f"| float64 `eigvalsh` of every factor and block | {ref_t[0]:.2f} |",
        "",
        f"Speed-up {ref_t[0] / statistics.median(fast_t):.1f}× (goal ≥ 10×); largest absolute difference in "
        f"loss over all {len(named)}×{len(cands)} values: {diff:.1e} (goal ≤ 1e-3).",
    ]
    write_section("profile_speed", "\n".join(lines))


if __name__ == "__main__":
    main()
