"""The GPU suite's bookkeeping (bench/gpu_suite.py, bench/gpu_step.py): the cycle-amortized step
time, the stage commands, packing and collecting, and the rehearsal's marks; the stages themselves
run in ``bench/gpu_suite.py --rehearse``."""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import gpu_suite  # noqa: E402
from gpu_step import amortize, window_summary  # noqa: E402


def test_amortized_step_is_the_mean_over_a_whole_cycle() -> None:
    """A window of 20 steps from step 180 (factor steps 180, 190) and the event at step 200, every
    100 steps: the mean over a 100-step cycle (10 factor steps, one of them with the event)."""
    plain, factor, event = 0.100, 0.300, 1.300
    times = [factor if (180 + i) % 10 == 0 else plain for i in range(20)]
    out = window_summary(times, first=180, factor_every=10)
    assert out["factor_step_ms"] == pytest.approx(300.0)
    assert out["plain_step_median_ms"] == pytest.approx(100.0)
    out.update(amortize(out, event * 1e3, every=100))
    cycle = (90 * plain + 9 * factor + event) / 100
    assert out["ms"] == pytest.approx(cycle * 1e3, abs=1e-3)
    assert out["event_extra_ms"] == pytest.approx(1000.0)


def test_every_step_factor_rows_amortize_against_the_window_mean() -> None:
    out = window_summary([0.2] * 10, first=190, factor_every=1)  # Shampoo: statistics every step
    out.update(amortize(out, 10_200.0, every=100))  # the event step: 10 s more than a step
    assert out["ms"] == pytest.approx(200.0 + 10_000 / 100, abs=1e-3)


def test_stage_commands_fit_their_stages(tmp_path: Path) -> None:
    suite = gpu_suite.Suite(out=tmp_path, rehearse=False, budget=360)
    assert sum(s.cap for s in gpu_suite.STAGES) <= 360
    step = gpu_suite.stage_commands(suite, "step")[0]
    assert step[1:] == ["bench/gpu_step.py", "--window", "10"]
    tests = gpu_suite.stage_commands(suite, "tests")[0]
    assert tests[1:5] == ["-m", "pytest", "-m", "gpu"]
    profile, predict = gpu_suite.stage_commands(suite, "device")
    assert profile[1:4] == ["-m", "thor_planner.cli", "device-profile"]
    assert predict[1] == "bench/device_predict.py"
    env = suite.env()
    assert env["THOR_BENCH_OUT"] == str(tmp_path / "repo" / "bench") and "THOR_BENCH_REHEARSAL" not in env
    assert gpu_suite.Suite(out=tmp_path, rehearse=True, budget=110).env()["THOR_BENCH_REHEARSAL"] == "1"


def test_results_written_under_the_suite_are_marked_as_a_rehearsal(tmp_path: Path, monkeypatch) -> None:
    import results

    monkeypatch.setenv(results.OUT_ENV, str(tmp_path / "repo" / "bench"))
    monkeypatch.setenv(results.REHEARSAL_ENV, "1")
    path = results.write_json("x-cpu", {"device": "cpu"})
    assert path == tmp_path / "repo" / "bench" / "results" / "x-cpu.json"
    assert json.loads(path.read_text())["rehearsal"] is True
    results.write_section("x", "body", echo=False)
    assert results.REHEARSAL_NOTE in (tmp_path / "repo" / "bench" / "RESULTS.md").read_text()
    assert not (BENCH / "results" / "x-cpu.json").exists()


def _packed(tmp_path: Path, rehearsal: bool) -> Path:
    out = tmp_path / "run"
    (out / "repo" / "bench" / "results").mkdir(parents=True)
    (out / "repo" / "profiles" / "devices").mkdir(parents=True)
    (out / "repo" / "bench" / "results" / "gpu_step-test-gpu.json").write_text('{"device": "Test GPU"}\n')
    (out / "repo" / "profiles" / "devices" / "test-gpu.json").write_text("{}\n")
    (out / "repo" / "bench" / "RESULTS.md").write_text(
        "# r\n\n<!-- gpu_step-test-gpu -->\nnew\n<!-- /gpu_step-test-gpu -->\n")
    suite = gpu_suite.Suite(out=out, rehearse=rehearsal, budget=1)
    gpu_suite.write_summary(suite, ["line"])
    gpu_suite.pack(suite, tmp_path / "packed")
    assert (tmp_path / "packed" / "summary.txt").read_text() == "line\n"
    return tmp_path / "packed" / "gpu-suite.tar.gz"


def test_collect_copies_a_gpu_run_into_the_repository(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "repo"
    (root / "bench").mkdir(parents=True)
    (root / "bench" / "RESULTS.md").write_text("# r\n\n<!-- gpu_step -->\ncpu\n<!-- /gpu_step -->\n")
    archive = _packed(tmp_path, rehearsal=False)
    with tarfile.open(archive) as tar:
        assert "gpu-suite/summary.json" in tar.getnames()
    monkeypatch.setattr(gpu_suite, "ROOT", root)
    gpu_suite.collect(archive)
    copied = json.loads((root / "bench" / "results" / "gpu_step-test-gpu.json").read_text())
    assert copied["device"] == "Test GPU"
    assert (root / "profiles" / "devices" / "test-gpu.json").exists()
    text = (root / "bench" / "RESULTS.md").read_text()
    assert "<!-- gpu_step -->\ncpu\n" in text and "<!-- gpu_step-test-gpu -->\nnew\n" in text


def test_collect_refuses_a_rehearsal(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    archive = _packed(tmp_path, rehearsal=True)
    monkeypatch.setattr(gpu_suite, "ROOT", root)
    with pytest.raises(SystemExit, match="is a rehearsal"):
        gpu_suite.collect(archive)
    assert not (root / "bench").exists()
