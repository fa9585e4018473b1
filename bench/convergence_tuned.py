"""Time to a target test accuracy on digits with every optimizer tuned at an equal budget.

    python bench/convergence.py --tune 20 [--models cnn,mlp-wide] [--seeds 3] [--threads 1]

For each model: profile it on digits once (the planned THOR's plan and its measurements); then for
each optimizer (planned THOR, THOR-128, dense K-FAC, SGD, AdamW, mL-BFGS) one ``thor-plan tune``
study of ``--tune`` trials (TPE seed 0, training seed 0, the same epochs, target and evaluation
interval as the grid benchmark, median pruner), in a SQLite file of a temporary folder. The best
configuration of each study is then trained again with seeds 1..``--seeds`` (seeds it was not tuned
on) and the median of those training times to the target is reported (∞ when not reached).
Writes the ``convergence-tuned`` section of bench/RESULTS.md and bench/results/convergence-tuned.json.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from pathlib import Path

from thor_planner.planning.planner import make_plan
from thor_planner.profiling.profiler import ProfileConfig, run_profile
from thor_planner.timing.candidates import TimingConfig
from thor_planner.training.loop import PROFILE_NAMES, TrainConfig, load_split, train
from thor_planner.tune import TuneConfig, TuneError, run_tune
from thor_planner.tune.space import train_options

OPTIMIZERS = ("thor", "thor-128", "kfac", "sgd", "adamw", "mlbfgs")
LABELS = {"thor": "THOR (planned, tuned threshold)", "thor-128": "THOR-128", "kfac": "K-FAC (dense)", "sgd": "SGD",
          "adamw": "AdamW", "mlbfgs": "mL-BFGS"}
GOALS = {"sgd": 0.6, "adamw": 1.0, "thor-128": 1.0, "kfac": 1.0, "mlbfgs": 1.0}


def _fmt(seconds: float) -> str:
    return "∞" if math.isinf(seconds) else f"{seconds:.2f}"


def _profile(model: str, folder: Path) -> Path:
    cfg = ProfileConfig(model=PROFILE_NAMES[model], data="digits", batches=4, batch_size=32, device="cpu",
                        timing=TimingConfig(budget_s=0.2))
    measurements, _ = run_profile(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    measurements.save(folder)
    return make_plan(measurements).save(folder / "plan.json")


def _retrain(model: str, optimizer: str, result, seed: int, epochs: int, target: float, eval_every: int,
             folder: Path) -> float:
    steps_per_epoch = math.ceil(len(load_split("digits")[1]) / 32)
    options = train_options(optimizer, result.best.params, steps_per_epoch)
    plan = result.plan.save(folder / f"{model}-tuned-plan.json") if result.plan is not None else None
    cfg = TrainConfig(model=model, data="digits", optimizer=optimizer, plan=plan, epochs=epochs, seed=seed,
                      eval_every=eval_every, target_accuracy=target, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hit = train(cfg).target_seconds
    return hit if hit is not None else math.inf


def run(models: list[str], trials: int, seeds: int, epochs: int, target: float, eval_every: int,
        folder: Path) -> tuple[str, dict, list[str]]:
    """Markdown lines, the JSON data and the goal verdicts."""
    start = time.perf_counter()
    lines, data, verdicts = [], {"trials": trials, "seeds": seeds, "epochs": epochs, "target": target,
                                 "models": {}}, []
    storage = f"sqlite:///{folder / 'tune.db'}"
    for model in models:
        plan_path = _profile(model, folder / model)
        rows, medians = {}, {}
        for optimizer in OPTIMIZERS:
            cfg = TuneConfig(model=model, data="digits", optimizer=optimizer,
                             plan=plan_path if optimizer == "thor" else None, trials=trials, storage=storage,
                             study=f"{model}-{optimizer}", epochs=epochs, target_accuracy=target, seed=0,
                             eval_every=eval_every)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result = run_tune(cfg)
            except TuneError as exc:
                rows[optimizer] = {"error": str(exc)}
                medians[optimizer] = math.inf
                continue
            times = [_retrain(model, optimizer, result, seed, epochs, target, eval_every, folder)
                     for seed in range(1, seeds + 1)]
            medians[optimizer] = statistics.median(times)
            rows[optimizer] = {"best_trial": result.best.number, "tuning_seconds": result.best.value,
                               "params": result.best.params, "seconds": times, "median": medians[optimizer],
                               "counts": result.counts}
            print(f"{model} {optimizer}: median {_fmt(medians[optimizer])} s", flush=True)
        data["models"][model] = rows
        sgd = medians["sgd"]
        lines += [f"### {model} on digits, tuned ({trials} trials per optimizer)", "",
                  f"| optimizer | best trial (complete/pruned/failed) | median s to {target:.0%} (seeds 1–{seeds}) "
                  "| per seed (s) | vs SGD | best parameters |", "|---|---|---:|---|---:|---|"]
        for optimizer in OPTIMIZERS:
            row = rows[optimizer]
            if "error" in row:
                lines.append(f"| {LABELS[optimizer]} | — | ∞ | — | — | {row['error']} |")
                continue
            ratio = medians[optimizer] / sgd if math.isfinite(medians[optimizer]) and math.isfinite(sgd) else math.nan
            params = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row["params"].items())
            c = row["counts"]
            lines.append(f"| {LABELS[optimizer]} | {row['best_trial']} ({c['complete']}/{c['pruned']}/{c['fail']}) | "
                         f"{_fmt(medians[optimizer])} | {', '.join(_fmt(t) for t in row['seconds'])} | "
                         f"{ratio:.2f}× | {params} |")
        lines.append("")
        thor = medians["thor"]
        parts = []
        for other, goal in GOALS.items():
            if not (math.isfinite(thor) and math.isfinite(medians[other])):
                parts.append(f"vs {LABELS[other]}: not comparable (a median is ∞)")
                continue
            r = thor / medians[other]
            parts.append(f"vs {LABELS[other]} {r:.2f}× (goal ≤ {goal:g}×: "
                         f"{'met' if r <= goal else f'missed by {(r / goal - 1) * 100:.0f}%'})")
        verdicts.append(f"- {model}, tuned planned THOR: " + "; ".join(parts) + ".")
    data["minutes"] = (time.perf_counter() - start) / 60
    return "\n".join(lines), data, verdicts
