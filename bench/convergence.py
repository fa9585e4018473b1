"""Training time to a target test accuracy on digits: planned THOR vs THOR-128, dense K-FAC, SGD, AdamW.

    python bench/convergence.py [--models cnn,mlp-wide] [--seeds 5] [--threads 1]   # writes its section
    python bench/convergence.py --mlm [--seeds 1] [--mlm-epochs 3]   # bert-tiny on text (own section)
    python bench/convergence.py --mlm --mlm-epochs 10 --mlm-lrs thor=1e-3/3e-3,adamw=1e-3/3e-3,...   # longer run
    python bench/convergence.py --tune 20 [--seeds 3]   # every optimizer tuned at 20 trials (own section)

For each model: profile it on digits (``run_profile``) and plan it twice, with the default crossover
rule and with the budget rule the planner recommends when the crossover is degenerate; then
every optimizer trains with every learning rate of its family's grid and every seed
(``thor_planner.training.train``: batch 32, cosine schedule over ``EPOCHS`` epochs, weight decay
5e-4, evaluation every ``EVAL_EVERY`` steps outside the clock, stop at the first evaluation at or
above ``TARGET``). Time to target = training seconds at that evaluation (∞ when never reached);
per optimizer the learning rate with the smallest median over seeds is reported.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import machine_line, write_json, write_section  # noqa: E402

from thor_planner.optim.guard import DivergedError  # noqa: E402
from thor_planner.planning.planner import Rule, RuleConfig, make_plan  # noqa: E402
from thor_planner.profiling.profiler import ProfileConfig, run_profile  # noqa: E402
from thor_planner.timing.candidates import TimingConfig  # noqa: E402
from thor_planner.training.loop import PROFILE_NAMES, TrainConfig, train  # noqa: E402

TARGET = 0.97
EPOCHS = 20
EVAL_EVERY = 5
SGD_GRID = (0.01, 0.03, 0.1, 0.2)
THOR_GRID = SGD_GRID  # THOR's steps are grafted to SGD's length: SGD's grid is THOR's
GRIDS = {"thor": THOR_GRID, "thor-budget": THOR_GRID, "thor-128": THOR_GRID, "kfac": THOR_GRID,
         "sgd": SGD_GRID, "adamw": (0.001, 0.003, 0.01, 0.02)}
#: How the step size is set (cnn only): the planned THOR with grafting off, with K-FAC's KL clip
#: instead, and with both. ``(graft, kl_clip)``.
STEP_SIZE = {"thor-raw": (None, None), "thor-kl": (None, 1e-3), "thor-graft-kl": ("sgd", 1e-3)}
LABELS = {"thor": "THOR (planned, crossover)", "thor-budget": "THOR (planned, budget)", "thor-128": "THOR-128",
          "kfac": "K-FAC (dense)", "sgd": "SGD", "adamw": "AdamW", "thor-raw": "THOR (planned), no grafting",
          "thor-kl": "THOR (planned), KL clip 1e-3 instead of grafting",
          "thor-graft-kl": "THOR (planned), grafting + KL clip 1e-3"}


def profile(model: str, folder: Path):
    start = time.perf_counter()
    cfg = ProfileConfig(model=PROFILE_NAMES[model], data="digits", batches=4, batch_size=32, device="cpu",
                        timing=TimingConfig(budget_s=0.2))
    measurements, _ = run_profile(cfg)
    plan = make_plan(measurements)
    budget = make_plan(measurements, RuleConfig(name=Rule.budget))  # --rule budget, default overhead/interval
    paths = {"thor": plan.save(folder / f"{model}-plan.json"),
             "thor-budget": budget.save(folder / f"{model}-budget-plan.json")}
    return plan, budget, paths, time.perf_counter() - start


def fmt(seconds: float) -> str:
    return "∞" if math.isinf(seconds) else f"{seconds:.2f}"


def run_model(model: str, seeds: int, folder: Path) -> tuple[list[str], dict, dict]:
    plan, budget, plan_paths, profile_s = profile(model, folder)
    grids = dict(GRIDS, **({k: THOR_GRID for k in STEP_SIZE} if model == "cnn" else {}))
    grid: dict[tuple[str, float], list[tuple[float, float, float]]] = {}
    diverged: dict[tuple[str, float], int] = {}
    for seed in range(seeds):  # seeds outermost: slow drifts of the machine spread over every method
        for key, lrs in grids.items():
            graft, kl_clip = STEP_SIZE.get(key, ("sgd", None))
            for lr in lrs:
                planned = key in plan_paths or key in STEP_SIZE
                cfg = TrainConfig(model=model, data="digits", optimizer="thor" if planned else key, lr=lr,
                                  epochs=EPOCHS, seed=seed, eval_every=EVAL_EVERY, target_accuracy=TARGET,
                                  plan=plan_paths.get(key, plan_paths["thor"]) if planned else None,
                                  **({"graft": graft, "kl_clip": kl_clip} if key not in ("sgd", "adamw") else {}))
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # THOR's NaN-step warnings on diverging learning rates
                        result = train(cfg)
                except DivergedError:
                    diverged[(key, lr)] = diverged.get((key, lr), 0) + 1
                    grid.setdefault((key, lr), []).append((math.inf, math.inf, math.nan))
                    continue
                diverged[(key, lr)] = diverged.get((key, lr), 0) + (result.stopped == "diverged")
                hit = result.target_seconds
                grid.setdefault((key, lr), []).append((hit if hit is not None else math.inf,
                                                       result.steps if hit is not None else math.inf,
                                                       result.seconds / result.steps))
        print(f"{model}: seed {seed} done", flush=True)
    best = {}
    for optimizer, lrs in grids.items():
        lr = min(lrs, key=lambda lr: (statistics.median(r[0] for r in grid[(optimizer, lr)]),
                                      statistics.median(r[1] for r in grid[(optimizer, lr)])))
        runs = grid[(optimizer, lr)]
        per_step = [r[2] for r in runs if math.isfinite(r[2])]
        best[optimizer] = (lr, statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs),
                           statistics.median(per_step) if per_step else math.nan, runs)
    def splits(p):
        return ", ".join(f"{lp.name} {lp.a_split}/{lp.g_split}" for lp in p.layers)

    dims = ", ".join(f"{lp.name} {lp.a_dim}/{lp.g_dim}" for lp in plan.layers)
    sgd = best["sgd"][1]
    lines = [
        f"### {model} on digits (factor dims A/G: {dims})",
        "",
        f"Plan: `thor-plan profile --model {PROFILE_NAMES[model]} --data digits --batches 4 --batch-size 32 "
        f"--time-budget 0.2` (in-process, {profile_s:.1f} s, not counted below): global split "
        f"**{plan.split_dim}** (crossover x = {plan.crossover.x if plan.crossover.x is None else round(plan.crossover.x, 1)}); "
        f"per-layer A/G splits {splits(plan)}."
        + (f" Planner warning: {plan.crossover.warning}" if plan.crossover.warning else "")
        + f" Budget rule (`--rule budget`, overhead 0.05 of a step, interval 100): global split "
        f"**{budget.split_dim}**; per-layer A/G splits {splits(budget)}.",
        "",
        f"| optimizer | best lr | median s to {TARGET:.0%} | per seed (s) | median steps | ms/step | vs SGD |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for optimizer, (lr, med, steps, per_step, runs) in best.items():
        ratio = med / sgd if math.isfinite(med) and math.isfinite(sgd) else math.nan
        lines.append(f"| {LABELS[optimizer]} | {lr:g} | {fmt(med)} | {', '.join(fmt(r[0]) for r in runs)} | "
                     f"{steps if math.isinf(steps) else int(steps)} | {per_step * 1e3:.2f} | {ratio:.2f}× |")
    lines += ["", "All learning rates (median seconds to target; runs that reached it; runs that diverged):", "",
              "| optimizer | " + " | ".join(f"lr {i + 1}" for i in range(4)) + " |", "|---|---|---|---|---|"]
    for optimizer, lrs in grids.items():
        cells = []
        for lr in lrs:
            runs = grid[(optimizer, lr)]
            cells.append(f"{lr:g}: {fmt(statistics.median(r[0] for r in runs))} "
                         f"({sum(math.isfinite(r[0]) for r in runs)}/{len(runs)} reached, "
                         f"{diverged.get((optimizer, lr), 0)} diverged)")
        lines.append(f"| {LABELS[optimizer]} | " + " | ".join(cells) + " |")
    sgd_lr = best["sgd"][0]
    thor_keys = [k for k in grids if k not in ("sgd", "adamw")]
    at_sgd = {k: diverged.get((k, sgd_lr), 0) for k in thor_keys}
    lines += ["", f"Divergence at SGD's best rate ({sgd_lr:g}): " + ", ".join(
        f"{LABELS[k]} {n}/{seeds}" for k, n in at_sgd.items()) + "."]
    data = {"plan_split": plan.split_dim, "budget_split": budget.split_dim,
            "best": {k: {"lr": v[0], "median_seconds": v[1], "median_steps": v[2], "ms_per_step": v[3] * 1e3,
                         "per_seed_seconds": [r[0] for r in v[4]]} for k, v in best.items()},
            "grid": {f"{k}@{lr:g}": {"seconds": [r[0] for r in runs], "diverged": diverged.get((k, lr), 0)}
                     for (k, lr), runs in grid.items()},
            "diverged_at_sgd_best_lr": at_sgd}
    return lines, {k: v[1] for k, v in best.items()}, data


def verdict(model: str, t: dict) -> list[str]:
    out = []
    for key in ("thor", "thor-budget"):
        thor, parts = t[key], []
        for name, other, goal in (("SGD", t["sgd"], 0.6), ("THOR-128", t["thor-128"], 1.0),
                                  ("dense K-FAC", t["kfac"], 1.0)):
            if not (math.isfinite(thor) and math.isfinite(other)):
                parts.append(f"vs {name}: not comparable (a median is ∞)")
                continue
            r = thor / other
            verdict = "met" if r <= goal else f"missed by {(r / goal - 1) * 100:.0f}%"
            parts.append(f"vs {name} {r:.2f}× (goal ≤ {goal:g}×: {verdict})")
        out.append(f"- {model}, {LABELS[key]}: " + "; ".join(parts) + ".")
    return out


#: bert-tiny grids: THOR variants are grafted to AdamW (``graft="adamw"``, a drop-in for AdamW: the
#: choice for transformers), so they share AdamW's grid; SGD and LAMB their own.
MLM_GRIDS = {"thor": (1e-3, 3e-3, 1e-2), "thor-128": (1e-3, 3e-3, 1e-2), "adamw": (1e-3, 3e-3, 1e-2),
             "lamb": (0.01, 0.03, 0.1), "sgd": (0.03, 0.1, 0.3)}
MLM_LABELS = {"thor": "THOR (planned), AdamW grafting", "thor-128": "THOR-128, AdamW grafting",
              "adamw": "AdamW", "lamb": "LAMB", "sgd": "SGD (momentum 0.9)"}
MLM_EVAL_EVERY = 20


def first_time(records, accuracy: float) -> float:
    """Training seconds at the first evaluation reaching ``accuracy`` (∞ if none)."""
    return next((r.seconds for r in records if r.test_accuracy >= accuracy), math.inf)


def run_mlm(seeds: int, epochs: int, folder: Path, grids: dict | None = None) -> tuple[str, dict]:
    """bert-tiny on text: masked-token accuracy against training time, every optimizer over a grid of
    three learning rates (equal budgets: same epochs, same grid size); per optimizer the rate with the
    best median final accuracy. Goal: planned THOR reaches AdamW's final accuracy in ≤ 0.7× AdamW's time.
    ``grids``: one learning rate per optimizer instead (a longer run at the rates a grid run chose)."""
    grids = grids or MLM_GRIDS
    start = time.perf_counter()
    cfg = ProfileConfig(model="bert-tiny", data="text", batches=4, batch_size=32, device="cpu",
                        timing=TimingConfig(budget_s=0.2))
    plan = make_plan(run_profile(cfg)[0])
    plan_path = plan.save(folder / "bert-tiny-plan.json")
    profile_s = time.perf_counter() - start
    runs: dict[tuple[str, float], list] = {}
    for seed in range(seeds):
        for key, lrs in grids.items():
            for lr in lrs:
                tc = TrainConfig(model="bert-tiny", data="text", optimizer=key, lr=lr, epochs=epochs, seed=seed,
                                 eval_every=MLM_EVAL_EVERY, plan=plan_path if key == "thor" else None,
                                 graft="adamw" if key in ("thor", "thor-128") else "sgd")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    runs.setdefault((key, lr), []).append(train(tc))
                r = runs[(key, lr)][-1]
                print(f"bert-tiny seed {seed} {key} lr {lr:g}: final accuracy {r.records[-1].test_accuracy:.4f} "
                      f"({r.seconds:.0f} s, {r.stopped})", flush=True)
    final = {k: statistics.median(r.records[-1].test_accuracy for r in rs) for k, rs in runs.items()}
    best = {key: max(lrs, key=lambda lr: final[(key, lr)]) for key, lrs in grids.items()}
    adamw = runs[("adamw", best["adamw"])]
    target = final[("adamw", best["adamw"])]
    adamw_s = statistics.median(first_time(r.records, target) for r in adamw)
    per_epoch = {}
    for key, lr in best.items():
        r = runs[(key, lr)][0]
        per_epoch[key] = [x for x in r.records if x.step % r.steps_per_epoch == 0]
    single = grids is not MLM_GRIDS  # --mlm-lrs: a longer run at rates a grid run chose
    lrs_arg = ",".join(f"{k}={'/'.join(f'{lr:g}' for lr in lrs)}" for k, lrs in grids.items())
    lines = [
        "## Masked-token accuracy on text: bert-tiny, longer run at the grid's rates "
        "(`bench/convergence.py --mlm --mlm-lrs`)" if single else
        "## Masked-token accuracy on text: bert-tiny (`bench/convergence.py --mlm`)",
        "",
        f"Machine: {machine_line()}; load average at the end {os.getloadavg()[0]:.2f}. Command: "
        f"`python bench/convergence.py --mlm --seeds {seeds} --mlm-epochs {epochs}"
        + (f" --mlm-lrs {lrs_arg}" if single else "") + "` "
        f"({(time.perf_counter() - start) / 60:.1f} min, 1 thread). Data: Python's bundled documentation, byte "
        f"tokens, 128 per sequence, 90/10 split, 15% masked (fixed). Every run: batch 32, weight decay 5e-4, cosine "
        f"schedule over {epochs} epochs ({runs[('adamw', best['adamw'])][0].steps_per_epoch} steps each), "
        f"evaluation every {MLM_EVAL_EVERY} steps outside the clock. "
        + ("Learning rates from the 3-rate grid run (the section above): each optimizer at the rate it "
           "chose there, the AdamW-family ones (THOR variants, AdamW) also at their other good rate; per "
           "optimizer the rate with the best final accuracy. " if single else
           "Equal budgets: every optimizer gets the same epochs and a grid of three learning rates; per "
           f"optimizer the rate with the best median final accuracy over seeds 0–{seeds - 1}. ")
        + "THOR variants use `graft='adamw'` (AdamW's grid, betas "
        "(0.9, 0.999); embeddings and LayerNorm get AdamW) and are told the masked-token count "
        f"(`step(loss_samples=…)`). Plan (`thor-plan profile --model bert-tiny --data text --batches 4 "
        f"--batch-size 32 --time-budget 0.2`, {profile_s:.1f} s, not counted): global split {plan.split_dim}"
        + (f" (warning: {plan.crossover.warning})" if plan.crossover.warning else "") + "; "
        + ", ".join(f"{lp.name.replace('bert.encoder.layer.', 'L')} {lp.a_split}/{lp.g_split}"
                    for lp in plan.layers[:6]) + (" …" if len(plan.layers) > 6 else "") + ".",
        "",
        f"Target: AdamW's final masked-token accuracy {target:.4f} (lr {best['adamw']:g}), reached in "
        f"{fmt(adamw_s)} s.",
        "",
        "| optimizer | best lr | final accuracy (median) | accuracy after each epoch (seed 0) | ms/step "
        "| s to AdamW's final accuracy | vs AdamW |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    data = {"machine": machine_line(), "epochs": epochs, "seeds": seeds, "plan_split": plan.split_dim,
            "target": target, "adamw_seconds": adamw_s, "best": {},
            "grid": {f"{k}@{lr:g}": {"final_accuracy": [r.records[-1].test_accuracy for r in rs],
                                     "seconds": [r.seconds for r in rs], "stopped": [r.stopped for r in rs]}
                     for (k, lr), rs in runs.items()}}
    for key, lr in best.items():
        rs = runs[(key, lr)]
        t = statistics.median(first_time(r.records, target) for r in rs)
        ms = statistics.median(r.seconds / r.steps for r in rs) * 1e3
        ratio = f"{t / adamw_s:.2f}×" if math.isfinite(t) and math.isfinite(adamw_s) else "—"
        lines.append(f"| {MLM_LABELS[key]} | {lr:g} | {final[(key, lr)]:.4f} | "
                     f"{', '.join(f'{x.test_accuracy:.3f}' for x in per_epoch[key])} | {ms:.0f} | {fmt(t)} | {ratio} |")
        data["best"][key] = {"lr": lr, "final_accuracy": final[(key, lr)], "seconds_to_target": t, "ms_per_step": ms,
                             "epoch_accuracy": [x.test_accuracy for x in per_epoch[key]]}
    width = max(len(lrs) for lrs in grids.values())
    lines += ["", "All learning rates (median final accuracy; seconds to AdamW's final accuracy):", "",
              "| optimizer | " + " | ".join(f"lr {i + 1}" for i in range(width)) + " |",
              "|---|" + "---|" * width]
    for key, lrs in grids.items():
        cells = [f"{lr:g}: {final[(key, lr)]:.4f}; "
                 f"{fmt(statistics.median(first_time(r.records, target) for r in runs[(key, lr)]))} s" for lr in lrs]
        lines.append(f"| {MLM_LABELS[key]} | " + " | ".join(cells + [""] * (width - len(lrs))) + " |")
    thor_s = statistics.median(first_time(r.records, target) for r in runs[("thor", best["thor"])])
    r = thor_s / adamw_s if math.isfinite(thor_s) and math.isfinite(adamw_s) else math.inf
    verdict = (f"Goal (planned THOR ≤ 0.7× AdamW's time to AdamW's final accuracy): {'met' if r <= 0.7 else 'missed'} "
               + (f"({r:.2f}×)." if math.isfinite(r) else "(THOR never reached AdamW's final accuracy)."))
    data["goal"] = verdict
    return "\n".join(lines[:2] + [verdict, ""] + lines[2:]), data


def tuned(args) -> None:
    """``--tune N``: every optimizer tuned with N trials, best configurations re-trained on seeds 1..seeds."""
    from convergence_tuned import run

    with tempfile.TemporaryDirectory() as tmp:
        body, data, verdicts = run(args.models.split(","), args.tune, args.seeds, EPOCHS, TARGET, EVAL_EVERY, Path(tmp))
    text = "\n".join([
        "## Time to target accuracy on digits, every optimizer tuned (`bench/convergence.py --tune`)", "",
        f"Machine: {machine_line()}; load average at the end {os.getloadavg()[0]:.2f}. Command: `python "
        f"bench/convergence.py --tune {args.tune} --models {args.models} --seeds {args.seeds} --threads {args.threads}` "
        f"({data['minutes']:.1f} min). One `thor-plan tune` study per optimizer ({args.tune} trials, TPE seed 0, "
        f"training seed 0, median pruner, {EPOCHS} epochs, evaluation every {EVAL_EVERY} steps, target "
        f"{TARGET:.0%}); its best configuration re-trained with seeds 1–{args.seeds}, median reported.", "",
        "Goals:", *verdicts, "", body])
    if args.no_write:
        print(text)
    else:
        write_section("convergence-tuned", text)
        write_json("convergence-tuned", data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn,mlp-wide")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--mlm", action="store_true", help="run only the bert-tiny on text case")
    parser.add_argument("--mlm-epochs", type=int, default=3)
    parser.add_argument("--mlm-lrs", default=None, metavar="KEY=LR[/LR...],...",
                        help="learning rates per optimizer (thor, thor-128, adamw, lamb, sgd) instead of the "
                             "grids: a longer run at the rates a grid run chose (own section)")
    parser.add_argument("--tune", type=int, default=0, metavar="TRIALS",
                        help="tune every optimizer with this many trials first (bench/convergence_tuned.py)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.tune:
        tuned(args)
        return
    if args.mlm:
        with tempfile.TemporaryDirectory() as tmp:
            grids = None
            if args.mlm_lrs:
                grids = {k: tuple(float(x) for x in v.split("/"))
                         for k, v in (item.split("=") for item in args.mlm_lrs.split(","))}
                unknown = set(grids) - set(MLM_GRIDS)
                if unknown or not grids:
                    parser.error(f"--mlm-lrs: unknown optimizer(s) {sorted(unknown)}; use {sorted(MLM_GRIDS)}")
                if "adamw" not in grids or "thor" not in grids:
                    parser.error("--mlm-lrs must give adamw (the target) and thor (the goal's subject)")
            text, data = run_mlm(args.seeds, args.mlm_epochs, Path(tmp), grids)
        name = "convergence-mlm-long" if grids else "convergence-mlm"
        if args.no_write:
            print(text)
        else:
            write_section(name, text)
            write_json(name, {**data, "command": " ".join(sys.argv)})
        return
    start = time.perf_counter()
    body, verdicts, figures = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            lines, times, figures[model] = run_model(model, args.seeds, Path(tmp))
            body += lines + [""]
            verdicts += verdict(model, times)
            figures[model]["goals"] = verdict(model, times)
    total = time.perf_counter() - start
    head = [
        "## Time to target accuracy on digits (`bench/convergence.py`)",
        "",
        f"Machine: {machine_line()}; load average at the end {os.getloadavg()[0]:.2f}. "
        f"Command: `python bench/convergence.py --models {args.models} --seeds {args.seeds} --threads {args.threads}` "
        f"({total / 60:.1f} min).",
        f"Target: test accuracy ≥ {TARGET:.0%} on the 360-image digits test split (scikit-learn's 8×8 digits, "
        f"stratified 80/20, seed 0). Every run: batch 32, weight decay 5e-4, cosine learning rate over "
        f"{EPOCHS} epochs (45 steps each), evaluation every {EVAL_EVERY} steps outside the clock, stop at the "
        f"target; ∞ = not reached in {EPOCHS} epochs. Learning-rate grids: THOR variants use SGD's "
        f"{list(THOR_GRID)} (momentum 0.9), AdamW {list(GRIDS['adamw'])}; per optimizer the rate with the "
        f"smallest median over seeds 0–{args.seeds - 1}. THOR variants: momentum 0.9, the step's length "
        "grafted from SGD's (the default) unless the row says otherwise, the default schedule (factors every "
        "10 steps, check points 10, 20, 40, … apart, damping 0.03). A run diverges when its loss turns "
        "non-finite or THOR raises DivergedError.",
        "",
        "Goals:",
        *verdicts,
        "",
    ]
    if args.no_write:
        print("\n".join(head + body))
        return
    write_section("convergence", "\n".join(head + body))
    write_json("convergence", {"machine": machine_line(), "command": " ".join(sys.argv), "minutes": total / 60,
                               "target": TARGET, "epochs": EPOCHS, "models": figures})


if __name__ == "__main__":
    main()
