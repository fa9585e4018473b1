"""``thor_planner.training`` and ``thor-plan train``: config validation, a short run per optimizer,
the JSON summary, the CSV, and plans that do not fit the model."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from thor_planner.cli.app import app
from thor_planner.capture.collector import layer_specs
from thor_planner.planning.plan import Crossover, LayerPlan, Plan, Schedule
from thor_planner.utils.progress import Progress
from thor_planner.training.loop import CSV_COLUMNS, TrainConfig, TrainConfigError, build_model, train
from thor_planner.training.optimizers import OPTIMIZERS

ANSI = re.compile(r"\x1b\[[0-9;]*m")
SUMMARY_KEYS = {"optimizer", "epochs", "steps", "seconds", "test_accuracy", "final_loss", "stopped"}


def hand_plan(model_name: str, split: int) -> Plan:
    """A plan for the training model ``model_name`` with every factor at ``split`` (no measuring)."""
    layers = [LayerPlan(name=s.name, kind=s.kind, a_dim=s.a_dim, g_dim=s.g_dim, a_split=min(split, s.a_dim),
                        g_split=min(split, s.g_dim), a_loss=0.0, g_loss=0.0)
              for s in layer_specs(build_model(model_name))]
    return Plan(model={"name": model_name}, device={"type": "cpu", "backend": "torch-cholesky"}, capture={},
                rule={"name": "hand-picked", "loss_threshold": 0.01}, candidates=[1],
                curves={"loss_fraction": [1.0], "inversion_seconds": [0.0], "normalized_perf": [1.0]},
                crossover=Crossover(x=None, y=None, split_dim=split), schedule=Schedule(), layers=layers)


@pytest.fixture(scope="module")
def cnn_plan(tmp_path_factory) -> Path:
    return hand_plan("cnn", 16).save(tmp_path_factory.mktemp("plans") / "cnn.json")


def invoke(*args):
    return CliRunner().invoke(app, ["train", *map(str, args)])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "Invalid epochs=0: must be >= 1"),
        ({"lr": 0.0}, "Invalid lr=0.0: must be > 0"),
        ({"lr": -0.1}, "Invalid lr=-0.1: must be > 0"),
        ({"batch_size": 0}, "Invalid batch_size=0: must be >= 1"),
        ({"weight_decay": -1.0}, "Invalid weight_decay=-1.0: must be >= 0"),
        ({"momentum": 1.0}, "Invalid momentum=1.0: must be in [0, 1)"),
        ({"optimizer": "lbfgs"}, "Invalid optimizer='lbfgs': use thor, thor-eigen, thor-128, kfac, sgd, adamw, mlbfgs or lamb"),
        ({"model": "vgg"}, "Invalid model='vgg': use cnn, mlp, mlp-wide, resnet18, bert-tiny, gpt-tiny or gpt-small"),
        ({"data": "mnist"}, "Invalid data='mnist': use digits, synthetic, text, tokens or stdlib"),
        ({"data": "stdlib"}, "Invalid data='stdlib': model 'cnn' takes digits or synthetic"),
        ({"steps": 0}, "Invalid steps=0: must be >= 1 (or None: epochs set the budget)"),
        ({"warmup": 1.0}, "Invalid warmup=1.0: must be in [0, 1) (a fraction of the steps)"),
        ({"model": "gpt-tiny", "data": "stdlib", "target_accuracy": 0.5},
         "Invalid target_accuracy=0.5: model 'gpt-tiny' is measured in bits per byte: pass target="),
        ({"model": "gpt-tiny", "data": "stdlib", "target": -1.0},
         "Invalid target=-1.0: must be > 0 (validation bits per byte)"),
        ({"optimizer": "sgd", "options": {"betas": (0.9, 0.99)}},
         "Invalid options={'betas': …}: not options of optimizer 'sgd' (it takes none)"),
        ({"lr_schedule": "step"}, "Invalid lr_schedule='step': use cosine or constant"),
        ({"eval_every": 0}, "Invalid eval_every=0: must be >= 1 (or None: each epoch)"),
        ({"target_accuracy": 1.5}, "Invalid target_accuracy=1.5: must be in (0, 1]"),
        ({"target": 1.5}, "Invalid target=1.5: must be in (0, 1] (test accuracy)"),
        ({"optimizer": "sgd", "plan": "p.json"},
         "Invalid plan='p.json': a plan applies only to optimizer 'thor', not 'sgd'"),
        ({"graft": "adam"}, "Invalid graft='adam': use 'sgd', 'adamw' or None"),
        ({"optimizer": "thor-eigen", "graft": "sgd"}, "Invalid graft='sgd': thor-eigen stands in for adamw"),
        ({"optimizer": "adamw", "graft": "adamw"},
         "Invalid graft='adamw': grafting applies only to thor, thor-eigen, thor-128 or kfac, not 'adamw'"),
    ],
)
def test_config_validation_messages(kwargs, message) -> None:
    with pytest.raises(TrainConfigError) as err:
        TrainConfig(**kwargs)
    assert str(err.value) == message
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_one_epoch_per_optimizer_beats_chance(optimizer) -> None:
    """Planless ``thor`` profiles the cnn first (about a second) and says so."""
    notes = []

    class Notes(Progress):
        def note(self, message: str) -> None:
            notes.append(message)

    result = train(TrainConfig(optimizer=optimizer, epochs=1), Notes())
    summary = result.summary()
    assert set(summary) == SUMMARY_KEYS
    assert summary["optimizer"] == optimizer and summary["epochs"] == 1 and summary["seconds"] > 0
    assert summary["test_accuracy"] > 0.3  # chance is 0.1
    assert result.stopped == "completed" and len(result.records) == 1 and result.steps == 45
    assert any(n.startswith("epoch 1/1: train loss") for n in notes)
    if optimizer in ("thor", "thor-eigen", "thor-128", "kfac"):
        assert set(result.optimizer_stats) >= {"layers", "interval", "damping", "step"}
        assert result.optimizer_stats["step"] == 45
    else:
        assert result.optimizer_stats is None
    if optimizer in ("thor", "thor-eigen"):
        assert notes[0].startswith("No plan given: profiling cnn on digits first")
        assert result.plan_split is not None and result.profile_seconds > 0


def test_adamw_grafted_thor_takes_adamws_default_rate_and_trains() -> None:
    config = TrainConfig(optimizer="thor-128", graft="adamw", epochs=1)
    assert config.learning_rate == TrainConfig(optimizer="adamw").learning_rate == 0.01
    result = train(config)
    assert result.records[-1].test_accuracy > 0.8  # the cnn after one epoch (chance is 0.1)
    assert result.optimizer_stats["skipped_steps"] == 0


def test_deterministic_and_stops_at_target() -> None:
    cfg = TrainConfig(optimizer="sgd", epochs=2, eval_every=10)
    a, b = train(cfg), train(cfg)
    strip = [[replace(r, seconds=0.0) for r in res.records] for res in (a, b)]
    assert strip[0] == strip[1]
    assert [r.step for r in a.records] == [10, 20, 30, 40, 45, 50, 60, 70, 80, 90]
    target = a.records[3].test_accuracy
    early = train(replace(cfg, target_accuracy=target))
    assert early.stopped == "target" and early.steps <= 40
    assert early.target_seconds == early.records[-1].seconds


def test_cli_json_prints_exactly_one_summary_line(cnn_plan: Path) -> None:
    result = invoke("--model", "cnn", "--data", "digits", "--optimizer", "thor", "--plan", cnn_plan,
                    "--epochs", "1", "--json")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert set(summary) == SUMMARY_KEYS and summary["optimizer"] == "thor" and summary["test_accuracy"] > 0.3
    assert "epoch 1/1" in result.stderr and "THOR trace rule" in result.stderr  # logs go to stderr


def test_cli_out_csv_has_the_documented_columns(tmp_path: Path) -> None:
    out = tmp_path / "run.csv"
    result = invoke("--optimizer", "sgd", "--epochs", "2", "--seed", "1", "--out", out)
    assert result.exit_code == 0, result.output
    assert f"Wrote {out}" in ANSI.sub("", result.stdout)
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == CSV_COLUMNS == ("epoch", "step", "seconds", "train_loss", "test_loss", "test_accuracy")
    assert [int(r["step"]) for r in rows] == [45, 90]
    assert float(rows[1]["seconds"]) > float(rows[0]["seconds"]) > 0
    assert [p.name for p in tmp_path.iterdir()] == ["run.csv"]  # no temporary file left


def _fails(result, message: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert ANSI.sub("", result.stderr) == f"Error: {message}\n"
    assert result.stdout == "" and "Traceback" not in result.output


def test_cli_plan_for_another_model_is_refused(tmp_path: Path) -> None:
    plan = hand_plan("mlp", 16).save(tmp_path / "mlp.json")
    _fails(invoke("--model", "cnn", "--optimizer", "thor", "--plan", plan, "--epochs", "1", "--out",
                  tmp_path / "x.csv"),
           "Plan does not match the model (5 mismatches): fc1: plan a_dim=65, model a_dim=129; "
           "fc1: plan g_dim=128, model g_dim=64; fc2: plan a_dim=129, model a_dim=65; "
           "fc2: plan g_dim=128, model g_dim=10; fc3: not a Conv2d/Linear layer of the model. "
           "Profile this model again to make a plan for it")
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "0"], "Invalid --epochs=0: must be >= 1"),
        (["--lr", "0"], "Invalid --lr=0.0: must be > 0"),
        (["--optimizer", "thor", "--plan", "missing.json"],
         "Plan file 'missing.json' not found: pass the plan.json written by 'thor-plan profile'"),
        (["--optimizer", "sgd", "--out", "no/such/folder/run.csv"],
         "Cannot write --out 'no/such/folder/run.csv': folder 'no/such/folder' does not exist"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args, message) -> None:
    _fails(invoke(*args), message)


def test_cli_unknown_optimizer_is_refused_by_the_choice() -> None:
    result = invoke("--optimizer", "lbfgs")
    assert result.exit_code == 2 and result.stdout == ""
    flat = " ".join(re.sub(r"[│╭╮╰╯─]", " ", ANSI.sub("", result.stderr)).split())  # typer's usage panel
    assert "'lbfgs' is not one of 'thor', 'thor-eigen', 'thor-128', 'kfac', 'sgd', 'adamw'" in flat
