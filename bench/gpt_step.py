"""gpt-small on the standard library's source in bf16: the step time of AdamW, Muon, SOAP, THOR and
THOR's eigenbasis family, then as much of a time-to-target run as the time left allows.

    python bench/gpt_step.py [--seconds 60] [--batch 16] [--ttt adamw,thor]
    python bench/gpt_step.py --rehearse       # gpt-tiny on the CPU, in seconds

Model: ``gpt-small`` (GPT-2 small's shape on bytes, context 1024; ``gpt-tiny`` on a CPU), bf16
autocast, batches of ``--batch`` random windows of the running interpreter's standard library
(``thor_planner.inputs.stdlib``; the corpus's description is recorded with the results).

Optimizers, each as its documentation prescribes and with the same AdamW numbers where it stands in
for AdamW (lr 6e-4, betas (0.9, 0.95), weight decay 0.1: GPT-2 small's): ``adamw``
(``torch.optim.AdamW``); ``muon`` (``torch.optim.Muon`` on the hidden matrices + AdamW, the defaults
of ``bench/peers.py``); ``soap`` (heavyball's SOAP, compiled on CUDA, ``bench/peers.py`` defaults;
timed on CUDA in a child process with its own time limit, what is left less 20 s, since compiling can
take long; ``absent`` when
heavyball does not import); ``thor`` (``THOR(model, plan, graft="adamw")``, the plan from a quick
profile of the model on this device, its timings predicted from ``--device-profile`` when given,
its default schedule); ``eigen`` (the same plan with ``family="eigen"``: Adam in the Kronecker
eigenbasis).

Step time: a fresh model (same seed) per optimizer, ``--warmup`` untimed steps, then ``--window``
steps each timed alone (CUDA events, one synchronisation at the end): the mean, the median, and
for THOR the check points inside the window. Time to target, with what is left of ``--seconds``:
the optimizers of ``--ttt`` share it equally; each trains a fresh model with warm-up + cosine over
the steps its measured step time fits in its share, evaluating validation bits per byte (256 fixed
windows) five times; the target is ``--target``, or else the worst final value any of them reached,
so every run has a time to it.

Writes ``results/gpt_step-<device>.json`` (rewritten after every optimizer) and its section.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results import device_name, device_slug, machine_line, write_json, write_section  # noqa: E402

from thor_planner.inputs.causal import GPT_SMALL, GPT_TINY  # noqa: E402
from thor_planner.inputs.stdlib import load_corpus, train_windows, validation_windows  # noqa: E402
from thor_planner.training.schedule import LRSchedule  # noqa: E402
from thor_planner.training.workloads import TRAIN_MODELS  # noqa: E402

ADAMW = {"lr": 6e-4, "betas": (0.9, 0.95), "weight_decay": 0.1}
STEP_ORDER = ("adamw", "muon", "thor", "eigen", "soap")
VALIDATION_WINDOWS, EVALS = 256, 5
CONTEXT = {"gpt-small": GPT_SMALL.context, "gpt-tiny": GPT_TINY.context}


class Workload:
    def __init__(self, args):
        self.device = torch.device(args.device)
        self.model_name, self.batch, self.precision = args.model, args.batch, args.precision
        self.corpus = load_corpus()
        self.seq_len = CONTEXT[self.model_name]
        windows = validation_windows(self.corpus, VALIDATION_WINDOWS, self.seq_len)
        self.val = [t.to(self.device) for t in windows]

    def build(self):
        torch.manual_seed(0)
        return TRAIN_MODELS[self.model_name].build().to(self.device)

    def batches(self, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        while True:
            x, y = train_windows(self.corpus, self.batch, self.seq_len, gen)
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def loss(self, model, x, y):
        with self.autocast():
            logits = model(x)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))

    @torch.no_grad()
    def bits_per_byte(self, model) -> float:
        model.eval()
        total = sum(float(self.loss(model, x, y)) * len(x) for x, y in zip(self.val[0].split(16),
                                                                         self.val[1].split(16)))
        model.train()
        return total / len(self.val[0]) / math.log(2)

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def quick_plan(work: Workload, device_profile: str | None = None):
    """A quick profile's plan (2 batches of 4 windows); its timings predicted from ``device_profile``
    when given (no inversion or training step timed here), else measured with 0.05 s per candidate."""
    from thor_planner.planning.planner import make_plan
    from thor_planner.profiling.profiler import ProfileConfig, run_profile
    from thor_planner.timing.candidates import TimingConfig

    cfg = ProfileConfig(model=TRAIN_MODELS[work.model_name].profile_name, data="stdlib", batches=2,
                        batch_size=4, device=work.device.type, timing=TimingConfig(budget_s=0.05),
                        device_profile=device_profile)
    measurements, _ = run_profile(cfg)
    return make_plan(measurements)


def build(name: str, model, plan):
    """Optimizer ``name`` for ``model`` (see the module docstring)."""
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), **ADAMW)
    if name in ("thor", "eigen"):
        from thor_planner import THOR

        return THOR(model, plan, graft="adamw", family="eigen" if name == "eigen" else None, **ADAMW)
    from peers import absence, make

    peer = {"muon": "muon", "soap": "soap"}[name]
    reason = absence(peer)
    if reason is not None:
        raise LookupError(reason)
    return make(peer, model, {})


def timed_steps(work: Workload, model, opt, batches, count: int) -> list[float]:
    cuda = work.device.type == "cuda"
    out, events = [], [torch.cuda.Event(enable_timing=True) for _ in range(count + 1)] if cuda else []
    if cuda:
        events[0].record()
    for i in range(count):
        start = time.perf_counter()
        x, y = next(batches)
        opt.zero_grad(set_to_none=True)
        work.loss(model, x, y).backward()
        opt.step()
        if cuda:
            events[i + 1].record()
        else:
            out.append(time.perf_counter() - start)
    if cuda:
        work.sync()
        out = [a.elapsed_time(b) / 1e3 for a, b in zip(events, events[1:])]
    return out


def step_row(work: Workload, name: str, plan, warmup: int, window: int) -> dict:
    """Step time of optimizer ``name`` (ms), or why it could not run."""
    if work.device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(work.device)
    model = work.build()
    try:
        opt = build(name, model, plan)
    except LookupError as exc:
        return {"absent": str(exc)}
    batches = work.batches()
    start = time.perf_counter()
    timed_steps(work, model, opt, batches, warmup)
    work.sync()
    warm_s = time.perf_counter() - start
    checks = _checks(opt)
    ms = [t * 1e3 for t in timed_steps(work, model, opt, batches, window)]
    row = {"ms": round(statistics.fmean(ms), 3), "median_ms": round(statistics.median(ms), 3),
           "max_ms": round(max(ms), 3), "warmup_seconds": round(warm_s, 2), "steps": window}
    if checks is not None:
        row["check_points_in_window"] = _checks(opt) - checks
        row["split"] = plan.split_dim
    if work.device.type == "cuda":
        row["peak_gib"] = round(torch.cuda.max_memory_allocated(work.device) / 2**30, 3)
    return row


def _checks(opt) -> int | None:
    layers = getattr(opt, "_layers", None)
    if not layers:
        return None
    return sum(l.trace.updates + l.trace.keeps + l.trace.stops for l in layers[:1])


def child_row(args, name: str, timeout: float) -> dict:
    """``step_row`` of ``name`` in a child process cut at ``timeout`` seconds."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--row", name, "--device", args.device,
           "--model", args.model, "--batch", str(args.batch), "--precision", args.precision,
           "--warmup", str(args.warmup),
           "--window", str(args.window)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout, 1), cwd=HERE.parent)
    except subprocess.TimeoutExpired:
        return {"failed": f"not done within {timeout:.0f} s (compilation included)"}
    if done.returncode:
        return {"failed": (done.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def train_for(work: Workload, name: str, plan, seconds: float, step_ms: float) -> dict:
    """A fresh run of ``name`` over the steps ``seconds`` fits, with warm-up + cosine; its curve."""
    steps = max(int(seconds * 1e3 / step_ms), EVALS)
    model = work.build()
    opt = build(name, model, plan)
    schedule = LRSchedule(opt, steps, "cosine", warmup=0.05)
    batches, curve, train_s, wall = work.batches(seed=1), [], 0.0, time.perf_counter()
    every = max(steps // EVALS, 1)
    for t in range(steps):
        if time.perf_counter() - wall > 1.2 * seconds:  # slower than its step time said: stop, keep the curve
            return {"steps": steps, "curve": curve, "stopped": f"out of time at step {t}"}
        start = time.perf_counter()
        schedule.apply(t)
        x, y = next(batches)
        opt.zero_grad(set_to_none=True)
        loss = work.loss(model, x, y)
        loss.backward()
        opt.step()
        if (t + 1) % every == 0 or t + 1 == steps:
            value = float(loss)  # synchronises: the clock below includes the device's work
            train_s += time.perf_counter() - start
            curve.append({"step": t + 1, "seconds": round(train_s, 3), "train_loss": round(value, 4),
                          "bits_per_byte": round(work.bits_per_byte(model), 4)})
            if not math.isfinite(value):
                break
        else:
            train_s += time.perf_counter() - start
    return {"steps": steps, "curve": curve}


def time_to_target(runs: dict, target: float | None) -> tuple[float | None, dict]:
    finals = [r["curve"][-1]["bits_per_byte"] for r in runs.values() if r.get("curve")]
    level = target if target is not None else (max(finals) if finals else None)
    if level is None:
        return None, {name: None for name in runs}
    out = {}
    for name, run in runs.items():
        hit = next((p for p in run.get("curve", []) if p["bits_per_byte"] <= level), None)
        out[name] = hit["seconds"] if hit else None
    return level, out


def write(results: dict, cuda: bool, slug: str) -> None:
    write_json(f"gpt_step-{slug}", results)
    lines = [f"## {results['model']} on the standard library, {results['precision']} (`bench/gpt_step.py`, "
             f"{results['device']})", "",
             f"Machine: {machine_line()}. Corpus: Python {results['corpus']['python']} standard library, "
             f"{results['corpus']['files']} files, {results['corpus']['total_bytes']:,} bytes "
             f"(sha256 {results['corpus']['sha256'][:12]}…). Batch {results['batch']} × {results['seq_len']} "
             f"bytes; {results['warmup']} warm-up steps, {results['window']} timed.", "",
             "| optimizer | ms/step | median | / AdamW | peak GiB | note |", "|---|---:|---:|---:|---:|---|"]
    base = results["steps"].get("adamw", {}).get("ms")
    for name, row in results["steps"].items():
        if "ms" not in row:
            lines.append(f"| {name} | | | | | {row.get('absent') or row.get('failed')} |")
            continue
        rel = f"{row['ms'] / base:.2f}×" if base else ""
        note = f"split {row['split']}, {row['check_points_in_window']} check points in the window" \
            if "split" in row else ""
        peak = row.get("peak_gib", "")
        lines.append(f"| {name} | {row['ms']:.1f} | {row['median_ms']:.1f} | {rel} | {peak} | {note} |")
    ttt = results.get("time_to_target")
    if ttt:
        shown = "no value" if ttt["target"] is None else f"{ttt['target']:.3f} bits/byte"
        lines += ["", f"Time to {shown} ({ttt['rule']}), each run "
                  f"{ttt['seconds_each']:.0f} s of training:", "",
                  "| optimizer | steps | seconds to target | final bits/byte |", "|---|---:|---:|---:|"]
        for name, run in ttt["runs"].items():
            sec = ttt["seconds"].get(name)
            lines.append(f"| {name} | {run['steps']} | {'' if sec is None else f'{sec:.1f}'} | "
                         f"{run['curve'][-1]['bits_per_byte'] if run.get('curve') else ''} |")
    write_section("gpt_step" if not cuda else f"gpt_step-{slug}", "\n".join(lines), echo=False)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda when there is one, else cpu")
    parser.add_argument("--model", default=None, choices=tuple(CONTEXT),
                        help="gpt-small (CUDA) or gpt-tiny (CPU)")
    parser.add_argument("--batch", type=int, default=None, help="windows per batch (16 on CUDA, 4 on a CPU)")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (5; 1 rehearsing)")
    parser.add_argument("--window", type=int, default=None, help="timed steps (20; 3 rehearsing)")
    parser.add_argument("--seconds", type=float, default=60.0, help="the whole run's time budget")
    parser.add_argument("--ttt", default="adamw,thor", help="optimizers of the time-to-target part")
    parser.add_argument("--target", type=float, default=None, help="validation bits per byte")
    parser.add_argument("--device-profile", default=None, help="plan from this device profile's predictions")
    parser.add_argument("--rehearse", action="store_true", help="gpt-tiny on the CPU, a few seconds")
    parser.add_argument("--row", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.rehearse
    args.device = args.device or ("cuda" if cuda else "cpu")
    args.model = args.model or ("gpt-small" if args.device == "cuda" else "gpt-tiny")
    args.batch = args.batch or (16 if args.device == "cuda" else 4)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.rehearse else 5)
    args.window = args.window or (3 if args.rehearse else 20)
    return args


def main() -> None:
    start = time.perf_counter()
    args = parse_args()
    work = Workload(args)
    if args.row:  # the child of child_row
        plan = quick_plan(work, args.device_profile) if args.row in ("thor", "eigen") else None
        print(json.dumps(step_row(work, args.row, plan, args.warmup, args.window)))
        return
    cuda, slug = work.device.type == "cuda", device_slug()
    hyper = {"adamw": ADAMW, "thor": {**ADAMW, "graft": "adamw"}, "eigen": {**ADAMW, "family": "eigen"},
             "muon": "bench/peers.py defaults", "soap": "bench/peers.py defaults"}
    results = {"device": device_name() if cuda else machine_line(), "device_slug": slug, "model": args.model,
               "precision": args.precision, "batch": args.batch, "seq_len": work.seq_len,
               "warmup": args.warmup, "window": args.window, "hyperparameters": hyper,
               "corpus": work.corpus.describe(), "steps": {}}
    plan_start = time.perf_counter()
    plan = quick_plan(work, args.device_profile)
    results["plan"] = {"split": plan.split_dim, "seconds": round(time.perf_counter() - plan_start, 2),
                       "timings": f"predicted from {args.device_profile}" if args.device_profile
                       else "measured"}
    reserve = 4 if args.rehearse else 20  # the least time-to-target run worth starting
    for name in STEP_ORDER:
        left = args.seconds - (time.perf_counter() - start)
        row = child_row(args, name, max(left - reserve, 10)) if name == "soap" and cuda else \
            step_row(work, name, plan, args.warmup, args.window)
        results["steps"][name] = row
        print(f"{name}: {row}", flush=True)
        write(results, cuda, slug)
    margin = 2 if args.rehearse else 5  # the last write
    left = args.seconds - (time.perf_counter() - start) - margin
    names = [n for n in args.ttt.split(",") if "ms" in results["steps"].get(n, {})]
    if names and left > 2 * len(names):
        each = left / len(names) * 0.7  # evaluations and model builds take the rest
        runs = {n: train_for(work, n, plan, each, results["steps"][n]["ms"]) for n in names}
        target, seconds = time_to_target(runs, args.target)
        results["time_to_target"] = {"target": target, "seconds_each": each, "runs": runs, "seconds": seconds,
                                     "rule": "--target" if args.target is not None else
                                     "the worst final value of the runs"}
        print("time to target: " + json.dumps(seconds), flush=True)
    write(results, cuda, slug)


if __name__ == "__main__":
    main()
