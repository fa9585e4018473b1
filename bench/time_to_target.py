"""Time to target against today's optimizers: an offline, AlgoPerf-style benchmark on real text.

    python bench/time_to_target.py                              # every workload and optimizer, 5 trials × 1 study
    python bench/time_to_target.py --workloads gpt-tiny --optimizers adamw,thor-eigen --trials 5
    python bench/time_to_target.py --report                     # the section, JSON and page from what is stored
    python bench/time_to_target.py --workloads gpt-tiny --optimizers thor --merge   # one row again
    python bench/time_to_target.py --gpu --minutes 3            # gpt-small on CUDA in bf16 (the GPU suite's stage)

**Workloads** (``bench/workloads.json``): a fixed model, data, batch, step budget and evaluation
interval each — ``gpt-tiny`` (byte-level causal GPT, 4 layers × 128, on the text of Python's own
standard library, validation bits per byte), ``cnn`` (digits, test accuracy), ``bert-tiny`` (masked
LM on Python's bundled docs, masked-token accuracy) — and a **target** in that metric, set once as
AlgoPerf sets it: the baseline (AdamW for the language models, SGD for the cnn) tuned with the same
budget as everyone, its best trial's best validation value within the step budget, median over
that configuration re-run with :data:`TARGET_RERUNS` seeds; written into the workload with the
command that set it (:func:`set_target`).

**Optimizers**: every entry of the project's registry (THOR variants grafted to AdamW on the
language models) and the peers of :mod:`peers` (Muon, SOAP, Distributed Shampoo, kfac-pytorch),
registered into the same registry here so that one training loop (``thor-plan train``'s) runs them
all; a peer that does not import is reported ``absent``, one that raises ``unsupported: …``.

**Search and score**: per optimizer and study, ``--trials`` quasi-random trials (optuna's scrambled
Sobol sampler, seeded by the study) in its registry's search space, every trial stored in an optuna
RDB storage (``--storage``; an interrupted or extended run continues where it stopped); a trial stops
at the first evaluation that reaches the target. Score of an optimizer on a workload: training
seconds to the target of each study's fastest trial (evaluation excluded), median over studies, ∞
when no trial reached it; steps to target beside it (:mod:`scoring`).

Output: its section of ``bench/RESULTS.md``, ``bench/results/time_to_target.json`` (scores, every
trial with its parameters and curve) and ``bench/results/time_to_target.html`` (AlgoPerf's
performance profile, validation metric against wall time of each optimizer's best trial, step times;
self-contained; git ignores it: ``python bench/time_to_target_page.py`` renders it from the JSON).
``--merge`` re-runs only the rows named by ``--workloads``/``--optimizers`` (in a storage of their
own) and keeps every other row as the stored JSON has it; the rows re-run and their command are
listed in the JSON's ``reruns`` and in the section (:func:`merge_stored`). It refuses, before any
trial runs, where the stored rows were measured on another machine (``machine`` differs).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402
import scoring  # noqa: E402
from results import machine_line, results_dir, write_json, write_section  # noqa: E402

from thor_planner.training.loop import TrainConfig, train  # noqa: E402
from thor_planner.training.optimizers import OPTIMIZERS, OptimizerSpec, register_optimizer  # noqa: E402
from thor_planner.training.workloads import TRAIN_MODELS  # noqa: E402
from thor_planner.utils.progress import Progress  # noqa: E402

BENCH = Path(__file__).resolve().parent
WORKLOADS_JSON = BENCH / "workloads.json"
_DEFINITIONS = [WORKLOADS_JSON]


def definitions() -> Path:
    """The workload definitions in use (``--definitions``; default ``bench/workloads.json``)."""
    return _DEFINITIONS[0]


PLANS = [BENCH / "results"]  # where the peers' measured plans are cached (a list: tests point it elsewhere)
DEFAULT_STORAGE = f"sqlite:///{BENCH / 'results' / 'time_to_target.db'}"
TARGET_RERUNS = 3  # the baseline's best configuration, trained with seeds 0, 1, 2
#: The registry's optimizers and the peers, in the order the tables list them.
ORDER = ("adamw", "sgd", "lamb", "muon", "soap", "soap-planned", "shampoo", "shampoo-planned", "kfac-pytorch", "mlbfgs",
         "kfac", "thor-128", "thor", "thor-eigen")
#: Distributed Shampoo's and SOAP's block size and refresh interval from ``thor-plan profile --for``.
PLANNED = {"shampoo-planned": "shampoo", "soap-planned": "soap"}


class Notes(Progress):
    def note(self, message: str) -> None:
        print(f"    {message}", flush=True)


@dataclass(frozen=True)
class Workload:
    name: str
    spec: dict

    @property
    def task(self):
        return TRAIN_MODELS[self.spec["model"]].task

    @property
    def target(self) -> float | None:
        return self.spec.get("target")

    def train_config(self, optimizer: str, *, seed: int, target: float | None, **extra) -> TrainConfig:
        """The run every trial of ``optimizer`` varies."""
        spec, entry = self.spec, OPTIMIZERS[optimizer]
        graft = spec["graft"] if entry.thor and spec["graft"] in entry.grafts else "auto"
        options = {"betas": tuple(spec["betas"])} if "betas" in entry.options else {}
        return TrainConfig(model=spec["model"], data=spec["data"], optimizer=optimizer, batch_size=spec["batch_size"],
                           steps=spec["steps"], eval_every=spec["eval_every"], seed=seed, target=target, graft=graft,
                           options=options, lr_schedule="cosine", device=spec.get("device", "cpu"),
                           precision=spec.get("precision", "float32"), **extra)


def load_workloads(gpu: bool = False) -> dict[str, Workload]:
    data = json.loads(definitions().read_text())
    return {name: Workload(name, spec) for name, spec in data["gpu" if gpu else "workloads"].items()}


# -------------------------------------------------------------------------------- peers in the registry


def _peer_hp(name: str, config: TrainConfig, base: str) -> dict:
    """The peer's hyperparameters from a training config (its trial's, over the peer's defaults)."""
    defaults = peers.settings(name, {"base": base} if name == "kfac-pytorch" else {})
    hp = {"lr": config.learning_rate, "weight_decay": config.weight_decay}
    if "momentum" in defaults:
        hp["momentum"] = config.momentum
    for key, value in config.options.items():
        if key == "betas":
            hp["beta1"], hp["beta2"] = value
        else:
            hp[key] = value
    if name == "kfac-pytorch":
        hp["base"] = defaults["base"]
    return {k: v for k, v in hp.items() if k in defaults or k == "base"}


def _peer_build(name: str, base: str, fixed: dict | None = None):
    return lambda model, config, plan: peers.make(name, model, {**_peer_hp(name, config, base), **(fixed or {})})


def peer_plan_settings(workload: Workload, peer: str) -> tuple[dict, dict]:
    """The planned peer's settings (``thor-plan profile --for PEER`` on the workload's model and data,
    kept in the results folder) and what the profile recorded."""
    from thor_planner.planning.planner import make_plan
    from thor_planner.profiling.profiler import ProfileConfig, run_profile

    path = PLANS[0] / f"time_to_target-{workload.name}-{peer}.plan.json"
    if not path.exists():
        measurements, _ = run_profile(ProfileConfig(model=workload.spec["model"], data=workload.spec["data"],
                                                    batch_size=workload.spec["batch_size"], target=peer,
                                                    device=workload.spec.get("device", "cpu")))
        make_plan(measurements).save(path)
    from thor_planner.planning.plan import Plan

    plan = Plan.load(path)
    kwargs = plan.kwargs_for(peer)
    names = {"shampoo": ("max_preconditioner_dim", "precondition_frequency"),
             "soap": ("max_precond_dim", "precondition_frequency")}[peer]
    shown = path.relative_to(BENCH.parent) if path.is_relative_to(BENCH.parent) else path
    return {k: kwargs[k] for k in names}, {"plan": str(shown), **kwargs}


def register_peers(base: str, workload: Workload | None = None) -> dict[str, str]:
    """Each peer as a registry entry (``base``: kfac-pytorch's base optimizer) and, for ``workload``,
    Shampoo and SOAP with their planned block size and refresh interval; returns the absent ones."""
    absent = {}
    for name in peers.PEERS:
        reason = peers.absence(name)
        if reason is not None:
            absent[name] = reason
            absent.update({p: reason for p, of in PLANNED.items() if of == name})
            continue
        space = peers.space(name, base if name == "kfac-pytorch" else None)
        defaults = peers.settings(name, {"base": base} if name == "kfac-pytorch" else {})
        options = tuple(p.name for p in space if p.name not in ("lr", "weight_decay", "momentum", "warmup", "beta1"))
        options += ("betas",) if "beta1" in defaults else ()
        register_optimizer(OptimizerSpec(
            name=name, summary=f"{name} (peer)", family="peer", default_lr=float(defaults["lr"]), space=space,
            options=options, build=_peer_build(name, base)), replace=True)
        planned = [p for p, of in PLANNED.items() if of == name]
        for p in planned if workload is not None else ():
            fixed, _ = peer_plan_settings(workload, name)
            register_optimizer(OptimizerSpec(
                name=p, summary=f"{name} with its planned block size and refresh interval", family="peer",
                default_lr=float(defaults["lr"]), space=space, options=options, build=_peer_build(name, base, fixed)),
                replace=True)
    return absent


# -------------------------------------------------------------------------------- studies and targets


def study_name(workload: Workload, optimizer: str, study: int) -> str:
    return f"ttt-{workload.name}-{optimizer}-s{study}"


def unreachable(workload: Workload) -> float:
    """A target no run reaches: the baseline's first study then trains every trial to the budget."""
    return 1.0 if workload.task.direction == "max" else 1e-9


def run_study(workload: Workload, optimizer: str, study: int, trials: int, storage: str, target: float):
    """``trials`` more quasi-random trials of ``optimizer``'s study ``study`` (the tuner's loop)."""
    from thor_planner.tune import TuneConfig, run_tune

    name = study_name(workload, optimizer, study)
    stored = _stored_trials(storage, name)
    if stored >= trials:
        print(f"  {name}: {stored} trials stored", flush=True)
        return
    print(f"  {name}: {trials - stored} trials to run", flush=True)
    run_tune(TuneConfig(train=workload.train_config(optimizer, seed=study, target=target), trials=trials - stored,
                        storage=storage, study=name, pruner="none", sampler="qmc"), Notes())


def _stored_trials(storage: str, name: str) -> int:
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return 0
    return sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))


def trials_of(storage: str, name: str) -> list:
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return []


def set_target(workload: Workload, trials: int, storage: str, command: str) -> float:
    """The baseline tuned (study 0, trials to the budget), its best trial re-run with seeds 1 and 2;
    the target is the median of the three best validation values. Written into workloads.json."""
    baseline, direction = workload.spec["baseline"], workload.task.direction
    run_study(workload, baseline, 0, trials, storage, unreachable(workload))
    done = [t for t in trials_of(storage, study_name(workload, baseline, 0)) if t.state.name == "COMPLETE"]
    pick = min if direction == "min" else max
    best = pick(done, key=lambda t: scoring.best_value(t.user_attrs["curve"], direction))
    values = [scoring.best_value(best.user_attrs["curve"], direction)]
    from thor_planner.tune.space import train_options

    for seed in range(1, TARGET_RERUNS):
        base = workload.train_config(baseline, seed=seed, target=None)
        config = replace(base, **train_options(baseline, best.params, base.graft, base_options=base.options))
        result = train(config, Notes())
        values.append(scoring.best_value([[r.step, r.seconds, r.metric] for r in result.records], direction))
    target = scoring.target_from_baseline(values, direction)
    _write_target(workload, target, {"baseline": baseline, "trial": best.number, "params": best.params,
                                     "values": values, "command": command, "machine": machine_line()})
    return target


def _write_target(workload: Workload, target: float, provenance: dict) -> None:
    data = json.loads(definitions().read_text())
    section = "gpu" if workload.name in data.get("gpu", {}) else "workloads"
    # unrounded: a target rounded toward the better side would be missed by the very run that set it
    data[section][workload.name].update(target=target, target_set_by=provenance)
    definitions().write_text(json.dumps(data, indent=2) + "\n")
    workload.spec.update(target=target, target_set_by=provenance)


# -------------------------------------------------------------------------------- scores


def trial_record(trial, target: float, direction: str) -> dict:
    """One trial as the JSON keeps it: parameters, state, curve, time and steps to the target."""
    curve = trial.user_attrs.get("curve") or []
    seconds, steps = scoring.time_to_target([scoring.Evaluation(*e) for e in curve], target, direction)
    last = curve[-1] if curve else None
    return {"number": trial.number, "state": trial.state.name.lower(), "params": trial.params, "curve": curve,
            "seconds_to_target": scoring.json_number(seconds), "steps_to_target": steps,
            "best": scoring.json_number(scoring.best_value(curve, direction)) if curve else None, "stopped": trial.user_attrs.get("stopped"),
            "ms_per_step": 1000 * last[1] / last[0] if last and last[0] else None,
            "wall_seconds": (trial.datetime_complete - trial.datetime_start).total_seconds()
            if trial.datetime_complete and trial.datetime_start else None,
            "split_dim": trial.user_attrs.get("split_dim")}


def optimizer_result(workload: Workload, optimizer: str, studies: int, storage: str) -> dict:
    """The optimizer's score on the workload (:func:`scoring.workload_score`) and every trial."""
    target, direction = workload.target, workload.task.direction
    per_study, records = [], []
    for study in range(studies):
        trials = [t for t in trials_of(storage, study_name(workload, optimizer, study)) if t.state.is_finished()]
        records += [{"study": study, **trial_record(t, target, direction)} for t in trials]
        per_study.append([[scoring.Evaluation(*e) for e in t.user_attrs.get("curve") or []]
                          for t in trials if t.state.name == "COMPLETE"])
    score = scoring.workload_score(per_study, target, direction)
    steps = [r["ms_per_step"] for r in records if r["ms_per_step"]]
    return {"status": "ok", **score.to_json(), "trials": len(records), "studies": studies,
            "reached": sum(r["seconds_to_target"] is not None for r in records),
            "ms_per_step": statistics.median(steps) if steps else None, "trial_records": records}


def profile_times(results: dict) -> dict[str, dict[str, float]]:
    """optimizer → workload → seconds (``inf`` when not reached or unsupported), for the optimizers
    measured on every workload of the run (absent peers are left out)."""
    run = [w for w in results if "optimizers" in results[w]]
    names = [o for o in ORDER if all(not results[w]["optimizers"].get(o, {}).get("status", "absent").startswith(
        ("absent", "not run")) for w in run)]
    seconds = {o: {w: results[w]["optimizers"][o].get("seconds") for w in run} for o in names}
    return {o: {w: math.inf if s is None else float(s) for w, s in row.items()} for o, row in seconds.items()}


def summary_json(results: dict, started: float, command: str) -> dict:
    times = profile_times(results)
    profile = scoring.performance_profile(times, max_tau=None, scale="log") if times and results else None
    trial_seconds = sum(t["wall_seconds"] or 0 for w in results.values() for r in w.get("optimizers", {}).values()
                        for t in r.get("trial_records", []))
    return {"machine": machine_line(), "command": command, "wall_seconds": round(time.time() - started, 1),
            "trial_seconds": round(trial_seconds, 1),
            "workloads": results,
            "performance_profile": profile.to_json() if profile else None,
            "benchmark_score": scoring.benchmark_score(profile) if profile else None}


# -------------------------------------------------------------------------------- the run


def corpus_record(workload: Workload) -> dict | None:
    """The text a language-model workload trains on: bytes, files, Python version, sha256."""
    if workload.spec["data"] != "stdlib":
        return None
    from thor_planner.inputs.stdlib import load_corpus

    return load_corpus().describe()


def optimizers_for(workload: Workload, wanted: list[str] | None) -> tuple[list[str], dict[str, str]]:
    """The optimizers to measure on ``workload`` (registry and peers, in table order) and the absent peers."""
    absent = register_peers("adamw" if workload.spec["graft"] == "adamw" else "sgd", workload)
    names = [n for n in ORDER if n in OPTIMIZERS or n in absent] + [n for n in OPTIMIZERS if n not in ORDER]
    return [n for n in names if wanted is None or n in wanted], absent


def run_workload(workload: Workload, args, command: str) -> dict:
    print(f"{workload.name}: {workload.spec}", flush=True)
    names, absent = optimizers_for(workload, args.optimizers)
    if workload.target is None:
        print(f"  setting the target with {workload.spec['baseline']} (study 0, then {TARGET_RERUNS - 1} re-runs)")
        set_target(workload, args.trials, args.storage, command)
    print(f"  target {workload.task.metric} {workload.target}", flush=True)
    out = {}
    for name in names:
        if name in absent:
            out[name] = {"status": absent[name]}
            continue
        if args.report and not any(_stored_trials(args.storage, study_name(workload, name, study))
                                   for study in range(args.studies)):
            out[name] = {"status": "not run (no trial stored)"}
            continue
        try:
            for study in range(args.studies):
                run_study(workload, name, study, args.trials, args.storage, workload.target)
        except Exception as exc:  # noqa: BLE001 - a peer that cannot train this workload is reported as such
            if OPTIMIZERS[name].family != "peer":
                raise
            out[name] = {"status": peers.unsupported(exc)}
            continue
        out[name] = optimizer_result(workload, name, args.studies, args.storage)
        if name in PLANNED:
            out[name]["planned"] = peer_plan_settings(workload, PLANNED[name])[1]
    return {"model": workload.spec["model"], "data": workload.spec["data"], "spec": workload.spec,
            "corpus": corpus_record(workload),
            "metric": workload.task.metric, "direction": workload.task.direction, "target": workload.target,
            "optimizers": out}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", type=lambda s: s.split(","), default=None)
    parser.add_argument("--optimizers", type=lambda s: s.split(","), default=None)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--studies", type=int, default=1)
    parser.add_argument("--storage", default=DEFAULT_STORAGE)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--report", action="store_true", help="only re-score and rewrite the outputs")
    parser.add_argument("--merge", action="store_true",
                        help="keep the stored JSON's other rows: re-run only --workloads x --optimizers")
    parser.add_argument("--gpu", action="store_true", help="the GPU workloads (gpt-small on CUDA, bf16)")
    parser.add_argument("--name", default=None, help="results name (default: time_to_target[_gpu])")
    parser.add_argument("--definitions", type=Path, default=WORKLOADS_JSON, help="workload definitions (JSON)")
    parser.add_argument("--scratch", type=Path, default=None,
                        help="write the JSON and page into this folder and leave bench/RESULTS.md alone (trial runs)")
    args = parser.parse_args(argv)
    _DEFINITIONS[0] = args.definitions
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python bench/time_to_target.py " + " ".join(argv if argv is not None else sys.argv[1:])
    (BENCH / "results").mkdir(exist_ok=True)
    workloads = load_workloads(args.gpu)
    chosen = [workloads[w] for w in (args.workloads or workloads)]
    name = args.name or ("time_to_target_gpu" if args.gpu else "time_to_target")
    if args.merge:
        mergeable(name)  # refuses before any trial runs
    stored_json = results_dir() / f"{name}.json"
    if args.report and stored_json.exists():  # the trials are the stored run's: keep the command that ran them
        command = json.loads(stored_json.read_text()).get("command", "").split(" (re-scored by")[0] \
            + f" (re-scored by: {command})"
    started = time.time()
    results = {}
    for workload in chosen:
        if args.report:
            args.trials = 0
            if workload.target is None:  # reporting never trains: a workload without a target was not run
                results[workload.name] = {"status": "not run (no target set yet)", "spec": workload.spec}
                continue
        results[workload.name] = run_workload(workload, args, command)
    write_outputs(results, started, command, name, args.scratch, args.merge)


def mergeable(name: str) -> tuple[dict, Path]:
    """The stored results ``results/<name>.json`` and their path, refused when absent or measured on
    another machine."""
    path = results_dir() / f"{name}.json"
    if not path.exists():
        raise SystemExit(f"--merge: no stored results at {path}; run without --merge first")
    stored = json.loads(path.read_text())
    if stored.get("machine") != machine_line():
        raise SystemExit(f"--merge: the stored rows were measured on '{stored.get('machine')}', this is "
                         f"'{machine_line()}': times from two machines cannot share a table; re-run every row here")
    return stored, path


def merge_stored(results: dict, name: str, command: str) -> tuple[dict, dict]:
    """The stored results ``results/<name>.json`` with the rows of ``results`` in place of theirs
    (every other workload and optimizer as stored): (workloads, what the summary keeps of the stored
    run: its command, machine, wall time and earlier re-runs, this one added)."""
    stored, path = mergeable(name)
    merged = dict(stored["workloads"])
    rows = []
    for wname, fresh in results.items():
        old = merged.get(wname, {})
        if "optimizers" not in fresh or "optimizers" not in old:
            merged[wname] = fresh
            rows += [f"{o} on {wname}" for o in fresh.get("optimizers", {})]
            continue
        if old["target"] != fresh["target"]:
            raise SystemExit(f"--merge: {wname}'s target is {fresh['target']} here but {old['target']} in "
                             f"{path}: rows measured against different targets cannot be merged; re-run every row")
        merged[wname] = {**fresh, "optimizers": {**old["optimizers"], **fresh["optimizers"]}}
        rows += [f"{o} on {wname}" for o in fresh["optimizers"]]
    rerun = {"command": command, "machine": machine_line(), "rows": rows}
    earlier = stored.get("reruns", [])
    return merged, {"command": stored["command"], "machine": stored["machine"],
                    "wall_seconds": stored.get("wall_seconds", 0), "reruns": [*earlier, rerun]}


def write_outputs(results: dict, started: float, command: str, name: str, scratch: Path | None = None,
                  merge: bool = False) -> None:
    from time_to_target_page import write_page
    from time_to_target_section import section

    stored = {}
    if merge:
        results, stored = merge_stored(results, name, command)
    data = summary_json(results, started, command)
    if stored:
        data.update(stored, wall_seconds=round(stored["wall_seconds"] + data["wall_seconds"], 1))
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
        (scratch / f"{name}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
        write_page(scratch / f"{name}.html", data)
        print(section(data, name))
        return
    write_json(name, data)
    write_page(BENCH / "results" / f"{name}.html", data)
    write_section(name, section(data, name))


if __name__ == "__main__":
    main()
