"""``thor-plan tune``: an optuna study whose objective is the training time to a target.

Each trial trains with :func:`thor_planner.training.train` (the loop of ``thor-plan train``) for at
most the budget (``epochs`` or ``steps`` of the base :class:`~thor_planner.training.TrainConfig`),
stopping at the first evaluation that reaches ``target`` (test accuracy, or validation bits per
byte for causal LMs). Its **value** (minimised) is

    seconds of training to the target             if the target was reached,
    UNREACHED_PENALTY + the final shortfall       otherwise (UNREACHED_PENALTY = 1e6 s; the
                                                  shortfall is how far the last evaluation was
                                                  from the target, in the metric),

so every trial that reached the target ranks before every trial that did not, and those rank by how
close they came. Each trial also stores its evaluation curve (``[step, seconds, metric]`` per
evaluation) and the target it ran for: the study's best for *another* target is read off those
curves without training again (:func:`rescore`), and every run ends with the best trial, whether or
not any reached the target. After each evaluation a trial reports its error (1 − accuracy, or bits
per byte) to optuna's pruner (median rule, from the third trial; ``pruner="none"`` turns it off); a
pruned trial is recorded as PRUNED, a trial whose training raised (a failed inversion, a diverged
THOR) as FAIL.

Samplers: ``tpe`` (seeded with ``seed`` plus the trials already in the study; its first five trials
are random, so a fixed seed asks the same parameters every time) or ``qmc`` (scrambled Sobol
points, as AlgoPerf's quasi-random search). Every trial trains with the training seed of the base
config.

For ``thor``, the trials share one profile (the ``plan``'s folder, or a quick profile made first) and
each re-plans its splits from the measurements with its own loss threshold.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from thor_planner.planning.measurements import Measurements
from thor_planner.planning.plan import Plan, Schedule
from thor_planner.planning.planner import Rule, RuleConfig, make_plan
from thor_planner.training.loop import TrainConfig, build_model, quick_profile, quick_rule, train
from thor_planner.training.optimizers import optimizer_spec
from thor_planner.tune.space import signature, suggest, train_options
from thor_planner.tune.study import DEFAULT_STORAGE, TuneConfigError, TuneError, import_optuna, open_study
from thor_planner.utils.progress import Progress

UNREACHED_PENALTY = 1e6
PRUNERS = ("median", "none")
SAMPLERS = ("tpe", "qmc")


class TuneInterrupted(KeyboardInterrupt):
    """Ctrl-C during tuning: the finished trials stay in the storage."""

    def __init__(self, finished: int) -> None:
        super().__init__(finished)
        self.finished = finished


@dataclass(frozen=True, kw_only=True)
class TuneConfig:
    """What to tune (``train``: the run every trial varies; its ``target`` is required) and where the
    study lives. ``study=None``: ``<model>-<data>-<optimizer>`` (``-adamw`` with ``graft="adamw"``)."""

    train: TrainConfig = TrainConfig(target_accuracy=0.97)
    trials: int = 20
    timeout: float | None = None
    storage: str = DEFAULT_STORAGE
    study: str | None = None
    pruner: str = "median"
    sampler: str = "tpe"

    def __post_init__(self) -> None:
        if self.pruner not in PRUNERS:
            raise TuneConfigError("pruner", self.pruner, f"use {' or '.join(PRUNERS)}", quote=True)
        if self.sampler not in SAMPLERS:
            raise TuneConfigError("sampler", self.sampler, f"use {' or '.join(SAMPLERS)}", quote=True)
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials < 1:
            raise TuneConfigError("trials", self.trials, "must be >= 1")
        if self.timeout is not None and not self.timeout > 0:
            raise TuneConfigError("timeout", self.timeout, "must be > 0 seconds")
        if self.train.target is None:
            raise TuneConfigError("target", None, "the tuner minimises the time to a target; set target "
                                  f"({self.train.task.metric.replace('_', ' ')})")
        if self.train.graft not in ("sgd", "adamw"):
            raise TuneConfigError("graft", self.train.graft, "use 'sgd' or 'adamw'", quote=True)
        if not self.storage:
            raise TuneConfigError("storage", "", f"pass an optuna RDB URL such as {DEFAULT_STORAGE}", quote=True)

    @property
    def optimizer(self) -> str:
        return self.train.optimizer

    @property
    def study_name(self) -> str:
        t = self.train
        graft = "" if t.graft == "sgd" else f"-{t.graft}"
        return self.study or f"{t.model}-{t.data}-{t.optimizer}{graft}"

    def objective_spec(self) -> dict:
        """What a trial measures, apart from the target (a study can be re-scored for another)."""
        t = self.train
        budget = {"steps": t.steps} if t.steps else {"epochs": t.epochs}
        return {"model": t.model, "data": t.data, **budget, "batch_size": t.batch_size, "eval_every": t.eval_every,
                "seed": t.seed, "metric": t.task.metric}


@dataclass
class TuneResult:
    """The study after this run, its best trial for the target, and (``thor``) the profile and the
    tuned plan."""

    config: TuneConfig
    study: object
    best: object  # optuna FrozenTrial
    new_trials: int
    best_seconds: float | None = None  # the best trial's time to this run's target (None: unreached)
    best_value: float | None = None  # its final metric (the last evaluation)
    measurements: Measurements | None = None
    plan: Plan | None = None
    profiled: bool = False
    counts: dict = field(default_factory=dict)

    @property
    def reached(self) -> bool:
        return self.best_seconds is not None

    def summary(self) -> dict:
        c = self.config
        return {"study": c.study_name, "storage": c.storage, "optimizer": c.optimizer,
                "trials": sum(self.counts.values()), "new_trials": self.new_trials, **self.counts,
                "target": c.train.target, "metric": c.train.task.metric, "reached": self.reached,
                "best_trial": self.best.number, "best_seconds": self.best_seconds,
                "best_final": self.best_value, "best_params": self.best.params}


def shortfall(final: float, target: float, direction: str) -> float:
    """How far ``final`` is from ``target`` in the metric's bad direction (0 when reached)."""
    return max(target - final, 0.0) if direction == "max" else max(final - target, 0.0)


def trial_value(target_seconds: float | None, final: float, target: float, direction: str) -> float:
    """The objective: seconds to the target, or the penalty plus the final shortfall."""
    if target_seconds is not None:
        return float(target_seconds)
    return UNREACHED_PENALTY + shortfall(final, target, direction)


def rescore(trial, target: float, direction: str) -> float | None:
    """``trial``'s value for ``target`` read off its stored curve (``None``: no curve stored)."""
    curve = trial.user_attrs.get("curve")
    if not curve:
        return None
    reach = [seconds for _, seconds, value in curve
             if (value >= target if direction == "max" else value <= target)]
    return trial_value(reach[0] if reach else None, curve[-1][2], target, direction)


@dataclass
class _Profile:
    """What every ``thor`` trial re-plans from: the measurements, the plan's rule and schedule."""

    measurements: Measurements
    rule: RuleConfig
    schedule: Schedule
    profiled: bool

    def plan(self, loss_threshold: float, schedule: Schedule) -> Plan:
        r = self.rule
        return make_plan(self.measurements, RuleConfig(name=r.name, loss_threshold=loss_threshold,
                                                       overhead=r.overhead, interval=r.interval), schedule)


def _profile(config: TuneConfig, progress: Progress) -> _Profile | None:
    """For ``thor``: the profile the trials re-plan from (the plan's folder, or a quick profile)."""
    t = config.train
    if not optimizer_spec(t.optimizer).plans:
        return None
    if t.plan is not None:
        base = Plan.load(t.plan)
        base.require("thor")
        base.check_model(build_model(t.model))
        measurements = Measurements.load(Path(t.plan).parent)
        rule = base.rule
        kwargs = {k: rule[k] for k in ("overhead", "interval") if k in rule}
        return _Profile(measurements, RuleConfig(name=Rule(rule.get("name", "crossover")), **kwargs), base.schedule,
                        False)
    progress.note(f"No plan given: profiling {t.model} on {t.data} first")
    family = optimizer_spec(t.optimizer).preconditioner
    schedule = t.schedule or Schedule()
    return _Profile(quick_profile(t.model, t.data, t.seed, progress, family), quick_rule(schedule), schedule, True)


def _counts(study) -> dict:
    """Finished trials of the whole study by state: ``complete``, ``pruned``, ``fail``."""
    states = [t.state.name.lower() for t in study.get_trials(deepcopy=False)]
    return {s: states.count(s) for s in ("complete", "pruned", "fail")}


def _objective(config: TuneConfig, profile: _Profile | None, folder: str):
    """The function optuna calls per trial (see the module docstring)."""
    optuna = import_optuna()
    t = config.train
    task = t.task

    def objective(trial) -> float:
        params = suggest(trial, t.optimizer, t.graft)
        options = train_options(t.optimizer, params, t.graft, profile.schedule if profile else Schedule(), t.options)
        plan_path = None
        if profile is not None:
            plan = profile.plan(params["loss_threshold"], options["schedule"])
            plan_path = plan.save(Path(folder) / f"trial-{trial.number}.json")
            trial.set_user_attr("split_dim", plan.split_dim)
        run = replace(t, plan=plan_path, **options)
        curve: list[list[float]] = []

        def report(record) -> None:
            curve.append([record.step, record.seconds, record.metric])
            trial.set_user_attr("curve", curve)
            trial.report(record.metric if task.direction == "min" else 1.0 - record.metric, record.step)
            if trial.should_prune():
                raise optuna.TrialPruned()

        trial.set_user_attr("target", t.target)
        result = train(run, Progress(), on_eval=report)
        final = result.records[-1].metric if result.records else math.nan
        trial.set_user_attr("target_seconds", result.target_seconds)
        trial.set_user_attr("final", final)
        trial.set_user_attr("stopped", result.stopped)
        trial.set_user_attr("seconds", result.seconds)
        if not math.isfinite(final):
            raise RuntimeError(f"trial {trial.number} diverged")
        return trial_value(result.target_seconds, final, t.target, task.direction)

    return objective


def _best(config: TuneConfig, study) -> tuple[object, float | None, float | None]:
    """The study's best complete trial for this run's target, its time to it and its final metric."""
    t = config.train
    scored = []
    for trial in study.get_trials(deepcopy=False):
        if trial.state.name != "COMPLETE":
            continue
        value = rescore(trial, t.target, t.task.direction)
        if value is None:  # no curve: its stored value counts only for the target it ran for
            value = trial.value if trial.user_attrs.get("target", t.target) == t.target else None
        if value is not None:
            scored.append((value, trial.number, trial))
    if not scored:
        raise TuneError(f"No trial of study '{config.study_name}' completed: run more --trials (failed and pruned "
                        "trials are listed by 'thor-plan tune' as they finish)")
    value, _, best = min(scored, key=lambda s: s[:2])
    final = best.user_attrs.get("final", best.user_attrs.get("final_accuracy"))
    return best, (value if value < UNREACHED_PENALTY else None), final


def run_tune(config: TuneConfig, progress: Progress = Progress()) -> TuneResult:
    """Run ``config.trials`` more trials (or until ``timeout``) and return the study's best for the
    target (reached or not: :attr:`TuneResult.reached`).

    Raises :class:`TuneError` on bad input (before any study is created) and when no trial of the
    study completed; :class:`TuneInterrupted` on Ctrl-C (finished trials are in the storage)."""
    import_optuna()
    profile = _profile(config, progress)  # refuses a plan that does not fit, before the study exists
    t = config.train
    study = open_study(storage_url=config.storage, name=config.study_name, optimizer=t.optimizer,
                       space_signature=signature(t.optimizer, config.objective_spec(), t.graft), seed=t.seed,
                       pruner=config.pruner, sampler=config.sampler)
    before = len(study.get_trials(deepcopy=False))
    with tempfile.TemporaryDirectory(prefix="thor-plan-tune-") as tmp, progress.stage("tune", config.trials) as advance:
        def callback(study, trial) -> None:
            progress.note(_trial_line(trial, config))
            advance()

        try:
            study.optimize(_objective(config, profile, tmp), n_trials=config.trials, timeout=config.timeout,
                           catch=(RuntimeError, FloatingPointError), callbacks=[callback])
        except KeyboardInterrupt:
            finished = sum(t.state.is_finished() and t.state.name != "FAIL" for t in study.get_trials(deepcopy=False))
            raise TuneInterrupted(finished) from None
    best, seconds, final = _best(config, study)
    tuned = None
    if profile is not None:
        schedule = train_options(t.optimizer, best.params, t.graft, profile.schedule)["schedule"]
        tuned = profile.plan(best.params["loss_threshold"], schedule)
    return TuneResult(config=config, study=study, best=best, new_trials=len(study.get_trials(deepcopy=False)) - before,
                      best_seconds=seconds, best_value=final, measurements=profile.measurements if profile else None,
                      plan=tuned, profiled=bool(profile and profile.profiled), counts=_counts(study))


def _trial_line(trial, config: TuneConfig) -> str:
    state, metric = trial.state.name, config.train.task.metric.replace("_", " ")
    if state == "COMPLETE":
        secs = trial.user_attrs.get("target_seconds")
        what = (f"{secs:.2f} s to {config.train.target:g}" if secs is not None else
                f"target not reached (final {metric} {trial.user_attrs.get('final', math.nan):.4f})")
    elif state == "PRUNED":
        what = f"pruned at step {trial.last_step}"
    else:
        what = "failed"
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
    return f"trial {trial.number}: {what} ({params})"
