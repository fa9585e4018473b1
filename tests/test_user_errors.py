"""What a new user meets first: their own model and data factories, paths and numbers given wrong,
a run that diverges, output read through a pipe. Every mistake is one exact line on stderr, exit
code 2, nothing written; each class of mistake has a representative here.

The commands run in-process through the console script's ``main`` (usage errors are one line there,
as in a shell), in a fresh working folder holding a few files to point at.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from pathlib import Path

import pytest

from thor_planner.cli.app import main
from thor_planner.planning.rules import MEASURED, PREDICTED, crossover

ANSI = re.compile(r"\x1b\[[0-9;]*m")
DEVICE_PROFILE = Path(__file__).resolve().parents[1] / "profiles" / "devices" / "intel-xeon-processor-2t.json"
TINY = ["--batches", "1", "--batch-size", "2", "--time-budget", "0.01"]

FACTORIES = '''
import torch
from torch import nn


def raises():
    raise RuntimeError("cannot build the model")


def needs_depth(depth, width=4):
    return nn.Linear(depth, width)


NOT_A_FUNCTION = 5


class TrainOnlyFails(nn.Module):
    input_shape = (4,)

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x.view(-1, 3) if self.training else x)
'''


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working folder: a folder, a text file, a module of user factories on the path."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "user_factories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_factories", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args: str) -> tuple[int, str, str]:
    """``thor-plan ARGS`` as the console script runs it: exit code, stdout, stderr (no colours)."""
    out, err = io.StringIO(), io.StringIO()
    saved, sys.argv = sys.argv, ["thor-plan", *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = saved
    return code, ANSI.sub("", out.getvalue()), ANSI.sub("", err.getvalue())


def files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if "__pycache__" not in p.parts}


def assert_refused(workdir: Path, args: list[str], message: str) -> None:
    """Exit code 2, exactly ``Error: message`` on stderr, nothing on stdout, nothing written."""
    before = files(workdir)
    code, out, err = run(*args)
    assert (code, out) == (2, ""), (code, out, err)
    assert err == f"Error: {message}\n"
    assert files(workdir) == before


USER_CODE = [  # the user's model: factories that cannot be called, that raise, models that fail to train
    (["profile", "--model", "user_factories:raises"],
     "Model factory 'user_factories:raises' raised RuntimeError (cannot build the model): fix the factory, "
     "or pass another --model"),
    (["profile", "--model", "user_factories:needs_depth"],
     "Model factory 'user_factories:needs_depth' needs an argument 'depth' that thor-plan does not pass: give it "
     "a default value, or point at a function that takes no arguments"),
    (["profile", "--model", "user_factories:NOT_A_FUNCTION"],
     "Model factory 'user_factories:NOT_A_FUNCTION' is int, not a function: point it at a function (or class) "
     "that takes no arguments"),
    (["profile", "--model", "cnn", "--data", "user_factories:needs_depth"],
     "Data factory 'user_factories:needs_depth' needs an argument 'depth' that thor-plan does not pass: give it "
     "a default value, or point at a function that takes no arguments"),
    (["profile", "--model", "user_factories:TrainOnlyFails", *TINY],
     "Model 'user_factories:TrainOnlyFails' in training mode on batches of 2 from data 'synthetic' raised "
     "RuntimeError (shape '[-1, 3]' is invalid for input of size 8): pass data, --batch-size or --input-size it "
     "can train on"),
]

PATHS = [  # files where folders belong and the reverse, empty strings
    (["profile", "--model", "cnn", "--out", "notes.txt"],
     "Cannot write to output folder 'notes.txt': it is a file; choose a folder with --out"),
    (["profile", "--model", "cnn", "--weights", "folder"],
     "Weights file 'folder' is a folder: pass the file written by torch.save(model.state_dict(), PATH) to --weights"),
    (["profile", "--model", "cnn", "--data", "notes.txt"],
     "Data 'notes.txt' is a file: pass the folder of images (one subfolder per class) that holds it, or a factory "
     "'pkg.module:function'"),
    (["profile", "--model", "cnn", "--device-profile", "folder"],
     "Device profile 'folder' is a folder: pass the .json file that 'thor-plan device-profile' wrote in it"),
    (["plan", "--from", "notes.txt"],
     "Profile folder 'notes.txt' is a file: pass the folder written by 'thor-plan profile' that holds it ('.')"),
    (["profile", "--model", "cnn", "--out", ""],
     "Invalid value for '--out' / '-o': an empty path: give a file or folder name (see 'thor-plan profile --help')"),
    (["show", ""], "Invalid value for 'PLAN': an empty path: give a file or folder name (see 'thor-plan show --help')"),
    (["device-profile", "--out", "folder"],
     "Cannot write --out 'folder': it is a folder; pass a file name such as 'folder/"),  # + the device's name
    (["device-profile", "--out", "notes.txt/cpu.json"], "Cannot write --out 'notes.txt/cpu.json': 'notes.txt' is a "
     "file, not a folder"),
]

NUMBERS = [  # out of range
    (["profile", "--model", "cnn", "--seed", "-1"], "Invalid --seed=-1: must be an integer from 0 to 9223372036854775807"),
    (["train", "--optimizer", "sgd", "--seed", "99999999999999999999999"],
     "Invalid --seed=99999999999999999999999: must be an integer from 0 to 9223372036854775807"),
    (["profile", "--model", "cnn", "--overhead", "inf"],
     "Invalid --overhead=inf: must be > 0, e.g. 0.05 for 5% of a training step"),
    (["profile", "--model", "cnn", "--time-budget", "inf"], "Invalid --time-budget=inf: must be > 0 seconds"),
    (["profile", "--model", "cnn", "--max-split", "1"],
     "Invalid --max-split=1: must be >= 16 (the candidates are 1, then powers of two from 16); for other splits "
     "give --candidates"),
    (["device-profile", "--cell-budget", "inf"], "Invalid --cell-budget=inf: must be > 0 seconds"),
]


@pytest.mark.parametrize("args, message", USER_CODE + PATHS + NUMBERS, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_bad_input_is_one_line_and_writes_nothing(workdir: Path, args: list[str], message: str) -> None:
    if message.endswith("'folder/"):  # the example file name is the device's
        code, out, err = run(*args)
        assert (code, out) == (2, "") and err.startswith(f"Error: {message}") and err.endswith(".json'\n")
        assert files(workdir) == {"folder", "notes.txt", "user_factories.py"}
        return
    assert_refused(workdir, args, message)
    assert not (workdir / "profiles").exists()


def test_out_of_memory_names_the_sizes_to_lower(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import thor_planner.inputs.data

    def huge(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 256000000000000 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(thor_planner.inputs.data, "load_batches", huge)
    assert_refused(workdir, ["profile", "--model", "cnn", "--out", "run"],
                   "Out of memory (an allocation of 2.56e+05 GB failed): lower --batch-size, --batches or --input-size")


def test_a_diverging_run_is_one_line_exit_2(workdir: Path) -> None:
    code, out, err = run("train", "--optimizer", "thor-128", "--lr", "1e6", "--epochs", "2", "--out", "run.csv")
    assert (code, out) == (2, "")
    assert err.splitlines()[-1] == ("Error: Training diverged at step 3 of 90 (epoch 1): the training loss is NaN "
                                    "or Inf; lower --lr (this run used 1e+06)")
    assert "Warning" not in err and "RuntimeWarning" not in err and "Traceback" not in err
    assert [line for line in err.splitlines() if not re.fullmatch(r"train: [\d.]+ s", line)] == err.splitlines()[-1:]
    assert not (workdir / "run.csv").exists()


def test_a_diverging_run_in_json(workdir: Path) -> None:
    code, out, err = run("train", "--optimizer", "sgd", "--lr", "1e6", "--epochs", "2", "--json")
    assert code == 2 and err.endswith("(this run used 1e+06)\n")
    summary = json.loads(out)
    assert summary["stopped"] == "diverged" and (summary["epochs"], summary["steps"]) == (1, 3)
    assert summary["final_loss"] is None and summary["optimizer"] == "sgd"


def test_piped_show_prints_whole_names(profiled_dir: Path, tmp_path: Path) -> None:
    plan = json.loads((profiled_dir / "plan.json").read_text())
    long = "encoder.layer.11.attention.output.dense_with_a_rather_long_name"
    plan["layers"][0]["name"] = long
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    code, out, err = run("show", path)
    assert code == 0, err
    assert "…" not in out
    row = next(line for line in out.splitlines() if line.startswith(long))
    assert row.split()[:4] == [long, plan["layers"][0]["kind"], str(plan["layers"][0]["a_dim"]),
                               str(plan["layers"][0]["a_split"])]


def test_advice_is_only_what_the_run_accepts() -> None:
    cands, frac, perf = [1, 16, 32], [0.0, 0.01, 0.5], [1.0, 0.001, 0.0005]
    assert crossover(cands, frac, perf).warning.endswith(MEASURED.degenerate)
    assert "--rule budget" in MEASURED.degenerate
    predicted = crossover(cands, frac, perf, PREDICTED).warning
    assert predicted.endswith(PREDICTED.degenerate) and "--rule budget" not in predicted
    assert "--candidates 16,32,64" in predicted
    none = crossover([1, 16], [0.0, 0.0], [1.0, 0.9], PREDICTED).warning
    assert "do not cross" in none and "--rule budget" not in none


def test_device_profile_warning_suggests_what_profile_accepts(workdir: Path) -> None:
    code, out, err = run("profile", "--model", "cnn", "--batches", "2", "--batch-size", "16",
                         "--device-profile", DEVICE_PROFILE, "--out", "offline")
    assert code == 0, err
    warning = next(line for line in out.splitlines() if line.startswith("Warning:"))
    assert warning.endswith(PREDICTED.degenerate) and "--rule budget" not in warning
    code, out, err = run("profile", "--model", "cnn", "--batches", "2", "--batch-size", "16", "--device-profile",
                         DEVICE_PROFILE, "--candidates", "16,32,64,128", "--out", "offline16")
    assert code == 0 and "Warning" not in out, out  # following the advice


def test_default_output_is_an_ignored_runs_folder(workdir: Path) -> None:
    """The README's first command writes under runs/ (ignored by git), never over the committed
    examples in profiles/."""
    code, out, err = run("profile", "--model", "cnn", *TINY, "--device", "cpu")
    assert code == 0, err
    assert out.splitlines()[-1] == "Wrote runs/cnn-cpu/plan.json, report.html, losses.csv, timings.csv"
    assert not (workdir / "profiles").exists()
    ignored = (Path(__file__).resolve().parents[1] / ".gitignore").read_text().splitlines()
    assert "/runs/" in ignored


@pytest.mark.parametrize("width, boxed", [(200, True), (60, False)])
def test_tables_never_cut_a_cell(width: int, boxed: bool) -> None:
    """A terminal wide enough gets rich's box; a narrow one, like a pipe, the plain table: every
    cell whole either way."""
    from rich.console import Console

    from thor_planner.cli.console import print_table

    name = "bert.encoder.layer.11.attention.output.dense"
    buf = io.StringIO()
    print_table(Console(file=buf, force_terminal=True, width=width, color_system=None),
                ["layer", "kind", "A dim", "A split"], [[name, "linear", "769", "256"]])
    text = buf.getvalue()
    assert ("┃ layer" in text) is boxed
    assert any(line.strip(" │").startswith(name) for line in text.splitlines()), text
