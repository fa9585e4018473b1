"""Device profiles: the cost model (fit, interpolation, whole-network prediction), the JSON file
(round trip, exact validation messages), measuring one, and offline planning through the CLI."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from thor_planner.cli.app import app
from thor_planner.timing.costmodel import (
    CellFit, CostModel, GroupingCost, fit_linear, grouping_features, nonnegative_lstsq,
)
from thor_planner.timing.device_profile import (
    DeviceProfile, DeviceProfileError, device_slug, load_device_profile, measure_device_profile,
)
from thor_planner.inversion.backends import BACKENDS
from thor_planner.planning.measurements import Measurements
from thor_planner.planning.plan import Plan
from thor_planner.timing.prediction import predict_candidates

ANSI = re.compile(r"\x1b\[[0-9;]*m")


# ---------------------------------------------------------------------------------- cost model


def test_fit_linear_recovers_known_parameters_exactly() -> None:
    counts = [1, 4, 16, 64, 256]
    fixed, per_block = fit_linear(counts, [2e-5 + 3e-6 * c for c in counts])
    assert fixed == pytest.approx(2e-5, rel=1e-9) and per_block == pytest.approx(3e-6, rel=1e-9)


def test_fit_linear_edge_cases() -> None:
    assert fit_linear([4], [0.8]) == (0.0, 0.2)  # one measurement: all per block
    fixed, per_block = fit_linear([1, 2, 4], [0.1, 0.3, 0.7])  # a negative intercept is refused
    assert fixed == 0.0 and per_block > 0
    fixed, per_block = fit_linear([1, 2, 4], [0.3, 0.2, 0.1])  # time falling with count: constant
    assert per_block == 0.0 and 0.1 < fixed < 0.3
    with pytest.raises(ValueError):
        fit_linear([1, 2], [0.1])


def power_law_model(limits=None) -> CostModel:
    """time = 1e-9 · s³ · count exactly (lines, no points), measured at 16, 64 and 256; "slow" is 3×."""
    cells = {s: CellFit(0.0, 1e-9 * s**3) for s in (16, 64, 256)}
    cells[1] = CellFit(5e-6, 1e-9)
    slow = {s: CellFit(3 * c.fixed_s, 3 * c.per_block_s) for s, c in cells.items()}
    return CostModel({"fast": cells, "slow": slow}, GroupingCost(1e-5, 2e-8, 1e-10, 3e-10), limits)


def test_count_interpolation_between_measured_points_is_log_log() -> None:
    cell = CellFit(0.0, 0.0, counts=(1, 4, 16), seconds=(1e-3, 2e-3, 8e-3))
    assert cell.time(1) == 1e-3 and cell.time(16) == 8e-3
    assert cell.time(2) == pytest.approx(1e-3 * 2**0.5)  # slope ½ between 1 and 4
    assert cell.time(8) == pytest.approx(4e-3)  # slope 1 between 4 and 16
    assert cell.time(64) == pytest.approx(8e-3 + 48 * 5e-4)  # beyond: the last segment's cost per block
    assert CellFit(0.0, 0.0, (1, 4), (1e-3, 1.3e-3)).time(100) == pytest.approx(1.3e-3 + 96 * 1e-4)
    assert CellFit(0.0, 0.0, (1, 4), (1e-3, 0.9e-3)).time(8) == pytest.approx(1.8e-3)  # falling: proportional
    assert CellFit(0.0, 0.0, (2,), (1e-3,)).time(8) == pytest.approx(4e-3)
    assert CellFit(2e-5, 3e-6).time(10) == pytest.approx(5e-5)  # no points: the fitted line


def test_log_log_size_interpolation_and_extrapolation_are_exact_for_power_laws() -> None:
    model = power_law_model()
    for size in (16, 32, 100, 200, 256, 1024):  # measured, between, and above (last slope, here 3)
        assert model.predict("fast", size, 10) == pytest.approx(1e-8 * size**3)
    assert model.predict("fast", 5, 3) == model.predict("fast", 16, 3)  # below the smallest size > 1
    assert model.predict("fast", 1, 2) == pytest.approx(5e-6 + 2e-9)
    assert model.predict("missing", 64, 1) is None


def test_limits_remove_a_backend_at_and_above_its_first_failure() -> None:
    model = power_law_model(limits={"fast": 200})
    assert model.predict("fast", 199, 1) is not None and model.predict("fast", 200, 1) is None
    assert model.predict("fast", 256, 1) is None and model.predict("fast", 1, 1) is not None
    assert model.best(256, 4) == ("slow", pytest.approx(3 * 4e-9 * 256**3))
    assert model.choose({64: 4, 256: 2}, "fast") == {64: "fast", 256: "slow"}  # fastest where no data
    assert model.choose({64: 4, 256: 2}) == {64: "fast", 256: "slow"}


def test_refresh_prediction_sums_sizes_and_grouping() -> None:
    model = power_law_model()
    counts = {1: 3, 16: 10, 2048: 2}
    chosen = model.choose(counts)
    assert chosen == {1: "fast", 16: "fast", 2048: "fast"}
    # 3 narrow rows; 3·4 + 16·16·4·10 bytes in small stacks; 2048²·4·2 = 32 MiB: a large stack
    assert grouping_features(5, counts) == (5.0, 3.0, 10252.0, 33554432.0)
    grouping = 1e-5 * 5 + 2e-8 * 3 + 1e-10 * 10252 + 4e-10 * 33554432
    expected = grouping + sum(model.predict("fast", s, c) for s, c in counts.items())
    assert model.refresh_seconds(counts, 5, chosen) == pytest.approx(expected)


def test_nonnegative_least_squares_recovers_exact_coefficients() -> None:
    rows = [[1, 0, 2], [1, 5, 1], [2, 1, 0], [3, 3, 3]]
    coef = [1e-3, 2e-4, 5e-5]
    assert nonnegative_lstsq(rows, [sum(c * x for c, x in zip(coef, r)) for r in rows]) == pytest.approx(coef)
    # a target that would need a negative coefficient gets 0 there
    assert nonnegative_lstsq([[1, 1], [1, 2], [1, 3]], [3.0, 2.0, 1.0])[1] == 0.0


# ---------------------------------------------------------------------------------- the file


def make_profile() -> DeviceProfile:
    backends = {}
    for name, scale in (("torch-cholesky", 1.0), ("torch-inv", 2.0)):
        backends[name] = {}
        for s in (1, 16, 64):
            fixed, per = scale * 1e-5, scale * 1e-9 * s**3
            counts = [1, 4, 16]
            backends[name][s] = {"counts": counts, "seconds": [fixed + per * c for c in counts],
                                 "fixed_s": fixed, "per_block_s": per}
    return DeviceProfile(device={"type": "cpu", "name": "Test CPU", "torch": "2.x", "cuda": None, "threads": 2},
                         sizes=[1, 16, 64], counts=[1, 4, 16], backends=backends,
                         grouping=GroupingCost(1e-6, 1e-9, 1e-10, 2e-10), excluded=[{"backend": "newton-schulz", "size": 64,
                                                                       "error": 0.01, "reason": "too big"}],
                         created="2024-01-01T00:00:00+00:00", wall_seconds=1.5)


def test_profile_json_round_trip(tmp_path: Path) -> None:
    profile = make_profile()
    path = profile.save(tmp_path / "devices" / "test.json")
    loaded = load_device_profile(path)
    assert loaded.to_dict() == profile.to_dict() and loaded.source == str(path)
    assert json.loads(path.read_text())["backends"]["torch-inv"]["16"]["counts"] == [1, 4, 16]
    assert loaded.cost_model().predict("torch-cholesky", 16, 4) == pytest.approx(1e-5 + 4e-9 * 16**3)
    assert loaded.cost_model().predict("torch-cholesky", 16, 32) == pytest.approx(1e-5 + 32e-9 * 16**3)
    assert loaded.cost_model().limits == {"newton-schulz": 64}


def test_device_slug() -> None:
    assert device_slug({"type": "cpu", "name": "Intel(R) Xeon(R) Processor", "threads": 2}) == "intel-xeon-processor-2t"
    assert device_slug({"type": "cuda", "name": "NVIDIA H100 80GB HBM3"}) == "nvidia-h100-80gb-hbm3"


def _mutate(d: dict, path: str, value) -> dict:
    *head, last = path.split(".")
    target = d
    for key in head:
        target = target[key]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return d


_DELETE = object()


@pytest.mark.parametrize("path, value, message", [
    ("schema_version", 2, "Invalid device profile field schema_version=2: this version of thor-plan reads schema_version 1"),
    ("sizes", _DELETE, "Invalid device profile: missing field sizes"),
    ("sizes", [16, 1], "Invalid device profile field sizes=[16, 1]: must be a non-empty increasing list of integers >= 1"),
    ("device.type", "tpu", 'Invalid device profile field device.type="tpu": must be \'cpu\' or \'cuda\''),
    ("device.name", _DELETE, "Invalid device profile: missing field device.name"),
    ("grouping.per_row_s", -1, "Invalid device profile field grouping.per_row_s=-1: must be a number >= 0"),
    ("grouping.per_large_byte_s", _DELETE, "Invalid device profile: missing field grouping.per_large_byte_s"),
    ("backends", {}, "Invalid device profile field backends={}: must be a non-empty object: backend name → block size → fit"),
    ("backends.torch-inv.16.per_block_s", -1.0,
     "Invalid device profile field backends.torch-inv.16.per_block_s=-1.0: must be a number >= 0"),
    ("backends.torch-inv.16.fixed_s", "fast",
     'Invalid device profile field backends.torch-inv.16.fixed_s="fast": must be a number >= 0'),
    ("backends.torch-inv.16.seconds", [1.0, 2.0],
     "Invalid device profile field backends.torch-inv.16.seconds=[1.0, 2.0]: must be a list of 3 positive numbers, one per count"),
    ("backends.torch-inv.16.counts", _DELETE, "Invalid device profile: missing field backends.torch-inv.16.counts"),
    ("backends.torch-inv.x16", {}, 'Invalid device profile field backends.torch-inv.x16="x16": keys must be block sizes (integers >= 1)'),
    ("excluded", "none", 'Invalid device profile field excluded="none": must be a list of objects'),
])
def test_profile_validation_names_the_field(tmp_path: Path, path: str, value, message: str) -> None:
    d = _mutate(make_profile().to_dict(), path, value)
    file = tmp_path / "p.json"
    file.write_text(json.dumps(d))
    with pytest.raises(DeviceProfileError) as info:
        load_device_profile(file)
    assert str(info.value) == message


def test_missing_and_unreadable_profile_files(tmp_path: Path) -> None:
    with pytest.raises(DeviceProfileError) as info:
        load_device_profile(tmp_path / "nope.json")
    assert str(info.value) == (f"Device profile '{tmp_path / 'nope.json'}' not found: create one with "
                               f"'thor-plan device-profile --out {tmp_path / 'nope.json'}' on the target device")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DeviceProfileError, match=r"^Device profile '.*bad.json' is not readable JSON: Expecting"):
        load_device_profile(bad)
    bad.write_text("[]")
    with pytest.raises(DeviceProfileError, match=r"^Invalid device profile: the file must hold a JSON object$"):
        load_device_profile(bad)


# ------------------------------------------------------------------------- measuring, predicting


def test_measure_a_small_profile_excludes_a_broken_backend(monkeypatch) -> None:
    monkeypatch.setitem(BACKENDS, "garbage", lambda s: (torch.ones_like(s), torch.ones(s.shape[0], dtype=torch.bool)))
    profile = measure_device_profile(torch.device("cpu"), sizes=[1, 4, 8], counts=[1, 4, 16],
                                     backends=["torch-cholesky", "torch-inv", "garbage"], cell_budget_s=0.05,
                                     grouping_factor_dim=128)
    assert set(profile.backends) == {"torch-cholesky", "torch-inv", "garbage"}  # garbage: only size 1 (reciprocal)
    assert set(profile.backends["garbage"]) == {1}
    assert [(e["backend"], e["size"]) for e in profile.excluded] == [("garbage", 4), ("garbage", 8)]
    for cells in profile.backends.values():
        for cell in cells.values():
            assert cell["counts"][0] == 1 and len(cell["counts"]) == len(cell["seconds"])
            assert cell["fixed_s"] >= 0 and cell["per_block_s"] >= 0
    assert profile.grouping.per_factor_s >= 0 and profile.wall_seconds > 0
    assert DeviceProfile.from_dict(json.loads(json.dumps(profile.to_dict()))).to_dict() == profile.to_dict()


def test_predicted_candidates_are_marked_and_match_the_model() -> None:
    profile = make_profile()
    rows, chosen = predict_candidates(profile, [10, 33], [1, 16], "auto")
    assert chosen == {1: "torch-cholesky", 10: "torch-cholesky", 16: "torch-cholesky"}
    assert [r.candidate for r in rows] == [1, 16] and all(r.predicted and r.repeats == 0 for r in rows)
    model = profile.cost_model()
    assert rows[1].median_s == pytest.approx(model.refresh_seconds({16: 2, 10: 1, 1: 1}, 2, chosen))
    assert rows[1].row()["predicted"] is True


# ------------------------------------------------------------------------------------- CLI


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_device_profile_then_offline_profile_of_the_cnn(tmp_path: Path, tiny_profile) -> None:
    dp = tmp_path / "devices" / "this.json"
    result = invoke("device-profile", "--out", dp, "--device", "cpu", "--sizes", "1,8,16,32",
                    "--backends", "torch-cholesky,torch-inv", "--counts", "1,4", "--cell-budget", "0.05")
    assert result.exit_code == 0, result.output
    assert f"wrote {dp}" in ANSI.sub("", result.stdout).replace("\n", "")
    assert set(load_device_profile(dp).backends) == {"torch-cholesky", "torch-inv"}

    out = tmp_path / "cnn-offline"
    result = invoke(*tiny_profile, "--device", "cpu", "--device-profile", dp, "--backend", "auto", "--out", out)
    assert result.exit_code == 0, result.output
    assert "inversion timing" not in result.stderr and "training step" not in result.stderr
    m = Measurements.load(out)
    assert m.timings["predicted"].tolist() == [True] * len(m.timings) and (m.timings["repeats"] == 0).all()
    assert m.meta["step_seconds"] is None
    plan = Plan.load(out / "plan.json")
    assert plan.device["predicted_from"]["file"] == str(dp)
    assert plan.device["name"] == load_device_profile(dp).device["name"] and plan.device["backend"] == "auto"
    assert all(k.isdigit() for k in plan.device["backends"]) and {"1", "16", "32"} <= set(plan.device["backends"])
    assert set(plan.device["backends"].values()) <= {"torch-cholesky", "torch-inv"}
    timings = pd.read_csv(out / "timings.csv", comment="#")
    assert timings["predicted"].all()

    replanned = invoke("plan", "--from", out)  # re-planning an offline profile works
    assert replanned.exit_code == 0, replanned.output
    budget = invoke("plan", "--from", out, "--rule", "budget")
    assert budget.exit_code == 2
    assert ANSI.sub("", budget.stderr) == ("Error: The budget rule needs a training step timed on the target device; "
                                           "timings predicted from a device profile have none: use --rule crossover\n")


def test_cli_offline_profile_refuses_a_missing_file_and_the_budget_rule(tmp_path: Path, tiny_profile) -> None:
    missing = tmp_path / "none.json"
    result = invoke(*tiny_profile, "--device-profile", missing, "--out", tmp_path / "o")
    assert result.exit_code == 2
    assert ANSI.sub("", result.stderr) == (f"Error: Device profile '{missing}' not found: create one with "
                                           f"'thor-plan device-profile --out {missing}' on the target device\n")
    assert not (tmp_path / "o").exists()
    dp = make_profile().save(tmp_path / "p.json")
    result = invoke(*tiny_profile, "--device-profile", dp, "--rule", "budget", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "--rule budget needs a training step timed on the target device" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--sizes", "16,1"], "Invalid --sizes='16,1': give increasing integers >= 1, e.g. 1,16,64,256"),
    (["--sizes", "a"], "Invalid --sizes='a': give comma-separated integers, e.g. 1,16,64,256"),
    (["--backends", "magic"], f"Invalid --backends='magic': unknown magic; available here: {', '.join(BACKENDS)}"),
    (["--cell-budget", "0"], "Invalid --cell-budget=0: must be > 0 seconds"),
    (["--device", "tpu"], "Invalid --device='tpu': use auto, cpu or cuda"),
    (["--device", "cpu", "--backends", "torch-inv,newton-schulz-bf16"],
     "Invalid --backends='torch-inv,newton-schulz-bf16': newton-schulz-bf16 runs on CUDA only; on cpu use "
     "torch-cholesky, torch-cholesky-solve, torch-inv, newton-schulz"),
])
def test_cli_device_profile_bad_input(tmp_path: Path, args, message) -> None:
    result = invoke("device-profile", "--out", tmp_path / "x.json", *args)
    assert result.exit_code == 2 and ANSI.sub("", result.stderr) == f"Error: {message}\n"
    assert not (tmp_path / "x.json").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_profile_predicts_its_own_measurement() -> None:
    from thor_planner.timing.candidates import synthetic_factors, time_candidates

    profile = measure_device_profile(torch.device("cuda"), sizes=[1, 16, 64, 256], cell_budget_s=0.2)
    dims = [64, 256, 147, 576]
    factors = synthetic_factors(dims, device="cuda")
    rows, chosen = predict_candidates(profile, dims, [16, 64, 256], "auto")
    measured = time_candidates(factors, [16, 64, 256], backends=chosen)
    for p, m in zip(rows, measured):
        assert math.isfinite(p.median_s) and p.median_s > 0
        assert abs(p.median_s - m.median_s) / m.median_s < 1.0  # loose: tiny workloads are launch-bound
