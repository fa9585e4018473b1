"""The time-to-target benchmark's machinery on a tiny workload: a target set by the tuned baseline
(median of its re-runs' best values), studies that continue from storage instead of training
again, the score read off the stored curves, and the section's goal lines."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
pytest.importorskip("optuna")
import time_to_target as ttt  # noqa: E402
from time_to_target_section import goal_lines  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def registry():
    """The peers the benchmark registers leave the optimizer registry as they found it."""
    from thor_planner.training.optimizers import OPTIMIZERS

    before = dict(OPTIMIZERS)
    yield
    OPTIMIZERS.clear()
    OPTIMIZERS.update(before)


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A one-workload definition file (the mlp on digits, 20 steps) and a storage of its own."""
    defs = tmp_path / "workloads.json"
    defs.write_text(json.dumps({"workloads": {"mlp": {
        "model": "mlp", "data": "digits", "batch_size": 32, "steps": 20, "eval_every": 10, "baseline": "sgd",
        "graft": "sgd", "betas": [0.9, 0.999], "target": None}}}))
    monkeypatch.setattr(ttt, "_DEFINITIONS", [defs])
    monkeypatch.setattr(ttt, "PLANS", [tmp_path])
    return ttt.load_workloads()["mlp"], f"sqlite:///{tmp_path / 'ttt.db'}", defs


def test_the_target_is_the_median_of_the_baselines_best_values_and_is_written_down(tiny) -> None:
    workload, storage, defs = tiny
    target = ttt.set_target(workload, 2, storage, "the command")
    written = json.loads(defs.read_text())["workloads"]["mlp"]
    values = written["target_set_by"]["values"]
    assert len(values) == ttt.TARGET_RERUNS and written["target"] == target
    assert target == sorted(values)[1]  # the median of three, unrounded: the run that set it reaches it
    assert written["target_set_by"]["command"] == "the command" and written["target_set_by"]["baseline"] == "sgd"


def test_a_study_continues_from_storage_and_is_scored_from_its_curves(tiny) -> None:
    workload, storage, _ = tiny
    workload.spec["target"] = 0.5
    ttt.run_study(workload, "adamw", 0, 2, storage, 0.5)
    first = ttt.trials_of(storage, ttt.study_name(workload, "adamw", 0))
    ttt.run_study(workload, "adamw", 0, 2, storage, 0.5)  # both stored: nothing is trained again
    ttt.run_study(workload, "adamw", 0, 3, storage, 0.5)  # one more
    trials = ttt.trials_of(storage, ttt.study_name(workload, "adamw", 0))
    assert len(first) == 2 and len(trials) == 3 and [t.number for t in trials] == [0, 1, 2]
    result = ttt.optimizer_result(workload, "adamw", 1, storage)
    assert result["trials"] == 3 and result["studies"] == 1
    reached = [r["seconds_to_target"] for r in result["trial_records"] if r["seconds_to_target"] is not None]
    assert result["seconds"] == (min(reached) if reached else None)
    assert result["reached"] == len(reached)


def test_goal_lines_say_met_or_missed_with_the_ratio() -> None:
    def opt(seconds):
        return {"seconds": seconds}

    workloads = {"gpt-tiny": {"optimizers": {"thor": opt(60.0), "adamw": opt(100.0), "muon": opt(70.0),
                                             "soap": opt(None), "thor-eigen": opt(None)}}}
    lines = goal_lines(workloads)
    assert lines[0] == "- **met**: thor on gpt-tiny ≤ 0.7× adamw's time; before muon, soap: yes (measured 0.60×)"
    assert lines[1] == ("- **missed**: thor-eigen on gpt-tiny ≤ 0.6× adamw's time; before muon, soap: no (measured ∞ "
                        "(not reached))")
    alone = goal_lines({"gpt-tiny": {"optimizers": {"thor": opt(67.9), "adamw": opt(None)}}})
    assert alone[0] == ("- **not judged**: thor on gpt-tiny ≤ 0.7× adamw's time; before muon, soap: not run (adamw "
                        "did not reach the target; thor did in 67.9 s)")
    curves = {"thor": {"seconds": 67.9, "trial_records": [{"curve": [[400, 60.0, 2.61], [450, 67.9, 2.52]]}]},
              "adamw": {"seconds": None, "trial_records": [{"curve": [[550, 91.4, 2.59], [600, 100.0, 2.58]]},
                                                           {"curve": [[600, 99.0, 3.5]]}]}}
    assert goal_lines({"gpt-tiny": {"optimizers": curves}})[0].endswith(
        "thor did in 67.9 s); adamw's best value, 2.58, first at 100.0 s: thor reached it at 67.9 s (0.68×)")


def test_reporting_never_trains_a_workload_without_a_target(tiny, tmp_path, monkeypatch) -> None:
    workload, storage, defs = tiny
    monkeypatch.setattr(ttt, "train", lambda *a, **k: pytest.fail("--report trained"))
    monkeypatch.setattr(ttt, "write_outputs", lambda results, *a, **k: captured.update(results))
    captured = {}
    ttt.main(["--report", "--definitions", str(defs), "--storage", storage])
    assert captured["mlp"]["status"] == "not run (no target set yet)" and "optimizers" not in captured["mlp"]
    assert goal_lines({"cnn": captured["mlp"]}) == [
        "- **not measured**: thor on cnn ≤ 0.6× sgd's time (the workload was not run)",
        "- **not measured**: thor-eigen on cnn ≤ 1.0× thor's time (the workload was not run)",
        "- **not measured**: shampoo-planned on cnn ≤ 1.0× shampoo's time (the workload was not run)",
        "- **not measured**: soap-planned on cnn ≤ 1.0× soap's time (the workload was not run)"]
    data = json.loads(defs.read_text())
    data["workloads"]["mlp"]["target"] = 0.5
    defs.write_text(json.dumps(data))
    ttt.main(["--report", "--definitions", str(defs), "--storage", storage, "--optimizers", "sgd,thor"])
    assert captured["mlp"]["optimizers"] == {"sgd": {"status": "not run (no trial stored)"},
                                             "thor": {"status": "not run (no trial stored)"}}


def test_merge_replaces_the_rows_run_and_keeps_the_others(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("THOR_BENCH_OUT", str(tmp_path))
    (tmp_path / "results").mkdir()
    row = {"status": "ok", "seconds": 10.0, "trial_records": [{"wall_seconds": 30.0}]}
    stored = {"machine": ttt.machine_line(), "command": "first", "wall_seconds": 100.0, "workloads": {
        "a": {"target": 1.0, "optimizers": {"adamw": row, "thor": {**row, "seconds": 20.0}}},
        "b": {"target": 2.0, "optimizers": {"adamw": row}}}}
    (tmp_path / "results" / "ttt.json").write_text(json.dumps(stored))
    fresh = {"a": {"target": 1.0, "optimizers": {"thor": {**row, "seconds": 5.0}}}}
    merged, kept = ttt.merge_stored(fresh, "ttt", "again")
    assert merged["a"]["optimizers"] == {"adamw": row, "thor": {**row, "seconds": 5.0}}
    assert merged["b"] == stored["workloads"]["b"]
    assert kept["command"] == "first" and kept["reruns"][0]["rows"] == ["thor on a"]
    assert kept["reruns"][0]["command"] == "again"
    different = "a's target is 1.5 here but 1.0 in .*: rows measured against different targets cannot be merged"
    with pytest.raises(SystemExit, match=different):
        ttt.merge_stored({"a": {**fresh["a"], "target": 1.5}}, "ttt", "again")
    with pytest.raises(SystemExit, match="no stored results at .*other.json; run without --merge first"):
        ttt.merge_stored(fresh, "other", "again")
    (tmp_path / "results" / "ttt.json").write_text(json.dumps({**stored, "machine": "AMD EPYC, 2 torch threads"}))
    elsewhere = ("stored rows were measured on 'AMD EPYC, 2 torch threads', this is .*: times from two machines "
                 "cannot share a table; re-run every row here")
    with pytest.raises(SystemExit, match=elsewhere):
        ttt.merge_stored(fresh, "ttt", "again")
