"""The plan file: make_plan on hand-made measurements, JSON round trip, validation messages (matched
exactly), the model check and the atomic save."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pytest

from thor_planner.utils.errors import UserError
from thor_planner.planning.measurements import Measurements
from thor_planner.inputs.models import load_model
from thor_planner.planning.plan import Plan, PlanError, Schedule
from thor_planner.planning.planner import Rule, RuleConfig, make_plan

CANDIDATES = [1, 16, 32, 64, 128]
SECONDS = [1e-4, 3e-4, 5e-4, 8e-4, 1.2e-3]

# The built-in cnn's factors (A: im2col inputs + ones column, G: output channels), with hand-made
# information losses per candidate split.
LOSSES = [
    ("conv1", "conv2d", "a", 10, [0.05, 0.0, 0.0, 0.0, 0.0]),
    ("conv1", "conv2d", "g", 16, [0.2, 0.0, 0.0, 0.0, 0.0]),
    ("conv2", "conv2d", "a", 145, [0.9, 0.5, 0.3, 0.1, 0.005]),
    ("conv2", "conv2d", "g", 32, [0.4, 0.02, 0.0, 0.0, 0.0]),
    ("fc1", "linear", "a", 129, [0.8, 0.4, 0.2, 0.05, 0.001]),
    ("fc1", "linear", "g", 64, [0.5, 0.1, 0.005, 0.0, 0.0]),
    ("fc2", "linear", "a", 65, [0.3, 0.05, 0.008, 0.001, 0.0]),
    ("fc2", "linear", "g", 10, [0.1, 0.0, 0.0, 0.0, 0.0]),
]


def small_measurements() -> Measurements:
    losses = pd.DataFrame(
        [{"layer": n, "kind": k, "factor": f, "dim": d, **{str(b): v for b, v in zip(CANDIDATES, vals)}}
         for n, k, f, d, vals in LOSSES],
        columns=["layer", "kind", "factor", "dim", *map(str, CANDIDATES)],
    )
    timings = pd.DataFrame({
        "candidate": CANDIDATES, "median_s": SECONDS, "min_s": [s * 0.9 for s in SECONDS],
        "max_s": [s * 1.2 for s in SECONDS], "repeats": [7] * 5, "blocks": ["1x10"] * 5,
        "gflop": [1e-3] * 5, "predicted": [False] * 5,
    })
    meta = {
        "model": {"name": "cnn", "source": "builtin", "num_params": 13706},
        "device": {"type": "cpu", "name": "test cpu", "torch": "2.x", "cuda": None, "threads": 2,
                   "backend": "torch-cholesky", "dtype": "float32"},
        "capture": {"data": "synthetic", "batches": 2, "batch_size": 16, "fisher": "sampled", "seed": 0},
        "step_seconds": 0.002,
        "skipped": [{"name": "head", "reason": "matched --skip 'head'"}],
    }
    return Measurements(losses=losses, timings=timings, meta=meta)


@pytest.fixture(scope="module")
def plan() -> Plan:
    return make_plan(small_measurements(), RuleConfig(name="crossover"))


def splits(p: Plan) -> dict[str, tuple[int, int]]:
    return {lp.name: (lp.a_split, lp.g_split) for lp in p.layers}


# ------------------------------------------------------------------------------------ make_plan


def test_auto_takes_the_budget_rule_when_the_crossover_is_degenerate(plan: Plan) -> None:
    auto = make_plan(small_measurements())
    assert auto.rule["name"] == "auto" and auto.rule["chose"] == "budget"
    assert auto.rule["because"] == plan.crossover.warning.split(":")[0]
    budget = make_plan(small_measurements(), RuleConfig(name="budget"))
    assert auto.split_dim == budget.split_dim and auto.crossover.x == plan.crossover.x
    no_step = small_measurements()
    no_step.meta["step_seconds"] = None  # a crossing with a warning but no timed step: auto keeps the crossing
    assert make_plan(no_step).split_dim == plan.split_dim


def test_make_plan_crossover(plan: Plan) -> None:
    assert plan.rule == {"name": "crossover", "loss_threshold": 0.01}
    assert plan.candidates == CANDIDATES
    # fraction of the 8 factors with loss < 1% at each candidate
    assert plan.curves["loss_fraction"] == [0.0, 3 / 8, 6 / 8, 6 / 8, 1.0]
    assert plan.curves["normalized_perf"] == pytest.approx([1e-4 / s for s in SECONDS])
    assert plan.curves["inversion_seconds"] == SECONDS
    # the curves cross between b=1 and b=16: x = 1 + 15 * 1 / (1 + 3/8 - 1/3)
    assert plan.crossover.x == pytest.approx(1 + 15 / (1 + 3 / 8 - 1 / 3))
    assert plan.split_dim == 16
    assert plan.crossover.warning is not None and plan.crossover.warning.startswith("Degenerate crossover")
    # each factor: smallest candidate <= 16 under the threshold, else 16, capped at its dimension
    assert splits(plan) == {"conv1": (10, 16), "conv2": (16, 16), "fc1": (16, 16), "fc2": (16, 10)}
    assert plan.layer("conv2").a_loss == 0.5 and plan.layer("conv1").a_loss == 0.0
    # timing spread: min = 0.9 × median, max = 1.2 × median. Lower perf curve min(p_1)/max(p_16) = 0.25
    # crosses at 1 + 15 / (1 + 0.375 − 0.25); the upper one max(p_1)/min(p_b) = 4/9 at 16 and 4/15 at 32
    # crosses between 16 and 32, where the differences are 3/8 − 4/9 and 6/8 − 4/15.
    d16, d32 = 3 / 8 - 4 / 9, 6 / 8 - 4 / 15
    assert plan.crossover.interval == pytest.approx([1 + 15 / 1.125, 16 + 16 * -d16 / (d32 - d16)])
    assert plan.crossover.spans == [16] and plan.crossover.tie_break is None
    assert plan.skipped == [{"name": "head", "reason": "matched --skip 'head'"}]
    assert plan.model["name"] == "cnn" and plan.capture["batch_size"] == 16


def with_step_costs(m: Measurements, apply_s: list[float], capture_s: list[float]) -> Measurements:
    m.timings = m.timings.assign(apply_s=apply_s, capture_s=capture_s)
    return m


def test_the_budget_counts_the_measured_per_step_work() -> None:
    """Allowed per step: 0.05 × 0.002 s = 100 µs. Refresh / 10 steps: 10, 30, 50, 80, 120 µs; per-step
    work apply + capture / factor_every (5): 10+10, 20+10, 40+20, 60+20, 80+40 µs, counted above the
    cheapest (20 µs): 0, 10, 40, 60, 100. Totals 10, 40, 90, 140, 220 µs: b=32 fits, 64 no longer
    does (the refresh alone allowed it)."""
    m = with_step_costs(small_measurements(), [1e-5, 2e-5, 4e-5, 6e-5, 8e-5], [5e-5, 5e-5, 1e-4, 1e-4, 2e-4])
    p = make_plan(m, RuleConfig(name=Rule.budget, overhead=0.05, interval=10), Schedule(factor_every=5))
    assert p.split_dim == 32 and p.rule["counts"] == "refresh / interval + per-step work"
    assert p.curves["per_step_seconds"] == pytest.approx([0.0, 1e-5, 4e-5, 6e-5, 1e-4])
    tight = make_plan(m, RuleConfig(name=Rule.budget, overhead=0.004, interval=10), Schedule(factor_every=5))
    assert tight.crossover.warning == ("No candidate fits the budget: even b=1, the cheapest, costs 1e-05 s per "
                                       "step (refresh 0.0001 s / 10 steps + 0 s of per-step work), over 0.004 × "
                                       "0.002 s. Raise --overhead or --interval.")
    # none fits and split 1's per-step work is dearer than 16's (diagonal blocks one by one): the cheapest
    m = with_step_costs(small_measurements(), [9e-5, 2e-5, 4e-5, 6e-5, 8e-5], [5e-5, 5e-5, 1e-4, 1e-4, 2e-4])
    cheapest = make_plan(m, RuleConfig(name=Rule.budget, overhead=0.005, interval=10), Schedule(factor_every=5))
    # work 100, 30, 60, 80, 120 µs → 70, 0, 30, 50, 90 above the cheapest; totals 80, 30, 80, 130, 210 µs
    assert cheapest.split_dim == 16 and "even b=16, the cheapest, costs 3e-05 s per step" in cheapest.crossover.warning


def test_per_step_costs_survive_the_csv_and_an_older_profile_has_none(tmp_path) -> None:
    m = with_step_costs(small_measurements(), [1e-5] * 5, [2e-5] * 5)
    (tmp_path / "new").mkdir(), (tmp_path / "old").mkdir()
    m.save(tmp_path / "new")
    assert Measurements.load(tmp_path / "new").step_costs == [(1e-5, 2e-5)] * 5
    small_measurements().save(tmp_path / "old")
    old = Measurements.load(tmp_path / "old")
    assert old.step_costs is None and "per_step_seconds" not in make_plan(old).curves
    text = (tmp_path / "new" / "timings.csv").read_text().replace("1e-05,2e-05,inverse", ",2e-05,inverse", 1)
    (tmp_path / "new" / "timings.csv").write_text(text)
    with pytest.raises(UserError, match="^'.*timings.csv' needs positive apply_s and capture_s on every row of the "
                                        "plan's family, or neither: re-create it with 'thor-plan profile'$"):
        Measurements.load(tmp_path / "new")


def test_make_plan_budget() -> None:
    # allowed per refresh: 0.05 overhead × 0.002 s step × 10 steps = 1 ms → b=64 (0.8 ms) fits, 128 not
    p = make_plan(small_measurements(), RuleConfig(name=Rule.budget, overhead=0.05, interval=10))
    assert p.rule == {"name": "budget", "loss_threshold": 0.01, "overhead": 0.05, "interval": 10,
                      "step_seconds": 0.002, "counts": "refresh / interval"}
    assert p.split_dim == 64 and p.crossover.warning is None
    # the curves' crossing is still described (as under the crossover rule), apart from the rule's choice
    assert p.crossover.x == pytest.approx(1 + 15 / (1 + 3 / 8 - 1 / 3))
    assert p.crossover.tie_break is None
    assert splits(p) == {"conv1": (10, 16), "conv2": (64, 32), "fc1": (64, 32), "fc2": (32, 10)}


def test_make_plan_same_after_measurements_round_trip(tmp_path: Path, plan: Plan) -> None:
    small_measurements().save(tmp_path)
    again = make_plan(Measurements.load(tmp_path), RuleConfig(name="crossover"))
    assert splits(again) == splits(plan) and again.split_dim == plan.split_dim
    assert again.curves["loss_fraction"] == plan.curves["loss_fraction"]


# ------------------------------------------------------------------------------------ round trip


def test_save_load_round_trip(tmp_path: Path, plan: Plan) -> None:
    path = plan.save(tmp_path / "plan.json")
    assert path == tmp_path / "plan.json"
    assert json.loads(path.read_text()) == plan.to_dict()
    loaded = Plan.load(path)
    assert loaded.to_dict() == plan.to_dict()
    assert loaded == plan
    assert Plan.from_dict(plan.to_dict()) == plan
    assert os.listdir(tmp_path) == ["plan.json"]  # no temporary file left behind
    assert (path.stat().st_mode & 0o777) == 0o644


def test_schedule_round_trip() -> None:
    s = Schedule(damping_init=0.02345, damping_decay=0.5467, interval_initial=5, interval_max=500,
                 omega1=0.02, omega2=0.0)
    assert Schedule.from_dict(s.to_dict()) == s


# ----------------------------------------------------------------------------- validation messages


def _set(path: str, value: Any) -> Callable[[dict], None]:
    """A mutation that sets ``path`` (``"layers.0.a_split"``) to ``value`` in a plan dict."""
    *parents, last = path.split(".")

    def mutate(d: dict) -> None:
        for key in parents:
            d = d[int(key)] if isinstance(d, list) else d[key]
        d[int(last) if isinstance(d, list) else last] = value
    return mutate


def _del(path: str) -> Callable[[dict], None]:
    *parents, last = path.split(".")

    def mutate(d: dict) -> None:
        for key in parents:
            d = d[int(key)] if isinstance(d, list) else d[key]
        del d[last]
    return mutate


def _duplicate(d: dict) -> None:
    d["layers"][2]["name"] = d["layers"][0]["name"]


def _omega(d: dict) -> None:
    d["layers"][0].update(omega1=0.01, omega2=0.5)


BAD_PLANS = [
    # missing fields, top level and nested
    (_del("candidates"), "Invalid plan: missing field candidates"),
    (_del("schema_version"), "Invalid plan: missing field schema_version"),
    (_del("layers.0.g_split"), "Invalid plan: missing field layers[0].g_split"),
    (_del("schedule.damping.init"), "Invalid plan: missing field schedule.damping.init"),
    (_del("crossover.split_dim"), "Invalid plan: missing field crossover.split_dim"),
    (_del("rule.loss_threshold"), "Invalid plan: missing field rule.loss_threshold"),
    (_del("curves.normalized_perf"), "Invalid plan: missing field curves.normalized_perf"),
    # schema version
    (_set("schema_version", 2),
     "Invalid plan field schema_version=2: this version of thor-plan reads schema_version 1"),
    (_set("schema_version", "1"),
     'Invalid plan field schema_version="1": this version of thor-plan reads schema_version 1'),
    # objects
    (_set("model", "cnn"), 'Invalid plan field model="cnn": must be an object'),
    (_set("curves", None), "Invalid plan field curves=null: must be an object"),
    (_set("crossover", 5), "Invalid plan field crossover=5: must be an object"),
    (_set("schedule", []), "Invalid plan field schedule=[]: must be an object"),
    (_set("layers", {}), "Invalid plan field layers={}: must be a list"),
    (_set("layers.1", 7), "Invalid plan field layers[1]=7: must be an object"),
    # candidates
    (_set("candidates", [16, 1]),
     "Invalid plan field candidates=[16, 1]: must be a non-empty increasing list of integers >= 1"),
    (_set("candidates", []),
     "Invalid plan field candidates=[]: must be a non-empty increasing list of integers >= 1"),
    (_set("candidates", [0, 16]),
     "Invalid plan field candidates=[0, 16]: must be a non-empty increasing list of integers >= 1"),
    (_set("candidates", [1, 16, 16]),
     "Invalid plan field candidates=[1, 16, 16]: must be a non-empty increasing list of integers >= 1"),
    (_set("candidates", "1,16"),
     'Invalid plan field candidates="1,16": must be a non-empty increasing list of integers >= 1'),
    (_set("candidates", [True, 16]),
     "Invalid plan field candidates=[true, 16]: must be a non-empty increasing list of integers >= 1"),
    # rule and curves
    (_set("rule.name", 3), "Invalid plan field rule.name=3: must be a string"),
    (_set("rule.loss_threshold", 2), "Invalid plan field rule.loss_threshold=2: must be a number in [0, 1]"),
    (_set("curves.loss_fraction", [0.5]),
     "Invalid plan field curves.loss_fraction=[0.5]: must be a list of 5 numbers, one per candidate"),
    (_set("curves.inversion_seconds", [1, 2, 3, 4, "5"]),
     'Invalid plan field curves.inversion_seconds=[1, 2, 3, 4, "5"]: must be a list of 5 numbers, '
     "one per candidate"),
    # crossover
    (_set("crossover.split_dim", 0), "Invalid plan field crossover.split_dim=0: must be an integer >= 1"),
    (_set("crossover.x", "106"), 'Invalid plan field crossover.x="106": must be a number in [-inf, inf]'),
    (_set("crossover.warning", 1), "Invalid plan field crossover.warning=1: must be a string"),
    # layers
    (_set("layers.0.a_split", 0), "Invalid plan field layers[0].a_split=0: must be an integer >= 1"),
    (_set("layers.3.g_split", 1.5), "Invalid plan field layers[3].g_split=1.5: must be an integer >= 1"),
    (_set("layers.0.a_dim", True), "Invalid plan field layers[0].a_dim=true: must be an integer >= 1"),
    (_set("layers.0.kind", "conv3d"),
     "Invalid plan field layers[0].kind=\"conv3d\": must be a registered layer kind ('conv2d', 'linear')"),
    (_set("layers.0.kind", 3), "Invalid plan field layers[0].kind=3: must be a string"),
    (_set("layers.0.name", None), "Invalid plan field layers[0].name=null: must be a string"),
    (_omega, "Invalid plan field layers[0].omega2=0.5: must be a number in [0, 0.01]"),
    (_set("layers.0.omega1", -1), "Invalid plan field layers[0].omega1=-1: must be a number in [0, inf]"),
    (_set("layers.0.a_loss", 1.5), "Invalid plan field layers[0].a_loss=1.5: must be a number in [0, 1]"),
    (_set("layers.1.g_loss", -0.1), "Invalid plan field layers[1].g_loss=-0.1: must be a number in [0, 1]"),
    (_set("layers.1.g_loss", float("nan")),
     "Invalid plan field layers[1].g_loss=NaN: must be a number in [0, 1]"),
    (_duplicate, 'Invalid plan field layers[2].name="conv1": layer names must be unique (also layers[0].name)'),
    # skipped
    (_set("skipped", "fc2"), 'Invalid plan field skipped="fc2": must be a list'),
    (_del("skipped.0.reason"), "Invalid plan: missing field skipped[0].reason"),
    (_set("skipped.0", "head"), 'Invalid plan field skipped[0]="head": must be an object'),
    # schedule
    (_set("schedule.omega2", 0.5), "Invalid plan field schedule.omega2=0.5: must be a number in [0, 0.01]"),
    (_set("schedule.interval.max", 5), "Invalid plan field schedule.interval.max=5: must be an integer >= 10"),
    (_set("schedule.interval.factor_every", 0),
     "Invalid plan field schedule.interval.factor_every=0: must be an integer >= 1"),
    (_set("schedule.interval.growth", 0.5),
     "Invalid plan field schedule.interval.growth=0.5: must be a number in [1, inf]"),
    (_set("schedule.damping.decay", 1.5),
     "Invalid plan field schedule.damping.decay=1.5: must be a number in [1e-12, 1]"),
    (_set("schedule.damping", 0.03), "Invalid plan field schedule.damping=0.03: must be an object"),
]


@pytest.mark.parametrize("mutate, message", BAD_PLANS, ids=[m for _, m in BAD_PLANS])
def test_from_dict_names_the_offending_field(plan: Plan, mutate, message: str) -> None:
    d = copy.deepcopy(plan.to_dict())
    mutate(d)
    with pytest.raises(PlanError) as excinfo:
        Plan.from_dict(d)
    assert str(excinfo.value) == message


@pytest.mark.parametrize("value", [[1], "plan", None, 3])
def test_from_dict_not_an_object(value) -> None:
    with pytest.raises(PlanError) as excinfo:
        Plan.from_dict(value)
    assert str(excinfo.value) == "Invalid plan: the file must hold a JSON object"


def test_plan_error_is_a_user_error() -> None:
    assert issubclass(PlanError, UserError)


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(PlanError) as excinfo:
        Plan.load(path)
    assert str(excinfo.value) == f"Plan file '{path}' not found: pass the plan.json written by 'thor-plan profile'"


def test_load_folder(tmp_path: Path) -> None:
    with pytest.raises(PlanError) as excinfo:
        Plan.load(tmp_path)
    assert str(excinfo.value) == (f"Plan file '{tmp_path}' is a folder: pass the plan.json inside it "
                                  f"('{tmp_path / 'plan.json'}')")


@pytest.mark.parametrize("content, why", [
    (b"not json", "Expecting value: line 1 column 1 (char 0)"),
    (b'{"schema_version": 1,', "Expecting property name enclosed in double quotes: line 1 column 22 (char 21)"),
    (b"", "Expecting value: line 1 column 1 (char 0)"),
    (b"\xff\xfe{}", "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
])
def test_load_invalid_json(tmp_path: Path, content: bytes, why: str) -> None:
    path = tmp_path / "plan.json"
    path.write_bytes(content)
    with pytest.raises(PlanError) as excinfo:
        Plan.load(path)
    assert str(excinfo.value) == f"Plan file '{path}' is not valid JSON ({why}): re-create it with 'thor-plan plan'"


def test_load_json_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text("[1, 2]")
    with pytest.raises(PlanError) as excinfo:
        Plan.load(path)
    assert str(excinfo.value) == "Invalid plan: the file must hold a JSON object"


def test_load_validates_fields(tmp_path: Path, plan: Plan) -> None:
    d = plan.to_dict()
    d["layers"][1]["a_split"] = 0
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(d))
    with pytest.raises(PlanError) as excinfo:
        Plan.load(path)
    assert str(excinfo.value) == "Invalid plan field layers[1].a_split=0: must be an integer >= 1"


def test_load_unreadable_file(tmp_path: Path, plan: Plan, monkeypatch: pytest.MonkeyPatch) -> None:
    path = plan.save(tmp_path / "plan.json")

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(PlanError) as excinfo:
        Plan.load(path)
    assert str(excinfo.value) == f"Cannot read plan file '{path}' (Permission denied): check its permissions"


# ---------------------------------------------------------------------------------- check_model


def test_check_model_accepts_its_model(plan: Plan) -> None:
    plan.check_model(load_model("cnn").model)


def test_check_model_lists_mismatches(plan: Plan) -> None:
    d = plan.to_dict()
    d["layers"][0]["name"] = "conv9"
    d["layers"][1]["kind"] = "linear"
    d["layers"][2].update(a_dim=128, g_dim=65)
    with pytest.raises(PlanError) as excinfo:
        Plan.from_dict(d).check_model(load_model("cnn").model)
    assert str(excinfo.value) == (
        "Plan does not match the model (4 mismatches): conv9: not a Conv2d/Linear layer of the model; "
        "conv2: plan kind=linear, model kind=conv2d; fc1: plan a_dim=128, model a_dim=129; "
        "fc1: plan g_dim=65, model g_dim=64. Profile this model again to make a plan for it"
    )


def test_check_model_shortens_long_lists(plan: Plan) -> None:
    with pytest.raises(PlanError) as excinfo:
        plan.check_model(load_model("mlp").model)  # mlp: fc1 65→128, fc2 129→128, fc3 129→10
    assert str(excinfo.value) == (
        "Plan does not match the model (6 mismatches): conv1: not a Conv2d/Linear layer of the model; "
        "conv2: not a Conv2d/Linear layer of the model; fc1: plan a_dim=129, model a_dim=65; "
        "fc1: plan g_dim=64, model g_dim=128; fc2: plan a_dim=65, model a_dim=129; and 1 more. "
        "Profile this model again to make a plan for it"
    )


# ---------------------------------------------------------------------------------- atomic save


def _other_plan() -> Plan:
    return make_plan(small_measurements(), RuleConfig(name=Rule.budget, overhead=0.05, interval=10))


def test_save_replaces_existing_plan(tmp_path: Path, plan: Plan) -> None:
    path = plan.save(tmp_path / "plan.json")
    _other_plan().save(path)
    assert Plan.load(path).rule["name"] == "budget"
    assert os.listdir(tmp_path) == ["plan.json"]


def test_failed_rename_leaves_existing_plan_untouched(tmp_path: Path, plan: Plan,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = plan.save(tmp_path / "plan.json")
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left on device"):
        _other_plan().save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["plan.json"]  # the temporary file was removed


def test_failed_write_leaves_existing_plan_untouched(tmp_path: Path, plan: Plan,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = plan.save(tmp_path / "plan.json")
    before = path.read_bytes()

    def broken_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Input/output error"):
        _other_plan().save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["plan.json"]


def test_failed_serialisation_writes_nothing(tmp_path: Path, plan: Plan, monkeypatch: pytest.MonkeyPatch) -> None:
    path = plan.save(tmp_path / "plan.json")
    before = path.read_bytes()

    def broken_dumps(*args, **kwargs):
        raise TypeError("Object of type Tensor is not JSON serializable")

    monkeypatch.setattr(json, "dumps", broken_dumps)
    with pytest.raises(TypeError):
        _other_plan().save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["plan.json"]
