"""``thor-plan tune``: an optuna study whose objective is the training time to a target accuracy.

Each trial trains with :func:`thor_planner.training.train` (the loop of ``thor-plan train``) for at
most ``epochs`` epochs, stopping at the first evaluation whose test accuracy reaches
``target_accuracy``. Its **value** (minimised) is

    seconds of training to the target                if the target was reached,
    UNREACHED_PENALTY + (1 − final test accuracy)   otherwise (UNREACHED_PENALTY = 1e6 s),

so every trial that reached the target ranks before every trial that did not, and those rank by
their final accuracy. After each evaluation the trial reports its test error (1 − accuracy) to
optuna's pruner (median rule, from the third trial; ``pruner="none"`` turns it off); a pruned trial
is recorded as PRUNED, a trial whose training raised (a failed inversion, say) as FAIL.

The TPE sampler is seeded (``seed`` plus the trials already in the study); its first five trials are
random, so a fixed seed asks the same parameters every time, and later ones also depend on the
measured seconds. Every trial trains with the same ``seed``.

For ``thor``, the trials share one profile (the ``plan``'s folder, or a quick profile made first) and
each re-plans its splits from the measurements with its own loss threshold.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from thor_planner.planning.measurements import Measurements
from thor_planner.planning.plan import Plan
from thor_planner.planning.planner import Rule, RuleConfig, make_plan
from thor_planner.training.loop import (DATA, MODELS, OPTIMIZERS, TrainConfig, build_model, load_split,
                                        train)
from thor_planner.tune.space import signature, suggest, train_options
from thor_planner.tune.study import DEFAULT_STORAGE, TuneError, import_optuna, open_study
from thor_planner.utils.progress import Progress

UNREACHED_PENALTY = 1e6
PRUNERS = ("median", "none")


class TuneInterrupted(KeyboardInterrupt):
    """Ctrl-C during tuning: the finished trials stay in the storage."""

    def __init__(self, finished: int) -> None:
        super().__init__(finished)
        self.finished = finished


@dataclass(frozen=True, kw_only=True)
class TuneConfig:
    """What to tune and where the study lives. ``study=None``: ``<model>-<data>-<optimizer>``
    (``-adamw`` appended with ``graft="adamw"``)."""

    model: str = "cnn"
    data: str = "digits"
    optimizer: str = "thor"
    plan: str | Path | None = None
    trials: int = 20
    timeout: float | None = None
    storage: str = DEFAULT_STORAGE
    study: str | None = None
    epochs: int = 10
    target_accuracy: float = 0.97
    seed: int = 0
    batch_size: int = 32
    eval_every: int | None = None
    pruner: str = "median"
    #: THOR variants: ``"sgd"`` or ``"adamw"`` (THOR as a drop-in for AdamW; AdamW's lr range)
    graft: str = "sgd"

    def __post_init__(self) -> None:
        for what, value, options in (("model", self.model, MODELS), ("data", self.data, DATA),
                                     ("optimizer", self.optimizer, OPTIMIZERS), ("pruner", self.pruner, PRUNERS)):
            if value not in options:
                raise TuneError(f"Invalid {what}={value!r}: use {', '.join(options)}")
        if self.plan is not None and self.optimizer != "thor":
            raise TuneError(f"Invalid plan='{self.plan}': a plan applies only to optimizer 'thor', not "
                            f"'{self.optimizer}'")
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials < 1:
            raise TuneError(f"Invalid trials={self.trials}: must be >= 1")
        if self.timeout is not None and not self.timeout > 0:
            raise TuneError(f"Invalid timeout={self.timeout}: must be > 0 seconds")
        if not 0 < self.target_accuracy <= 1:
            raise TuneError(f"Invalid target_accuracy={self.target_accuracy}: must be in (0, 1]")
        for what in ("epochs", "batch_size"):
            if getattr(self, what) < 1:
                raise TuneError(f"Invalid {what}={getattr(self, what)}: must be >= 1")
        if self.eval_every is not None and self.eval_every < 1:
            raise TuneError(f"Invalid eval_every={self.eval_every}: must be >= 1 (or None: each epoch)")
        if self.graft not in ("sgd", "adamw"):
            raise TuneError(f"Invalid graft={self.graft!r}: use sgd or adamw")
        if self.graft != "sgd" and self.optimizer not in ("thor", "thor-128", "kfac"):
            raise TuneError(f"Invalid graft={self.graft!r}: grafting applies only to thor, thor-128 and kfac, "
                            f"not '{self.optimizer}'")
        if not self.storage:
            raise TuneError("Invalid storage='': pass an optuna RDB URL such as " + DEFAULT_STORAGE)

    @property
    def study_name(self) -> str:
        graft = "" if self.graft == "sgd" else f"-{self.graft}"
        return self.study or f"{self.model}-{self.data}-{self.optimizer}{graft}"

    def objective_spec(self) -> dict:
        return {"model": self.model, "data": self.data, "epochs": self.epochs,
                "target_accuracy": self.target_accuracy, "batch_size": self.batch_size}


@dataclass
class TuneResult:
    """The study after this run, its best trial, and (``thor``) the profile and the tuned plan."""

    config: TuneConfig
    study: object
    best: object  # optuna FrozenTrial
    new_trials: int
    measurements: Measurements | None = None
    plan: Plan | None = None
    profiled: bool = False
    counts: dict = field(default_factory=dict)

    def summary(self) -> dict:
        best = self.best
        return {"study": self.config.study_name, "storage": self.config.storage, "optimizer": self.config.optimizer,
                "trials": sum(self.counts.values()), "new_trials": self.new_trials, **self.counts,
                "best_trial": best.number, "best_value": best.value,
                "best_seconds": best.user_attrs.get("target_seconds"), "best_params": best.params}


def trial_value(target_seconds: float | None, final_accuracy: float) -> float:
    """The objective: seconds to the target, or the penalty plus the final test error."""
    if target_seconds is not None:
        return float(target_seconds)
    return UNREACHED_PENALTY + (1.0 - final_accuracy)


def _profile(config: TuneConfig, progress: Progress) -> tuple[Measurements, RuleConfig, bool]:
    """The measurements every ``thor`` trial re-plans from, the plan's rule, and whether we profiled."""
    if config.plan is not None:
        base = Plan.load(config.plan)
        base.check_model(build_model(config.model))
        measurements = Measurements.load(Path(config.plan).parent)
        rule = base.rule
        kwargs = {k: rule[k] for k in ("overhead", "interval") if k in rule}
        return measurements, RuleConfig(name=Rule(rule.get("name", "crossover")), **kwargs), False
    from thor_planner.profiling.profiler import ProfileConfig, run_profile
    from thor_planner.timing.candidates import TimingConfig
    from thor_planner.training.loop import PROFILE_BATCH_SIZE, PROFILE_BATCHES, PROFILE_NAMES, PROFILE_TIME_BUDGET

    progress.note(f"No plan given: profiling {config.model} on {config.data} first")
    cfg = ProfileConfig(model=PROFILE_NAMES[config.model], data=config.data, batches=PROFILE_BATCHES,
                        batch_size=PROFILE_BATCH_SIZE, seed=config.seed, device="cpu",
                        timing=TimingConfig(budget_s=PROFILE_TIME_BUDGET))
    measurements, _ = run_profile(cfg, progress)
    return measurements, RuleConfig(), True


def _counts(study) -> dict:
    """Finished trials of the whole study by state: ``complete``, ``pruned``, ``fail``."""
    states = [t.state.name.lower() for t in study.get_trials(deepcopy=False)]
    return {s: states.count(s) for s in ("complete", "pruned", "fail")}


def run_tune(config: TuneConfig, progress: Progress = Progress()) -> TuneResult:
    """Run ``config.trials`` more trials (or until ``timeout``) and return the study's best.

    Raises :class:`TuneError` on bad input and when no trial of the study reached the target;
    :class:`TuneInterrupted` on Ctrl-C (finished trials are in the storage)."""
    optuna = import_optuna()
    TrainConfig(model=config.model, data=config.data, optimizer=config.optimizer, epochs=config.epochs,
                batch_size=config.batch_size, eval_every=config.eval_every,
                target_accuracy=config.target_accuracy)  # refuses e.g. a model and data that do not fit
    study = open_study(storage_url=config.storage, name=config.study_name, optimizer=config.optimizer,
                       space_signature=signature(config.optimizer, config.objective_spec(), config.graft), seed=config.seed,
                       pruner=config.pruner)
    measurements, rule, profiled = _profile(config, progress) if config.optimizer == "thor" else (None, None, False)
    steps_per_epoch = math.ceil(len(load_split(config.data)[1]) / config.batch_size)
    before = len(study.get_trials(deepcopy=False))

    with tempfile.TemporaryDirectory(prefix="thor-plan-tune-") as tmp:
        def objective(trial) -> float:
            params = suggest(trial, config.optimizer, config.graft)
            options = train_options(config.optimizer, params, steps_per_epoch, config.graft)
            plan_path = None
            if measurements is not None:
                plan = make_plan(measurements, RuleConfig(name=rule.name, loss_threshold=params["loss_threshold"],
                                                          overhead=rule.overhead, interval=rule.interval),
                                 options["schedule"])
                plan_path = plan.save(Path(tmp) / f"trial-{trial.number}.json")
                trial.set_user_attr("split_dim", plan.split_dim)
            train_cfg = TrainConfig(model=config.model, data=config.data, optimizer=config.optimizer,
                                    plan=plan_path, epochs=config.epochs, batch_size=config.batch_size,
                                    seed=config.seed, eval_every=config.eval_every,
                                    target_accuracy=config.target_accuracy, **options)

            def report(record) -> None:
                trial.report(1.0 - record.test_accuracy, record.step)
                trial.set_user_attr("last_accuracy", record.test_accuracy)
                if trial.should_prune():
                    raise optuna.TrialPruned()

            result = train(train_cfg, Progress(), on_eval=report)
            final = result.records[-1].test_accuracy if result.records else 0.0
            trial.set_user_attr("target_seconds", result.target_seconds)
            trial.set_user_attr("final_accuracy", final)
            trial.set_user_attr("stopped", result.stopped)
            trial.set_user_attr("seconds", result.seconds)
            return trial_value(result.target_seconds, final)

        with progress.stage("tune", config.trials) as advance:
            def callback(study, trial) -> None:
                progress.note(_trial_line(trial, config))
                advance()

            try:
                study.optimize(objective, n_trials=config.trials, timeout=config.timeout,
                               catch=(RuntimeError, FloatingPointError), callbacks=[callback])
            except KeyboardInterrupt:
                finished = sum(t.state.is_finished() and t.state.name != "FAIL"
                               for t in study.get_trials(deepcopy=False))
                raise TuneInterrupted(finished) from None
    after = study.get_trials(deepcopy=False)
    reached = [t for t in after if t.state.name == "COMPLETE" and t.user_attrs.get("target_seconds") is not None]
    if not reached:
        finished = [t for t in after if t.state.name == "COMPLETE"]
        best_acc = max((t.user_attrs.get("final_accuracy", 0.0) for t in finished), default=None)
        seen = f"best final accuracy {best_acc:.4f}" if best_acc is not None else "no trial completed"
        raise TuneError(f"No trial of study '{config.study_name}' reached test accuracy {config.target_accuracy:g} "
                        f"within {config.epochs} epochs ({seen}): raise --epochs, lower --target-accuracy or "
                        "run more --trials")
    best = min(reached, key=lambda t: (t.value, t.number))
    tuned = None
    if measurements is not None:
        schedule = train_options("thor", best.params, steps_per_epoch)["schedule"]
        tuned = make_plan(measurements, RuleConfig(name=rule.name, loss_threshold=best.params["loss_threshold"],
                                                   overhead=rule.overhead, interval=rule.interval), schedule)
    return TuneResult(config=config, study=study, best=best, new_trials=len(after) - before,
                      measurements=measurements, plan=tuned, profiled=profiled, counts=_counts(study))


def _trial_line(trial, config: TuneConfig) -> str:
    state = trial.state.name
    if state == "COMPLETE":
        secs = trial.user_attrs.get("target_seconds")
        what = (f"{secs:.2f} s to {config.target_accuracy:g}" if secs is not None else
                f"target not reached (final accuracy {trial.user_attrs.get('final_accuracy', 0.0):.4f})")
    elif state == "PRUNED":
        what = f"pruned at step {trial.last_step} (accuracy {trial.user_attrs.get('last_accuracy', 0.0):.4f})"
    else:
        what = "failed"
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
    return f"trial {trial.number}: {what} ({params})"
