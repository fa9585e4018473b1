"""``thor-plan profile`` refuses bad data, options and files with one line naming the fix (exit 2,
nothing written); SIGTERM cleans up like Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import console_script
from test_cli import assert_fails, invoke, snapshot

FACTORIES = '''
import time
import torch

def nan_inputs(batch_size=8):
    x = torch.randn(batch_size, 1, 8, 8)
    x[0, 0, 0, 0] = float("inf")
    return [(x, torch.zeros(batch_size, dtype=torch.long))] * 4

def wrong_shape(batch_size=8):
    return [(torch.randn(batch_size, 3, 28, 28), torch.zeros(batch_size, dtype=torch.long))] * 4

def labels_out_of_range(batch_size=8):
    return [(torch.randn(batch_size, 1, 8, 8), torch.full((batch_size,), 99))] * 4

def negative_labels(batch_size=8):
    return [(torch.randn(batch_size, 1, 8, 8), torch.full((batch_size,), -1))] * 4

def float_labels(batch_size=8):
    return [(torch.randn(batch_size, 1, 8, 8), torch.zeros(batch_size))] * 4

def raising(batch_size=8):
    raise ValueError("no such shard")

def raising_later(batch_size=8):
    yield torch.randn(batch_size, 1, 8, 8), torch.zeros(batch_size, dtype=torch.long)
    raise OSError("disk went away")

def slow(batch_size=8):
    import os
    open(os.environ["SLOW_MARKER"], "w").close()
    time.sleep(60)
    return []
'''


@pytest.fixture
def factories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module of data factories, importable as ``badfactories``; returns its module name."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "badfactories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(src))
    sys.modules.pop("badfactories", None)
    return "badfactories"


BAD_DATA = [
    ("nan_inputs", [], "Data 'badfactories:nan_inputs' has NaN or Inf inputs in batch 1: "
                       "clean or normalise the data before profiling"),
    ("wrong_shape", [], "Model 'cnn' cannot take the inputs of data 'badfactories:wrong_shape' (shape 3×28×28; "
                        "it takes 1×8×8): RuntimeError: Given groups=1, weight of size [16, 1, 3, 3], expected "
                        "input[1, 3, 28, 28] to have 1 channels, but got 3 channels instead: "
                        "pass data shaped as the model expects"),
    ("labels_out_of_range", [], "Data 'badfactories:labels_out_of_range' has labels up to 99, but the model has "
                                "10 classes: use a model with at least 100 classes (--num-classes)"),
    ("labels_out_of_range", ["--fisher", "empirical"],
     "Data 'badfactories:labels_out_of_range' has labels up to 99, but the model has 10 classes: "
     "use a model with at least 100 classes (--num-classes)"),
    ("negative_labels", [], "Data 'badfactories:negative_labels' has negative labels (down to -1): "
                            "labels must be class indices from 0"),
    ("float_labels", [], "Data 'badfactories:float_labels' has float32 labels: labels must be integer class "
                         "indices (torch.long)"),
    ("raising", [], "Data factory 'badfactories:raising' raised ValueError (no such shard): fix the factory, "
                    "or pass other data with --data"),
    ("raising_later", [], "Data factory 'badfactories:raising_later' raised OSError (disk went away): "
                          "fix the factory, or pass other data with --data"),
]


@pytest.mark.parametrize("factory, extra, message", BAD_DATA, ids=[f"{f}{''.join(e)}" for f, e, _ in BAD_DATA])
def test_bad_data_factory(factories: str, tiny_profile: list[str], tmp_path: Path, factory: str,
                          extra: list[str], message: str) -> None:
    out = tmp_path / "out"
    assert_fails(invoke(*tiny_profile, "--data", f"{factories}:{factory}", *extra, "--out", out), message)
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--skip", ".*"], "--skip '.*' matches all 4 Conv2d/Linear layers of 'cnn': nothing is left to plan; "
                       "narrow the regular expression"),
    (["--candidates", "100000"], "Invalid --candidates=100000: give at least two splits up to the largest factor "
                                 "dimension of 'cnn' (145), e.g. 1,16,64"),
    (["--candidates", "16,100000"], "Invalid --candidates=16,100000: give at least two splits up to the largest "
                                    "factor dimension of 'cnn' (145), e.g. 1,16,64"),
    (["--backend", "newton-schulz-tf32", "--device", "cpu"],
     "Invalid --backend='newton-schulz-tf32': it runs on CUDA only; on cpu use auto or one of newton-schulz, "
     "torch-cholesky, torch-cholesky-solve, torch-inv"),
    (["--backend", "newton-schulz-bf16", "--device", "cpu"],
     "Invalid --backend='newton-schulz-bf16': it runs on CUDA only; on cpu use auto or one of newton-schulz, "
     "torch-cholesky, torch-cholesky-solve, torch-inv"),
])
def test_bad_profile_options(tiny_profile: list[str], tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "deeper" / "out"
    assert_fails(invoke(*tiny_profile, *args, "--out", out), message)
    assert os.listdir(tmp_path) == []  # the folders made for the run are gone again


def test_candidates_above_every_dimension_are_dropped() -> None:
    from thor_planner.profiling.profiler import usable_candidates
    from thor_planner.utils.progress import Progress

    class Notes(Progress):
        def __init__(self):
            self.notes = []

        def note(self, message):
            self.notes.append(message)

    notes = Notes()
    assert usable_candidates((1, 16, 256, 4096), 145, "cnn", notes) == [1, 16]
    assert notes.notes == ["Candidates above the largest factor dimension (145) dropped: 256, 4096"]
    assert usable_candidates((1, 145), 145, "cnn", notes) == [1, 145]


def test_weights_that_are_not_a_torch_file(tiny_profile: list[str], tmp_path: Path) -> None:
    weights = tmp_path / "weights.txt"
    weights.write_text("epoch 10: loss 0.31\n")
    assert_fails(invoke(*tiny_profile, "--weights", weights, "--out", tmp_path / "out"),
                 f"Cannot read weights file '{weights}': it is not a PyTorch file: pass a state dict written by "
                 "torch.save(model.state_dict(), PATH)")
    assert os.listdir(tmp_path) == ["weights.txt"]


def test_empty_image_folder_for_a_one_channel_model(tiny_profile: list[str], tmp_path: Path) -> None:
    data = tmp_path / "images"
    (data / "cats").mkdir(parents=True)
    assert_fails(invoke(*tiny_profile, "--data", data, "--out", tmp_path / "out"),
                 f"Data folder '{data}' has no images: pass a folder with one subfolder of images per class")


# ------------------------------------------------------------------------ measurement files


def test_timings_row_with_a_missing_field(profile_copy: Path) -> None:
    path = profile_copy / "timings.csv"
    lines = path.read_text().splitlines(keepends=True)
    fields = lines[3].split(",")
    fields[3] = ""  # max_s of the second candidate
    lines[3] = ",".join(fields)
    path.write_text("".join(lines))
    before = snapshot(profile_copy)
    assert_fails(invoke("plan", "--from", profile_copy),
                 f"Line 4 of '{path}' lacks max_s: re-create it with 'thor-plan profile'")
    assert_fails(invoke("report", profile_copy),
                 f"Line 4 of '{path}' lacks max_s: re-create it with 'thor-plan profile'")
    assert snapshot(profile_copy) == before


def test_timings_with_a_row_cut_short(profile_copy: Path) -> None:
    path = profile_copy / "timings.csv"
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = ",".join(lines[2].split(",")[:4]) + "\n"
    path.write_text("".join(lines))
    assert_fails(invoke("plan", "--from", profile_copy),
                 f"Line 3 of '{path}' lacks repeats, blocks, gflop, predicted: re-create it with 'thor-plan profile'")


def test_timings_with_its_last_row_deleted(profile_copy: Path) -> None:
    path = profile_copy / "timings.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))
    before = snapshot(profile_copy)
    message = (f"'{profile_copy}' has losses for candidates 1,16,32,64,128 but timings for 1,16,32,64: "
               "re-run 'thor-plan profile'")
    assert_fails(invoke("plan", "--from", profile_copy), message)
    assert_fails(invoke("report", profile_copy), message)
    assert snapshot(profile_copy) == before


def test_report_refuses_a_plan_for_other_candidates(profile_copy: Path) -> None:
    losses = pd.read_csv(profile_copy / "losses.csv").drop(columns=["128"])
    losses.to_csv(profile_copy / "losses.csv", index=False)
    path = profile_copy / "timings.csv"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
    before = snapshot(profile_copy)
    assert_fails(invoke("report", profile_copy),
                 f"'{profile_copy / 'plan.json'}' is for candidates 1,16,32,64,128 but the measurements for "
                 f"1,16,32,64: re-plan with 'thor-plan plan --from {profile_copy}'")
    assert snapshot(profile_copy) == before


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["layers"][0].update(a_split=d["layers"][0]["a_dim"] + 1),
     "Invalid plan field layers[0].a_split=11: must be an integer in [1, a_dim=10]"),
    (lambda d: d["layers"][2].update(g_split=4096),
     "Invalid plan field layers[2].g_split=4096: must be an integer in [1, g_dim=64]"),
    (lambda d: d.update(layers=[]),
     "Invalid plan field layers=[]: must list at least one layer (a plan preconditions something)"),
    (lambda d: d["crossover"].update(interval=[40, 20]),
     "Invalid plan field crossover.interval=[40, 20]: must be [low, high] with low <= high, or null"),
])
def test_plan_validation(profiled_dir: Path, tmp_path: Path, edit, message: str) -> None:
    d = json.loads((profiled_dir / "plan.json").read_text())
    edit(d)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(d))
    assert_fails(invoke("show", path), message)


# ------------------------------------------------------------------------------------ SIGTERM


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX signals")
def test_sigterm_leaves_no_output_folder(factories: str, tmp_path: Path) -> None:
    marker, out = tmp_path / "started", tmp_path / "run" / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "src"), os.environ.get("PYTHONPATH", "")]),
           "SLOW_MARKER": str(marker)}
    proc = subprocess.Popen([console_script(), "profile", "--model", "cnn", "--data", f"{factories}:slow",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert marker.exists(), proc.communicate(timeout=5)
        assert out.is_dir()  # the run had made its folder
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143
    assert stderr == "Interrupted: nothing was written.\n" and stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "started"]


# ------------------------------------------------------------------- what the CLI says about it


def test_show_states_the_interval_tie_break_and_busy_machine(profiled_dir: Path, tmp_path: Path) -> None:
    d = json.loads((profiled_dir / "plan.json").read_text())
    d["crossover"].update(x=106.4, y=0.3, split_dim=128, warning=None, interval=[90.2, 131.0], spans=[64, 128],
                          tie_break="the interval b≈90–131 spans candidates 64, 128: 128 holds the largest share "
                                    "of it (76%)")
    d["device"]["busy"] = {"busy": True, "warning": "Other processes used up to 1.9 CPU cores while timing"}
    d["rule"] = {"name": "crossover", "loss_threshold": 0.01}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(d))
    result = invoke("show", path)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("Global split"))
    assert lines[i:i + 3] == [
        "Global split 128 (crossover at b≈106, interval b≈90–131) for 4 layers",
        "Note: the interval b≈90–131 spans candidates 64, 128: 128 holds the largest share of it (76%).",
        "Warning: Other processes used up to 1.9 CPU cores while timing"]


def test_budget_plan_states_rule_and_crossing(profile_copy: Path) -> None:
    result = invoke("plan", "--from", profile_copy, "--rule", "budget")
    assert result.exit_code == 0, result.output
    plan = json.loads((profile_copy / "plan.json").read_text())
    x = plan["crossover"]["x"]
    assert x is not None  # the curves' crossing is kept apart from the rule's choice
    assert result.stdout.startswith(f"Global split {plan['crossover']['split_dim']} (rule budget; crossover at "
                                    f"b≈{x:.0f}")


def test_profile_records_interval_busy_and_damping(profiled_dir: Path) -> None:
    import math

    plan = json.loads((profiled_dir / "plan.json").read_text())
    low, high = plan["crossover"]["interval"]
    assert low <= plan["crossover"]["x"] <= high
    busy = plan["device"]["busy"]
    assert set(busy) == {"busy", "checked", "threshold_cores", "others_peak_cores", "measurements", "repeated",
                         "disturbed", "warning"}
    assert busy["measurements"] >= len(plan["candidates"]) + 1  # every candidate and the training step
    assert plan["device"]["accuracy"]["shift"] == math.sqrt(0.03)
    assert isinstance(plan["device"]["backends_cached"], bool)


def test_readme_lists_every_profile_option() -> None:
    import typer.main

    from thor_planner.cli.app import app

    command = typer.main.get_command(app).commands["profile"]
    options = {name for param in command.params if getattr(param, "param_type_name", "") == "option"
               for name in param.opts if name.startswith("--") and name != "--help"}
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme[readme.index("`thor-plan profile` options"):readme.index("### Inversion backends")]
    listed = set(re.findall(r"`(--[a-z-]+)", table)) - {"--help"}  # "(all have `--help`)"
    assert options == listed
