"""``thor-plan train``: train a small model with THOR (planned or fixed split), K-FAC, SGD, AdamW, mL-BFGS or LAMB."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from thor_planner.utils.atomic import check_file_target
from thor_planner.utils.errors import UserError

from thor_planner.training.optimizers import OPTIMIZERS
from thor_planner.training.workloads import DATA, TRAIN_MODELS

from .console import BarProgress, console, err_console, path_value, print_table, user_errors


def _choices(name: str, values) -> type[Enum]:
    """A typer choice list read from a registry (the values are their own names)."""
    return Enum(name, {v: v for v in values}, type=str)


#: Read from the registries, so a registered optimizer or training model is a choice here too.
OptimizerChoice = _choices("OptimizerChoice", OPTIMIZERS)
TrainModelChoice = _choices("TrainModelChoice", TRAIN_MODELS)
TrainDataChoice = _choices("TrainDataChoice", DATA)


class GraftChoice(str, Enum):
    auto = "auto"
    sgd = "sgd"
    adamw = "adamw"
    none = "none"


class LrScheduleChoice(str, Enum):
    cosine = "cosine"
    constant = "constant"


class _TrainBars(BarProgress):
    """Progress bars on stderr; per-epoch lines on ``lines`` (stderr under --json)."""

    def __init__(self, lines: Console) -> None:
        super().__init__()
        self.lines = lines

    def note(self, message: str) -> None:
        if message.startswith("Stopped at step") and "not finite" in message:
            return  # the command reports a diverged run itself, as its one error line
        self.lines.print(escape(message), highlight=False)


def _print_stats(stats: dict, where: Console) -> None:
    rows = [[name, str(s["updates"]), str(s["keeps"]), str(s["stops"]), "yes" if s["frozen"] else "no",
             "—" if s["last_delta"] is None else f"{s['last_delta']:.4g}"] for name, s in stats["layers"].items()]
    print_table(where, ["layer", "updates", "keeps", "stops", "frozen", "last Δ"], rows, title="THOR trace rule")
    where.print(f"step {stats['step']}, interval {stats['interval']}, damping {stats['damping']:.4g}, "
                f"skipped steps {stats['skipped_steps']}", highlight=False)


def _optimizers_help() -> str:
    return "; ".join(f"{name}: {spec.summary}" for name, spec in OPTIMIZERS.items()) + "."


def train_cmd(
    model: TrainModelChoice = typer.Option("cnn", "--model", "-m", help="cnn, mlp (hidden 128), mlp-wide (hidden 512) or resnet18 (1 input channel), which take 1×8×8 inputs, 10 classes; bert-tiny (masked LM on 128 byte tokens, --data text or tokens); gpt-tiny or gpt-small (byte-level causal LMs, --data stdlib or tokens, measured in validation bits per byte)."),
    data: TrainDataChoice = typer.Option("digits", "--data", help="digits (scikit-learn's 8×8 digits, 80/20 split) or synthetic (fixed inputs labelled by a fixed random linear teacher); for bert-tiny: text (Python's bundled documentation, 90/10 split, 15% masked; accuracy over masked tokens) or tokens (random); for gpt-*: stdlib (the standard library's source, split by file) or tokens (random bytes)."),
    optimizer: OptimizerChoice = typer.Option("thor", "--optimizer", help=_optimizers_help()),
    plan: Path = typer.Option(None, "--plan", parser=path_value, metavar="FILE", help="plan.json for --optimizer thor (written by 'thor-plan profile' for this model)."),
    epochs: int = typer.Option(10, "--epochs", help="Passes over the training split."),
    steps: int = typer.Option(None, "--steps", help="Train exactly this many steps (replaces --epochs; the budget for gpt-*, whose batches are random windows)."),
    graft: GraftChoice = typer.Option(GraftChoice.auto, "--graft", help="THOR variants: whose settings the step takes — auto (the variant's own: adamw for thor-eigen, else sgd), sgd (each layer's step has SGD's length; momentum 0.9), adamw (a drop-in for AdamW: Adam's filtered gradient is preconditioned and takes AdamW's length per layer; embeddings and LayerNorm get AdamW; the choice for transformers) or none (raw natural gradient)."),
    lr: float = typer.Option(None, "--lr", help="Peak learning rate (default: thor/thor-128/kfac 0.1 and sgd 0.1 — THOR steps take SGD's length —, with --graft adamw AdamW's 0.01, adamw 0.01, mlbfgs 1.0, lamb 0.05)."),
    lr_schedule: LrScheduleChoice = typer.Option(LrScheduleChoice.cosine, "--lr-schedule", help="cosine (to 0 over the run, per step) or constant; the same for every optimizer."),
    warmup: float = typer.Option(0.0, "--warmup", help="Linear warm-up over this fraction of the steps, before the schedule (e.g. 0.05)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Samples (sequences for language models) per step."),
    seed: int = typer.Option(0, "--seed", help="Seed for initialisation, batches and the planless profile."),
    weight_decay: float = typer.Option(5e-4, "--weight-decay", help="Weight decay (decoupled for adamw, lamb and THOR with --graft adamw)."),
    eval_every: int = typer.Option(None, "--eval-every", help="Also evaluate every N steps (default: once per epoch)."),
    target: float = typer.Option(None, "--target", help="Stop at the first evaluation that reaches this test accuracy (validation bits per byte for gpt-*)."),
    out: Path = typer.Option(None, "--out", "-o", parser=path_value, metavar="FILE", help="CSV of epoch, step, seconds (training only), train_loss, test_loss, test_accuracy (and bits_per_byte for gpt-*) per evaluation (written atomically)."),
    json_out: bool = typer.Option(False, "--json", help="Print only one JSON summary line on stdout (everything else goes to stderr)."),
) -> None:
    """Train a small model and report loss and accuracy against training time.

    Logs per-epoch loss and accuracy and, for THOR variants, the trace rule's per-layer update / keep / stop counts, the update interval and the damping.
    """
    from thor_planner.training.loop import TrainConfig

    lines = err_console if json_out else console
    with user_errors("lower --batch-size"):
        config = TrainConfig(model=model.value, data=data.value, optimizer=optimizer.value, plan=plan,
                             epochs=epochs, steps=steps, lr=lr, batch_size=batch_size, seed=seed,
                             weight_decay=weight_decay, lr_schedule=lr_schedule.value, warmup=warmup,
                             eval_every=eval_every, target=target,
                             graft=None if graft is GraftChoice.none else graft.value)
        if out is not None:
            check_file_target(out, "--out", "train.csv")
        result, caught = _run(config, lines)
        summary = result.summary()
        if result.stopped == "diverged":
            if json_out:
                typer.echo(json.dumps(summary))
            raise UserError(_diverged(result))
        if out is not None:
            from thor_planner.utils.atomic import atomic_write_text

            atomic_write_text(out, result.to_csv())
    _report(result, summary, caught, out, json_out, lines)


def _run(config, lines: Console):
    """Train, holding back Python's warnings (THOR's skipped-step ones point into this command, not
    into anything the user wrote); a run that THOR stops as diverged is a one-line error."""
    import warnings

    from thor_planner.optim import DivergedError
    from thor_planner.training.loop import train

    with warnings.catch_warnings(record=True) as caught:
        try:
            result = train(config, _TrainBars(lines))
        except DivergedError as exc:
            raise UserError(f"{exc}: pass a lower --lr") from None
    return result, [str(w.message).splitlines()[0] for w in caught]


def _diverged(result) -> str:
    c = result.config
    at = f"step {result.steps} of {c.steps or result.steps_per_epoch * c.epochs} (epoch {result.summary()['epochs']})"
    return (f"Training diverged at {at}: the training loss is NaN or Inf; lower --lr (this run used "
            f"{c.learning_rate:g}{'' if c.lr is not None else ', the default for ' + c.optimizer})")


def _report(result, summary: dict, caught: list[str], out: Path | None, json_out: bool, lines: Console) -> None:
    if result.optimizer_stats is not None:
        _print_stats(result.optimizer_stats, lines)
    if caught:
        more = f" ({len(caught)} warnings in all)" if len(caught) > 1 else ""
        lines.print(escape(f"Warning: {caught[-1]}{more}"), highlight=False)
    if out is not None:
        lines.print(escape(f"Wrote {out}"), highlight=False)
    if json_out:
        typer.echo(json.dumps(summary))
    else:
        metric = (f"validation {summary['bits_per_byte']:.4f} bits/byte" if "bits_per_byte" in summary
                  else f"test accuracy {summary['test_accuracy']:.4f}")
        budget = f"{summary['steps']} steps" if result.config.steps else f"{summary['epochs']} epochs"
        console.print(f"[bold]{summary['optimizer']}[/]: {metric}, final loss "
                      f"{summary['final_loss'] if summary['final_loss'] is None else round(summary['final_loss'], 4)}, "
                      f"{budget} in {summary['seconds']:.2f} s of training", highlight=False)
