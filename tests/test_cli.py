"""The ``thor-plan`` command line: end to end on the tiny models, and bad input (exit code 2, one
exact line on stderr, no traceback, nothing written)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import thor_planner.cli.console
from thor_planner.cli.app import app
from thor_planner import __version__
from thor_planner.inversion.backends import BACKENDS
from thor_planner.planning.measurements import Measurements
from thor_planner.inputs.models import load_model
from thor_planner.planning.plan import Plan, Schedule
from thor_planner.report.html import build_report

OUTPUTS = {"plan.json", "report.html", "losses.csv", "timings.csv"}
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def invoke(*args: str | Path):
    return CliRunner().invoke(app, [str(a) for a in args])


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden temporary files included) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_fails(result, message: str) -> None:
    """Exit code 2, exactly ``Error: message`` as one line on stderr, nothing on stdout, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert ANSI.sub("", result.stderr) == f"Error: {message}\n"
    assert result.stdout == ""
    assert "Traceback" not in result.output


# -------------------------------------------------------------------------------- end to end


def test_profile_end_to_end(profiled_run) -> None:
    folder = profiled_run.folder
    assert {p.name for p in folder.iterdir()} == OUTPUTS  # no temporary or extra files
    plan = Plan.load(folder / "plan.json")
    assert plan.model == {"name": "cnn", "source": "builtin", "num_params": 13706}
    assert plan.device["type"] == "cpu"
    assert plan.capture["batches"] == 2 and plan.capture["batch_size"] == 16
    assert plan.capture["fisher"] == "sampled" and plan.capture["data"] == "synthetic"
    assert plan.rule["name"] == "auto" and plan.rule["loss_threshold"] == 0.01
    assert plan.candidates == [1, 16, 32, 64, 128]  # 1, then powers of two up to the largest dim (145)
    assert [lp.name for lp in plan.layers] == ["conv1", "conv2", "fc1", "fc2"]
    assert plan.skipped == []
    assert plan.split_dim in plan.candidates
    plan.check_model(load_model("cnn").model)

    m = Measurements.load(folder)
    assert m.candidates == plan.candidates
    assert len(m.losses) == 8 and set(m.losses["factor"]) == {"a", "g"}
    assert m.meta["step_seconds"] > 0
    assert (folder / "timings.csv").read_text().startswith("# thor-plan {")
    html = (folder / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "thor-plan report — cnn on cpu" in html

    lines = profiled_run.stdout.splitlines()
    assert any(line.startswith(f"Global split {plan.split_dim} ") and line.endswith("for 4 layers")
               for line in lines), profiled_run.stdout
    assert lines[-1] == f"Wrote {folder}/plan.json, report.html, losses.csv, timings.csv"
    assert "Traceback" not in profiled_run.stderr


def test_show_prints_the_plan(profiled_dir: Path) -> None:
    plan = Plan.load(profiled_dir / "plan.json")
    result = invoke("show", profiled_dir / "plan.json")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("cnn (13,706 parameters) on cpu · ")
    assert "data: synthetic, 2×16 samples, Fisher sampled · rule auto, loss threshold 0.01\n" in out
    assert re.search(rf"^Global split {plan.split_dim} \((rule auto: budget; )?crossover at b≈\d+(, interval b≈\d+–\d+)?\) "
                     "for 4 layers$",
                     out, re.M), out
    assert re.search(r"^layer +kind +A dim +A split +A loss +G dim +G split +G loss$", out, re.M), out
    for lp in plan.layers:  # piped: a plain table, one whole line per layer
        assert re.search(rf"^{lp.name} +{lp.kind} +{lp.a_dim} +{lp.a_split} +{lp.a_loss:.3f} +{lp.g_dim} ", out, re.M), out


def test_plan_from_replans_without_measuring(profile_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import thor_planner.profiling.profiler

    def no_measuring(*args, **kwargs):
        raise AssertionError("'thor-plan plan' must not measure")

    monkeypatch.setattr(thor_planner.profiling.profiler, "run_profile", no_measuring)
    csvs = {name: (profile_copy / name).read_bytes() for name in ("timings.csv", "losses.csv")}
    old_report = (profile_copy / "report.html").read_text()
    result = invoke("plan", "--from", profile_copy, "--rule", "budget", "--overhead", "0.05")
    assert result.exit_code == 0, result.output

    plan = Plan.load(profile_copy / "plan.json")
    m = Measurements.load(profile_copy)
    assert plan.rule["name"] == "budget"
    assert plan.rule["overhead"] == 0.05 and plan.rule["interval"] == 100
    assert plan.rule["step_seconds"] == m.meta["step_seconds"]
    every = Schedule().factor_every  # per step: refresh / 100 steps + the work above the cheapest split's
    work = [a + c / every for a, c in m.step_costs]
    costs = [s / 100 + w - min(work) for s, w in zip(m.seconds, work)]
    fits = [b for b, c in zip(m.candidates, costs) if c <= 0.05 * m.meta["step_seconds"]]
    assert plan.split_dim == (max(fits) if fits else m.candidates[costs.index(min(costs))])
    for name, content in csvs.items():
        assert (profile_copy / name).read_bytes() == content, f"{name} was rewritten"
    new_report = (profile_copy / "report.html").read_text()
    assert new_report != old_report
    assert new_report == build_report(plan, m.losses, m.timings)  # the report of the new plan
    assert {p.name for p in profile_copy.iterdir()} == OUTPUTS
    assert result.stdout.splitlines()[-1] == f"Wrote {profile_copy / 'plan.json'}"


def test_report_rewrites_the_html(profile_copy: Path) -> None:
    report = profile_copy / "report.html"
    report.unlink()
    others = snapshot(profile_copy)
    result = invoke("report", profile_copy)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"Wrote {report}\n"
    assert report.read_text().startswith("<!DOCTYPE html>")
    assert {k: v for k, v in snapshot(profile_copy).items() if k != "report.html"} == others


def test_profile_mlp_skip_and_save_factors(tiny_profile: list[str], tmp_path: Path) -> None:
    out = tmp_path / "mlp"
    result = invoke(*[a if a != "cnn" else "mlp" for a in tiny_profile], "--skip", "fc2", "--save-factors",
                    "--device", "cpu", "--out", out)
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == OUTPUTS | {"factors.pt"}
    assert result.stdout.splitlines()[-1] == f"Wrote {out}/plan.json, report.html, losses.csv, timings.csv, factors.pt"
    plan = Plan.load(out / "plan.json")
    assert plan.model["name"] == "mlp"
    assert [lp.name for lp in plan.layers] == ["fc1", "fc3"]
    assert plan.skipped == [{"name": "fc2", "reason": "matched --skip 'fc2'"}]
    assert plan.capture["skip"] == "fc2"

    factors = torch.load(out / "factors.pt", weights_only=True)
    assert set(factors) == {"a", "g"}
    for which in ("a", "g"):
        assert set(factors[which]) == {"fc1", "fc3"}
        for lp in plan.layers:
            dim = getattr(lp, f"{which}_dim")
            f = factors[which][lp.name]
            assert f.shape == (dim, dim) and f.device.type == "cpu"
            assert torch.allclose(f, f.T, atol=1e-6)

    shown = invoke("show", out / "plan.json")
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.endswith("skipped fc2: matched --skip 'fc2'\n")
    assert "for 2 layers, 1 skipped" in shown.stdout


def test_profile_empirical_fisher_on_digits(tiny_profile: list[str], tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    out = tmp_path / "digits"
    result = invoke(*tiny_profile, "--fisher", "empirical", "--data", "digits", "--device", "cpu", "--out", out)
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == OUTPUTS
    plan = Plan.load(out / "plan.json")
    assert plan.capture["fisher"] == "empirical" and plan.capture["data"] == "digits"
    assert len(plan.layers) == 4


# ---------------------------------------------------------------------------- bad input: profile


CUDA_MESSAGE = ("CUDA was asked for (--device cuda) but torch sees no CUDA device: use --device cpu, "
                "or install a CUDA build of torch on a GPU machine")

BAD_PROFILES = [
    (["--model", "nope"],
     "Unknown model 'nope': use one of bert-base, bert-tiny, cnn, gpt-small, gpt-tiny, mlp, resnet18, resnet50, or a factory as 'pkg.module:function'"),
    (["--model", "no_such_module_xyz:make"],
     "Cannot import module 'no_such_module_xyz' for model factory 'no_such_module_xyz:make': "
     "No module named 'no_such_module_xyz'"),
    (["--model", "thor_planner.inputs.models:no_such_factory"],
     "Model factory 'thor_planner.inputs.models:no_such_factory' not found: "
     "module 'thor_planner.inputs.models' has no attribute 'no_such_factory'"),
    (["--model", "[/]x"],  # rich markup in user input is printed as is
     "Unknown model '[/]x': use one of bert-base, bert-tiny, cnn, gpt-small, gpt-tiny, mlp, resnet18, resnet50, or a factory as 'pkg.module:function'"),
    (["--threshold", "0"], "Invalid --threshold=0: must be in (0, 1), e.g. 0.01 for 1%"),
    (["--threshold", "1.5"], "Invalid --threshold=1.5: must be in (0, 1), e.g. 0.01 for 1%"),
    (["--overhead", "0"], "Invalid --overhead=0: must be > 0, e.g. 0.05 for 5% of a training step"),
    (["--overhead", "-1"], "Invalid --overhead=-1: must be > 0, e.g. 0.05 for 5% of a training step"),
    (["--interval", "0"], "Invalid --interval=0: must be >= 1 step"),
    (["--batches", "0"], "Invalid --batches=0: must be >= 1"),
    (["--batch-size", "0"], "Invalid --batch-size=0: must be >= 1"),
    (["--time-budget", "0"], "Invalid --time-budget=0: must be > 0 seconds"),
    (["--candidates", "a,b"], "Invalid --candidates='a,b': give comma-separated integers, e.g. 1,16,64,256"),
    (["--candidates", "16,1"], "Invalid --candidates=16,1: give increasing integers >= 1, e.g. 1,16,64,256"),
    (["--candidates", "0,16"], "Invalid --candidates=0,16: give increasing integers >= 1, e.g. 1,16,64,256"),
    (["--skip", "("],
     "Invalid --skip='(': not a regular expression (missing ), unterminated subpattern at position 0)"),
    (["--backend", "magic"], f"Invalid --backend='magic': use auto or one of {', '.join(sorted(BACKENDS))}"),
    (["--device", "cuda"], CUDA_MESSAGE),
]


@pytest.mark.parametrize("args, message", BAD_PROFILES, ids=[" ".join(a) for a, _ in BAD_PROFILES])
def test_profile_bad_input(tiny_profile: list[str], tmp_path: Path, args: list[str], message: str) -> None:
    if args == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out = tmp_path / "out"
    assert_fails(invoke(*tiny_profile, *args, "--out", out), message)
    assert not out.exists()
    assert os.listdir(tmp_path) == []


def test_profile_failure_keeps_an_existing_folder(profile_copy: Path) -> None:
    before = snapshot(profile_copy)
    assert_fails(invoke("profile", "--model", "nope", "--out", profile_copy),
                 "Unknown model 'nope': use one of bert-base, bert-tiny, cnn, gpt-small, gpt-tiny, mlp, resnet18, resnet50, or a factory as 'pkg.module:function'")
    assert snapshot(profile_copy) == before


def test_profile_missing_weights(tiny_profile: list[str], tmp_path: Path) -> None:
    out, weights = tmp_path / "out", tmp_path / "missing.pt"
    assert_fails(invoke(*tiny_profile, "--weights", weights, "--out", out),
                 f"Weights file '{weights}' not found: pass an existing file to --weights")
    assert not out.exists()


def test_profile_output_under_a_file(tiny_profile: list[str], tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("keep me")
    out = blocker / "out"
    assert_fails(invoke(*tiny_profile, "--out", out),
                 f"Cannot write to output folder '{out}' (Not a directory): choose a writable folder with --out")
    assert blocker.read_text() == "keep me"
    assert os.listdir(tmp_path) == ["file.txt"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permissions")
def test_profile_output_folder_read_only(tiny_profile: list[str], tmp_path: Path) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        assert_fails(invoke(*tiny_profile, "--out", out),
                     f"Cannot write to output folder '{out}' (Permission denied): choose a writable folder with --out")
        assert os.listdir(out) == []
    finally:
        out.chmod(0o700)


def test_profile_output_folder_refuses_files(tiny_profile: list[str], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The read-only case as root sees it too (root ignores chmod): creating a file fails."""
    import thor_planner.profiling.outputs

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(thor_planner.profiling.outputs.tempfile, "NamedTemporaryFile", denied)
    out = tmp_path / "out"
    out.mkdir()
    assert_fails(invoke(*tiny_profile, "--out", out),
                 f"Cannot write to output folder '{out}' (Permission denied): choose a writable folder with --out")
    assert os.listdir(out) == []


def test_long_error_stays_on_one_line(tiny_profile: list[str], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(thor_planner.cli.console.err_console, "_width", 40)  # a narrow terminal
    out = tmp_path / ("deep-folder-name-" * 4) / "file.txt"
    out.parent.mkdir()
    out.write_text("")
    message = f"Cannot write to output folder '{out / 'x'}' (Not a directory): choose a writable folder with --out"
    assert len(message) > 120
    assert_fails(invoke(*tiny_profile, "--out", out / "x"), message)


# -------------------------------------------------------------------------- bad input: the others


def test_show_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text("{not json")
    assert_fails(invoke("show", path),
                 f"Plan file '{path}' is not valid JSON (Expecting property name enclosed in double quotes: "
                 "line 1 column 2 (char 1)): re-create it with 'thor-plan plan'")


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["layers"][1].update(a_split=0), "Invalid plan field layers[1].a_split=0: must be an integer >= 1"),
    (lambda d: d.update(schema_version=2),
     "Invalid plan field schema_version=2: this version of thor-plan reads schema_version 1"),
    (lambda d: d["rule"].pop("loss_threshold"), "Invalid plan: missing field rule.loss_threshold"),
    (lambda d: d.update(crossover=[]), "Invalid plan field crossover=[]: must be an object"),
    (lambda d: d["skipped"].append({"name": "fc9"}), "Invalid plan: missing field skipped[0].reason"),
])
def test_show_malformed_plan(profiled_dir: Path, tmp_path: Path, edit, message: str) -> None:
    d = json.loads((profiled_dir / "plan.json").read_text())
    edit(d)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(d))
    assert_fails(invoke("show", path), message)
    assert os.listdir(tmp_path) == ["plan.json"]


def test_show_missing_plan(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    assert_fails(invoke("show", path),
                 f"Plan file '{path}' not found: pass the plan.json written by 'thor-plan profile'")


def test_show_a_folder(tmp_path: Path) -> None:
    assert_fails(invoke("show", tmp_path),
                 f"Plan file '{tmp_path}' is a folder: pass the plan.json inside it ('{tmp_path / 'plan.json'}')")


def test_plan_from_empty_folder(tmp_path: Path) -> None:
    assert_fails(invoke("plan", "--from", tmp_path),
                 f"Profile folder '{tmp_path}' lacks losses.csv and timings.csv: "
                 "run 'thor-plan profile' to measure it first")
    assert os.listdir(tmp_path) == []


def test_plan_from_folder_lacking_timings(profile_copy: Path) -> None:
    (profile_copy / "timings.csv").unlink()
    before = snapshot(profile_copy)
    assert_fails(invoke("plan", "--from", profile_copy),
                 f"Profile folder '{profile_copy}' lacks timings.csv: run 'thor-plan profile' to measure it first")
    assert snapshot(profile_copy) == before


def test_plan_from_missing_folder(tmp_path: Path) -> None:
    folder = tmp_path / "nowhere"
    assert_fails(invoke("plan", "--from", folder),
                 f"Profile folder '{folder}' not found: pass a folder written by 'thor-plan profile'")
    assert not folder.exists()


def test_plan_from_header_without_step_time(profile_copy: Path) -> None:
    path = profile_copy / "timings.csv"
    first, _, rest = path.read_text().partition("\n")
    meta = json.loads(first.removeprefix("# thor-plan "))
    del meta["step_seconds"]
    path.write_text("# thor-plan " + json.dumps(meta) + "\n" + rest)
    before = snapshot(profile_copy)
    assert_fails(invoke("plan", "--from", profile_copy, "--rule", "budget"),
                 f"'{path}' header lacks step_seconds: re-create it with 'thor-plan profile'")
    assert snapshot(profile_copy) == before


def test_plan_from_timings_with_bad_candidates(profile_copy: Path) -> None:
    path = profile_copy / "timings.csv"
    header, _, rest = path.read_text().partition("\n")
    path.write_text(header + "\n" + rest.replace("\n16,", "\n1.5,", 1))
    before = snapshot(profile_copy)
    assert_fails(invoke("plan", "--from", profile_copy),
                 f"'{path}' needs increasing integer candidates >= 1 and positive median_s: "
                 "re-create it with 'thor-plan profile'")
    assert snapshot(profile_copy) == before


def test_plan_from_losses_without_g_rows(profile_copy: Path) -> None:
    path = profile_copy / "losses.csv"
    losses = pd.read_csv(path)
    losses[losses["factor"] == "a"].to_csv(path, index=False)
    before = snapshot(profile_copy)
    assert_fails(invoke("plan", "--from", profile_copy),
                 f"'{path}' needs one 'a' and one 'g' row per layer, a registered kind (conv2d, linear) and integer dims >= 1: "
                 "re-create it with 'thor-plan profile'")
    assert snapshot(profile_copy) == before


@pytest.mark.parametrize("args, message", [
    (["--overhead", "0"], "Invalid --overhead=0: must be > 0, e.g. 0.05 for 5% of a training step"),
    (["--threshold", "1"], "Invalid --threshold=1: must be in (0, 1), e.g. 0.01 for 1%"),
    (["--world-size", "0"], "Invalid --world-size=0: must be >= 1 (the number of data-parallel ranks)"),
])
def test_plan_bad_options_write_nothing(profile_copy: Path, args: list[str], message: str) -> None:
    before = snapshot(profile_copy)
    assert_fails(invoke("plan", "--from", profile_copy, *args), message)
    assert snapshot(profile_copy) == before


def test_report_without_plan(profile_copy: Path) -> None:
    (profile_copy / "plan.json").unlink()
    before = snapshot(profile_copy)
    assert_fails(invoke("report", profile_copy),
                 f"Profile folder '{profile_copy}' lacks plan.json: write it with 'thor-plan plan --from {profile_copy}'")
    assert snapshot(profile_copy) == before


def test_report_on_folder_without_measurements(tmp_path: Path) -> None:
    assert_fails(invoke("report", tmp_path),
                 f"Profile folder '{tmp_path}' lacks losses.csv and timings.csv: "
                 "run 'thor-plan profile' to measure it first")
    assert os.listdir(tmp_path) == []


def test_report_with_malformed_plan(profile_copy: Path) -> None:
    plan = profile_copy / "plan.json"
    d = json.loads(plan.read_text())
    d["curves"]["loss_fraction"] = d["curves"]["loss_fraction"][:2]
    plan.write_text(json.dumps(d))
    before = snapshot(profile_copy)
    assert_fails(invoke("report", profile_copy),
                 f"Invalid plan field curves.loss_fraction={json.dumps(d['curves']['loss_fraction'])}: "
                 "must be a list of 5 numbers, one per candidate")
    assert snapshot(profile_copy) == before


# ---------------------------------------------------------------------------------- help, version


@pytest.mark.parametrize("args, mentions", [
    ([], ["profile", "plan", "report", "show", "--version"]),
    (["profile"], ["--model", "--data", "--batches", "--fisher", "--skip", "--device", "--candidates",
                   "--rule", "--threshold", "--overhead", "--out", "--save-factors"]),
    (["plan"], ["--from", "--rule", "--threshold", "--overhead", "--interval"]),
    (["report"], ["folder", "A folder written by 'thor-plan profile'"]),
    (["show"], ["plan", "A plan.json file"]),
])
def test_help(args: list[str], mentions: list[str]) -> None:
    result = invoke(*args, "--help")
    assert result.exit_code == 0, result.output
    for word in mentions:
        assert word.lower() in result.stdout.lower(), f"{word} not in {' '.join(args)} --help"


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"thor-plan {__version__}\n"


@pytest.mark.parametrize("args,message", [
    (["profile", "--rule", "bogus"],
     "Error: Invalid value for '--rule': Value error, 'bogus' is not one of 'crossover', 'budget', 'auto'. "
     "(see 'thor-plan profile --help')"),
    (["show"], "Error: Missing argument 'PLAN'. (see 'thor-plan show --help')"),
])
def test_console_script_usage_errors_are_one_line(args, message, tmp_path):
    import subprocess

    from conftest import console_script

    proc = subprocess.run([console_script(), *args], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "COLUMNS": "60"})
    assert proc.returncode == 2
    assert proc.stderr == message + "\n"
    assert proc.stdout == "" and list(tmp_path.iterdir()) == []


def test_plan_for_several_ranks_uses_one_ranks_share(profile_copy: Path) -> None:
    """--world-size N: the rules see the busiest rank's LPT share of each candidate's measured time."""
    from thor_planner.planning.assignment import rank_share
    from thor_planner.planning.measurements import Measurements

    result = invoke("plan", "--from", profile_copy, "--world-size", "4")
    assert result.exit_code == 0, result.stderr
    plan = json.loads((profile_copy / "plan.json").read_text())
    m = Measurements.load(profile_copy)
    dims = {}
    for row in m.losses.to_dict("records"):
        dims.setdefault(row["layer"], {})[row["factor"]] = int(row["dim"])
    pairs = [(d["a"], d["g"]) for d in dims.values()]
    expected = [s * rank_share(pairs, b, 4) for s, b in zip(m.seconds, m.candidates)]
    assert plan["rule"]["world_size"] == 4
    assert plan["curves"]["inversion_seconds"] == pytest.approx(m.seconds)
    assert plan["curves"]["inversion_seconds_per_rank"] == pytest.approx(expected)
    assert all(p <= s for p, s in zip(expected, m.seconds))


def test_plan_for_fsdp_tiles_the_shards_and_says_what_changed(profile_copy: Path) -> None:
    """--fsdp N: every G split tiles its layer's N shards; the summary names the splits it changed."""
    from thor_planner.partition import crossed_rows, partition, shard_rows

    result = invoke("plan", "--from", profile_copy, "--fsdp", "4")
    assert result.exit_code == 0, result.stderr
    plan = Plan.load(profile_copy / "plan.json")
    assert plan.rule["fsdp"] == 4
    for lp in plan.layers:
        assert not crossed_rows(partition(lp.g_dim, lp.g_split), shard_rows(lp.g_dim, 4)) \
            or lp.name in plan.rule.get("fsdp_gathered", [])
    changed = [lp for lp in plan.layers if lp.g_split_unconstrained is not None]
    assert "FSDP over 4 ranks: " in result.stdout
    for lp in changed:
        assert f"{lp.name} {lp.g_split_unconstrained}→{lp.g_split}" in result.stdout
    assert_fails(invoke("plan", "--from", profile_copy, "--fsdp", "0"),
                 "Invalid --fsdp=0: must be >= 1 (the number of ranks FSDP shards the model over)")
    assert_fails(invoke("plan", "--from", profile_copy, "--fsdp", "4", "--world-size", "2"),
                 "--world-size 2 and --fsdp 4 describe the same ranks: give --fsdp alone")
