"""``thor-plan tune``: an optuna study of the hyperparameters the profiler cannot measure."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path

import typer
from rich.markup import escape

from .console import BarProgress, console, err_console, user_errors
from .train import OptimizerChoice, TrainDataChoice, TrainModelChoice


class PrunerChoice(str, Enum):
    median = "median"
    none = "none"


DEFAULT_TARGET_ACCURACY = 0.97


class SamplerChoice(str, Enum):
    tpe = "tpe"
    qmc = "qmc"


def _remove_empty(folder: Path, outermost: Path | None) -> None:
    """Remove ``folder`` and its parents up to ``outermost`` while they are empty (a failed run)."""
    if outermost is None:
        return
    for path in (folder, *folder.parents):
        if not path.is_dir() or any(path.iterdir()):
            return
        path.rmdir()
        if path == outermost:
            return


def tune_cmd(
    model: TrainModelChoice = typer.Option("cnn", "--model", "-m", help="The model to train (as in 'thor-plan train')."),
    data: TrainDataChoice = typer.Option("digits", "--data", help="Training data (as in 'thor-plan train')."),
    optimizer: OptimizerChoice = typer.Option("thor", "--optimizer", help="Whose search space to tune (each optimizer has its own; see the README): thor (also re-plans the loss threshold), thor-128, kfac, sgd, adamw, mlbfgs, lamb."),
    plan: Path = typer.Option(None, "--plan", help="thor: a plan.json written by 'thor-plan profile' (its folder's losses.csv and timings.csv are re-planned from); without it the model is profiled first."),
    trials: int = typer.Option(20, "--trials", "-n", help="Trials to run now (added to the study's earlier ones)."),
    timeout: float = typer.Option(None, "--timeout", help="Stop starting trials after this many seconds."),
    storage: str = typer.Option("sqlite:///tune.db", "--storage", help="optuna RDB URL: sqlite:///FILE (one machine) or postgresql:// / mysql:// for many workers on one study."),
    study: str = typer.Option(None, "--study", help="Study name (default: MODEL-DATA-OPTIMIZER); an existing study is continued, also for another --target."),
    out: Path = typer.Option(None, "--out", "-o", help="Output folder (default: tuned/STUDY): best.json, report.html and, for thor, plan.json."),
    epochs: int = typer.Option(10, "--epochs", help="At most this many epochs per trial."),
    steps: int = typer.Option(None, "--steps", help="At most this many steps per trial (replaces --epochs; the causal LMs' budget)."),
    target: float = typer.Option(None, "--target", help="The target whose training time is minimised: test accuracy (default 0.97), or validation bits per byte for gpt-tiny / gpt-small (required there)."),
    target_accuracy: float = typer.Option(None, "--target-accuracy", help="The same as --target for models measured in accuracy."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampler and of every trial's training."),
    batch_size: int = typer.Option(32, "--batch-size", help="Samples (sequences for language models) per step."),
    eval_every: int = typer.Option(None, "--eval-every", help="Also evaluate every N steps (default: once per epoch)."),
    graft: str = typer.Option("auto", "--graft", help="THOR variants: auto (the variant's own: adamw for thor-eigen, else sgd), sgd (SGD's step lengths and lr range) or adamw (THOR as a drop-in for AdamW, AdamW's lr range: for transformers)."),
    pruner: PrunerChoice = typer.Option(PrunerChoice.median, "--pruner", help="median: stop a trial whose error is worse than the median of earlier trials at the same step; none."),
    sampler: SamplerChoice = typer.Option(SamplerChoice.tpe, "--sampler", help="tpe (model-based after 5 random trials) or qmc (quasi-random Sobol points, as AlgoPerf's search)."),
    json_out: bool = typer.Option(False, "--json", help="Print only one JSON summary line on stdout (everything else goes to stderr)."),
) -> None:
    """Tune the learning rate, weight decay, warm-up and THOR's damping (or a baseline's
    hyperparameters) for the shortest training time to a target.

    Always ends with the best trial: OUT/best.json, OUT/report.html and, for thor, OUT/plan.json (the profile's plan with the best schedule and its provenance). When no trial reached the target, the closest one is written and the command says what to change.
    """
    from thor_planner.profiling.outputs import check_writable
    from thor_planner.training.loop import TrainConfig
    from thor_planner.training.workloads import TRAIN_MODELS
    from thor_planner.tune import TuneConfig, TuneInterrupted, run_tune, write_outputs
    from thor_planner.tune.study import import_optuna

    with user_errors():
        import_optuna()
        if target is None and target_accuracy is None and TRAIN_MODELS[model.value].task.metric == "accuracy":
            target_accuracy = DEFAULT_TARGET_ACCURACY
        train = TrainConfig(model=model.value, data=data.value, optimizer=optimizer.value, plan=plan, epochs=epochs,
                            steps=steps, batch_size=batch_size, seed=seed, eval_every=eval_every, target=target,
                            target_accuracy=target_accuracy, graft=graft)
        config = TuneConfig(train=train, trials=trials, timeout=timeout, storage=storage, study=study,
                            pruner=pruner.value, sampler=sampler.value)
        folder = out or Path("tuned") / config.study_name
        first_created = None  # the outermost folder this run creates, removed again if left empty
        for candidate in (folder, *folder.parents):
            if candidate.exists():
                break
            first_created = candidate
        check_writable(folder)
        try:
            result = run_tune(config, BarProgress())
            written = write_outputs(folder, result)
        except TuneInterrupted as stop:
            err_console.print(escape(f"Interrupted: the {stop.finished} finished trials are kept in '{storage}' "
                                     f"(study '{config.study_name}'); nothing was written to {folder}"))
            sys.exit(130)
        finally:
            _remove_empty(folder, first_created)
    _report(result, folder, written, json_out)


def _report(result, folder: Path, written: list[Path], json_out: bool) -> None:
    summary, config = result.summary(), result.config
    t = config.train
    lines = err_console if json_out else console
    metric = t.task.metric.replace("_", " ")
    lines.print(escape(f"Wrote {', '.join(str(p) for p in written)}"), highlight=False)
    head = (f"{config.study_name}: best trial {summary['best_trial']} of {summary['trials']} "
            f"({summary['complete']} complete, {summary['pruned']} pruned, {summary['fail']} failed; "
            f"{summary['new_trials']} new)")
    if result.reached:
        lines.print(escape(f"{head}: {result.best_seconds:.2f} s to {metric} {t.target:g}"), highlight=False)
    else:
        budget = f"{t.steps} steps" if t.steps else f"{t.epochs} epochs"
        lines.print(escape(f"{head}: no trial reached {metric} {t.target:g} within {budget}; the closest ended at "
                           f"{result.best_value:.4f} (written as the best). To reach it: raise --epochs or --steps, "
                           "run more --trials, or re-score this study with another --target (no training again)"),
                    highlight=False)
    if result.plan is not None:
        budget = f"--steps {t.steps}" if t.steps else f"--epochs {t.epochs}"
        lines.print(escape(f"Train with it: thor-plan train --model {t.model} --data {t.data} --optimizer thor "
                           f"--plan {folder / 'plan.json'} --lr {summary['best_params']['lr']:.4g} {budget}"
                           + ("" if t.graft == "sgd" else f" --graft {t.graft}")),
                    highlight=False)
    if json_out:
        typer.echo(json.dumps(summary))
