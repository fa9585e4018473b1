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
    model: TrainModelChoice = typer.Option(TrainModelChoice.cnn, "--model", "-m", help="The model to train (as in 'thor-plan train')."),
    data: TrainDataChoice = typer.Option(TrainDataChoice.digits, "--data", help="Training data (as in 'thor-plan train')."),
    optimizer: OptimizerChoice = typer.Option(OptimizerChoice.thor, "--optimizer", help="Whose search space to tune: thor (also re-plans the loss threshold), thor-128, kfac, sgd, adamw, mlbfgs or lamb."),
    plan: Path = typer.Option(None, "--plan", help="thor: a plan.json written by 'thor-plan profile' (its folder's losses.csv and timings.csv are re-planned from); without it the model is profiled first."),
    trials: int = typer.Option(20, "--trials", "-n", help="Trials to run now (added to the study's earlier ones)."),
    timeout: float = typer.Option(None, "--timeout", help="Stop starting trials after this many seconds."),
    storage: str = typer.Option("sqlite:///tune.db", "--storage", help="optuna RDB URL: sqlite:///FILE (one machine) or postgresql:// / mysql:// for many workers on one study."),
    study: str = typer.Option(None, "--study", help="Study name (default: MODEL-DATA-OPTIMIZER); an existing study is continued."),
    out: Path = typer.Option(None, "--out", "-o", help="Output folder (default: tuned/STUDY): best.json, report.html and, for thor, plan.json."),
    epochs: int = typer.Option(10, "--epochs", help="At most this many epochs per trial."),
    target_accuracy: float = typer.Option(0.97, "--target-accuracy", help="Test accuracy whose training time is minimised."),
    seed: int = typer.Option(0, "--seed", help="Seed of the TPE sampler and of every trial's training."),
    eval_every: int = typer.Option(None, "--eval-every", help="Also evaluate every N steps (default: once per epoch)."),
    graft: str = typer.Option("sgd", "--graft", help="thor, thor-128, kfac: sgd (SGD's step lengths and lr range) or adamw (THOR as a drop-in for AdamW, AdamW's lr range: for transformers)."),
    pruner: PrunerChoice = typer.Option(PrunerChoice.median, "--pruner", help="median: stop a trial whose test error is worse than the median of earlier trials at the same step; none."),
    json_out: bool = typer.Option(False, "--json", help="Print only one JSON summary line on stdout (everything else goes to stderr)."),
) -> None:
    """Tune the learning rate, THOR's damping, trace thresholds and intervals (or a baseline's
    hyperparameters) for the shortest training time to a target test accuracy.

    Writes OUT/plan.json (thor: the profile's plan with the best schedule and its provenance), OUT/best.json and OUT/report.html (optuna's figures beside the plan's own).
    """
    from thor_planner.profiling.outputs import check_writable
    from thor_planner.tune import TuneConfig, TuneInterrupted, run_tune, write_outputs
    from thor_planner.tune.study import TuneError, import_optuna

    with user_errors():
        if trials < 1:
            raise TuneError(f"Invalid --trials={trials}: must be >= 1")
        if timeout is not None and not timeout > 0:
            raise TuneError(f"Invalid --timeout={timeout:g}: must be > 0 seconds")
        if not 0 < target_accuracy <= 1:
            raise TuneError(f"Invalid --target-accuracy={target_accuracy:g}: must be in (0, 1], e.g. 0.97")
        if plan is not None and optimizer is not OptimizerChoice.thor:
            raise TuneError(f"--plan applies only to --optimizer thor, not {optimizer.value}: drop --plan")
        import_optuna()
        config = TuneConfig(model=model.value, data=data.value, optimizer=optimizer.value, plan=plan,
                            trials=trials, timeout=timeout, storage=storage, study=study, epochs=epochs,
                            target_accuracy=target_accuracy, seed=seed, eval_every=eval_every, pruner=pruner.value,
                            graft=graft)
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
    summary = result.summary()
    lines = err_console if json_out else console
    lines.print(escape(f"Wrote {', '.join(str(p) for p in written)}"), highlight=False)
    seconds = summary["best_seconds"]
    lines.print(escape(f"{config.study_name}: best trial {summary['best_trial']} of {summary['trials']} "
                       f"({summary['complete']} complete, {summary['pruned']} pruned, {summary['fail']} failed; "
                       f"{summary['new_trials']} new): {seconds:.2f} s to test accuracy {target_accuracy:g}"),
                highlight=False)
    if result.plan is not None:
        lines.print(escape(f"Train with it: thor-plan train --model {model.value} --data {data.value} --optimizer thor "
                           f"--plan {folder / 'plan.json'} --lr {summary['best_params']['lr']:.4g} --epochs {epochs}"
                           + ("" if graft == "sgd" else f" --graft {graft}")),
                    highlight=False)
    if json_out:
        typer.echo(json.dumps(summary))
