"""``thor-plan tune``: a real optuna study in SQLite, a few trials of 1–2 epochs on digits."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from thor_planner.cli.app import app
from thor_planner.capture.collector import layer_specs
from thor_planner.optim import THOR
from thor_planner.planning.measurements import Measurements
from thor_planner.planning.planner import make_plan
from thor_planner.planning.plan import Plan, Schedule
from thor_planner.training.loop import TrainConfig, build_model
from thor_planner.tune import TuneConfig, TuneError, TuneInterrupted, run_tune, write_outputs
from thor_planner.tune.tuner import UNREACHED_PENALTY, rescore, trial_value
from thor_planner.utils.progress import Progress

optuna = pytest.importorskip("optuna")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: sgd on the mlp, 2 epochs, target 85%: trials 0 and 1 reach it, the median pruner stops trial 2
#: after its first epoch (seed 3 asks the same parameters every time).
SGD = dict(model="mlp", optimizer="sgd", epochs=2, target_accuracy=0.85, seed=3)


def tune_config(*, trials: int, storage: str, study: str | None = None, pruner: str = "median",
                sampler: str = "tpe", **train) -> TuneConfig:
    """A TuneConfig whose base run is ``TrainConfig(**train)``."""
    return TuneConfig(train=TrainConfig(**train), trials=trials, storage=storage, study=study, pruner=pruner,
                      sampler=sampler)


pytestmark = pytest.mark.usefixtures("one_thread")


def mlp_profile(folder: Path) -> Path:
    """A profile folder for the mlp written by hand (losses.csv, timings.csv, plan.json): no measuring.
    Losses fall and inversion times rise with the split, so the loss threshold moves the plan."""
    cands = [1, 16, 64, 128]
    rows = []
    for s in layer_specs(build_model("mlp")):
        for factor, dim in (("a", s.a_dim), ("g", s.g_dim)):
            rows.append({"layer": s.name, "kind": s.kind, "factor": factor, "dim": dim,
                         **{str(b): max(0.0, 0.5 * (1 - b / dim)) for b in cands}})
    timings = pd.DataFrame({"candidate": cands, "median_s": [1e-4, 2e-4, 8e-4, 3e-3], "min_s": [1e-4, 2e-4, 8e-4, 3e-3],
                            "max_s": [1e-4, 2e-4, 8e-4, 3e-3], "repeats": 5, "blocks": [450, 30, 9, 6],
                            "gflop": 0.001, "predicted": False})
    meta = {"model": {"name": "mlp", "source": "builtin", "num_params": 0},
            "device": {"type": "cpu", "name": "hand-written", "backend": "torch-cholesky", "dtype": "float32"},
            "capture": {"data": "digits", "batches": 2, "batch_size": 32}, "step_seconds": 0.001}
    measurements = Measurements(losses=pd.DataFrame(rows), timings=timings, meta=meta)
    folder.mkdir()
    measurements.save(folder)
    return make_plan(measurements).save(folder / "plan.json")


def invoke(*args):
    return CliRunner().invoke(app, ["tune", *map(str, args)])


def storage(tmp_path: Path, name: str = "tune.db") -> str:
    return f"sqlite:///{tmp_path / name}"


def trials_of(url: str, study: str) -> list:
    return optuna.load_study(study_name=study, storage=url).get_trials()


def test_objective_orders_unreached_trials_after_reached_ones_by_their_shortfall() -> None:
    assert trial_value(12.5, 0.97, 0.97, "max") == 12.5
    assert trial_value(None, 0.9, 1.0, "max") == UNREACHED_PENALTY + 0.1
    assert trial_value(None, 0.9, 1.0, "max") < trial_value(None, 0.8, 1.0, "max")
    assert trial_value(UNREACHED_PENALTY - 1, 0.97, 0.97, "max") < trial_value(None, 1.0, 1.0, "max")
    assert trial_value(None, 2.5, 2.0, "min") == UNREACHED_PENALTY + 0.5  # bits per byte: lower is better
    assert trial_value(None, 2.4, 2.0, "min") < trial_value(None, 2.5, 2.0, "min")


def test_a_stored_curve_is_rescored_for_another_target() -> None:
    class Trial:
        user_attrs = {"curve": [[10, 1.0, 0.5], [20, 2.0, 0.8], [30, 3.0, 0.9]]}

    assert rescore(Trial, 0.8, "max") == 2.0
    assert rescore(Trial, 0.95, "max") == pytest.approx(UNREACHED_PENALTY + 0.05)
    assert rescore(Trial, 0.6, "min") == 1.0
    Trial.user_attrs = {}
    assert rescore(Trial, 0.8, "max") is None


def test_study_resumes_in_sqlite_counts_both_runs_and_records_pruned_trials(tmp_path: Path) -> None:
    url = storage(tmp_path)
    first = run_tune(tune_config(**SGD, trials=3, storage=url, study="s"))
    assert first.new_trials == 3 and first.counts == {"complete": 2, "pruned": 1, "fail": 0}
    pruned = [t for t in trials_of(url, "s") if t.state.name == "PRUNED"]
    assert [t.number for t in pruned] == [2]
    assert list(pruned[0].intermediate_values) == [45]  # stopped after its first epoch (45 steps)
    second = run_tune(tune_config(**SGD, trials=2, storage=url, study="s"))
    trials = trials_of(url, "s")
    assert second.new_trials == 2 and len(trials) == 5 and [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert sum(second.counts.values()) == 5
    params = [t.params["lr"] for t in trials]
    assert len(set(params)) == 5  # the continued study does not ask its first questions again
    reached = [t for t in trials if t.state.name == "COMPLETE" and t.user_attrs["target_seconds"] is not None]
    assert second.best.number == min(reached, key=lambda t: t.value).number


def test_fixed_seed_gives_the_same_parameter_sequence(tmp_path: Path) -> None:
    runs = []
    for name in ("a.db", "b.db"):
        result = run_tune(tune_config(model="mlp", optimizer="adamw", epochs=1, target_accuracy=0.3, trials=3,
                                      storage=storage(tmp_path, name), pruner="none", seed=7))
        runs.append([t.params for t in result.study.get_trials()])
    assert runs[0] == runs[1] and len({json.dumps(p) for p in runs[0]}) == 3
    other = run_tune(tune_config(model="mlp", optimizer="adamw", epochs=1, target_accuracy=0.3, trials=1,
                                storage=storage(tmp_path, "c.db"), pruner="none", seed=8))
    assert other.study.get_trials()[0].params != runs[0][0]


def test_tuned_plan_loads_into_thor_and_report_carries_the_figures(tmp_path: Path) -> None:
    out, base = tmp_path / "out", mlp_profile(tmp_path / "profile")
    result = invoke("--model", "mlp", "--plan", base, "--trials", "3", "--epochs", "1",
                    "--target-accuracy", "0.3", "--storage", storage(tmp_path), "--study", "t", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["study"] == "t" and summary["trials"] == summary["new_trials"] == 3
    assert sorted(p.name for p in out.iterdir()) == ["best.json", "plan.json", "report.html"]
    plan = Plan.load(out / "plan.json")
    best = optuna.load_study(study_name="t", storage=storage(tmp_path)).best_trial
    tuning = json.loads((out / "plan.json").read_text())["tuning"]
    assert tuning["trial"] == summary["best_trial"] == best.number and tuning["study"] == "t"
    assert tuning["storage"] == storage(tmp_path) and tuning["value"] == best.value
    assert plan.schedule != Schedule()
    assert plan.schedule.damping_init == best.params["damping_init"]
    assert plan.rule["loss_threshold"] == best.params["loss_threshold"]
    opt = THOR(build_model("mlp"), plan, lr=best.params["lr"])
    assert opt.schedule == plan.schedule
    page = (out / "report.html").read_text()
    for div in ("fig-history", "fig-importance", "fig-parallel", "fig-curves", "fig-timing", "fig-heatmap"):
        assert f'id="{div}"' in page
    assert "Optimization History Plot" in page and "Parallel Coordinate Plot" in page
    assert page.count("* plotly.js v") == 1  # plotly.js embedded once: the page works offline
    assert not re.search(r"<script[^>]+src=", page)
    assert "Wrote" in ANSI.sub("", result.stderr) and "trial 1:" in result.stderr


def test_ctrl_c_keeps_finished_trials(tmp_path: Path) -> None:
    class StopAfterFirstTrial(Progress):
        def note(self, message: str) -> None:
            if message.startswith("trial 0:"):
                raise KeyboardInterrupt

    url = storage(tmp_path)
    with pytest.raises(TuneInterrupted) as stop:
        run_tune(tune_config(model="mlp", optimizer="sgd", epochs=1, target_accuracy=0.3, trials=3, storage=url),
                 StopAfterFirstTrial())
    assert stop.value.finished == 1
    assert [t.state.name for t in trials_of(url, "mlp-digits-sgd")] == ["COMPLETE"]


def test_cli_ctrl_c_says_what_is_kept_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import thor_planner.tune as tune

    def interrupted(config, progress):
        raise TuneInterrupted(2)

    monkeypatch.setattr(tune, "run_tune", interrupted)
    out, url = tmp_path / "a" / "out", storage(tmp_path)
    result = invoke("--optimizer", "sgd", "--trials", "3", "--storage", url, "--study", "s", "--out", out)
    assert result.exit_code == 130
    assert ANSI.sub("", result.stderr).strip() == (f"Interrupted: the 2 finished trials are kept in '{url}' "
                                                   f"(study 's'); nothing was written to {out}")
    assert not (tmp_path / "a").exists()


def test_failed_trials_are_recorded_and_the_study_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import thor_planner.tune.tuner as tuner

    real_train, calls = tuner.train, []

    def train_failing_once(config, progress, on_eval=None):
        calls.append(config.lr)
        if len(calls) == 2:
            raise RuntimeError("linalg.cholesky: the factorization could not be completed")
        return real_train(config, progress, on_eval=on_eval)

    monkeypatch.setattr(tuner, "train", train_failing_once)
    result = run_tune(tune_config(model="mlp", optimizer="sgd", epochs=1, target_accuracy=0.3, trials=3,
                                 storage=storage(tmp_path), pruner="none"))
    assert [t.state.name for t in result.study.get_trials()] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert result.counts == {"complete": 2, "pruned": 0, "fail": 1} and result.best.number in (0, 2)


def _fails(result, message: str, out: Path | None = None) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert ANSI.sub("", result.stderr).strip().splitlines()[-1] == f"Error: {message}"
    assert "Traceback" not in result.output
    if out is not None:
        assert not out.exists()  # nothing half-written


def test_bad_storage_urls(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _fails(invoke("--optimizer", "sgd", "--trials", "1", "--storage", "not a url", "--out", out),
           "Unknown --storage URL 'not a url': pass an optuna RDB URL such as sqlite:///tune.db or "
           "postgresql://user:password@host/database", out)
    missing = f"sqlite:///{tmp_path / 'no-such-folder' / 'tune.db'}"
    _fails(invoke("--optimizer", "sgd", "--trials", "1", "--storage", missing, "--out", out),
           f"Cannot reach --storage '{missing}': check that the database server is up, the folder exists and "
           "the URL is right", out)


def test_study_made_for_another_optimizer_or_space_is_refused(tmp_path: Path) -> None:
    url, out = storage(tmp_path), tmp_path / "out"
    run_tune(tune_config(model="mlp", optimizer="sgd", epochs=1, target_accuracy=0.3, trials=1, storage=url,
                        study="s"))
    _fails(invoke("--model", "mlp", "--optimizer", "adamw", "--trials", "1", "--storage", url, "--study", "s",
                  "--out", out),
           f"Study 's' in '{url}' tunes optimizer 'sgd', not 'adamw': pick another --study name", out)
    _fails(invoke("--model", "mlp", "--optimizer", "sgd", "--epochs", "2", "--target-accuracy", "0.3", "--trials",
                  "1", "--storage", url, "--study", "s", "--out", out),
           f"Study 's' in '{url}' was made with another search space or objective (model, data, budget, batch size, "
           "evaluation interval or seed differ): pick another --study name", out)
    assert len(trials_of(url, "s")) == 1


def test_zero_trials_and_missing_optuna(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    _fails(invoke("--trials", "0", "--out", out), "Invalid --trials=0: must be >= 1", out)
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    _fails(invoke("--optimizer", "sgd", "--trials", "1", "--out", out),
           "optuna is not installed: pip install 'thor-plan[tune]'", out)


def test_target_never_reached_writes_the_closest_trial_and_another_target_is_scored_without_training(
        tmp_path: Path) -> None:
    url, out = storage(tmp_path), tmp_path / "out"
    result = invoke("--model", "mlp", "--optimizer", "sgd", "--epochs", "1", "--eval-every", "15",
                    "--target-accuracy", "1", "--trials", "2", "--storage", url, "--out", out, "--json")
    assert result.exit_code == 0, result.output
    trials = trials_of(url, "mlp-digits-sgd")
    finals = [t.user_attrs["final"] for t in trials]
    assert [t.value for t in trials] == pytest.approx([UNREACHED_PENALTY + 1 - f for f in finals])
    summary = json.loads(result.stdout)
    assert summary["reached"] is False and summary["best_final"] == max(finals)
    assert sorted(p.name for p in out.iterdir()) == ["best.json", "report.html"]
    message = " ".join(ANSI.sub("", result.stderr).split())
    assert (f"no trial reached accuracy 1 within 1 epochs; the closest ended at {max(finals):.4f} (written as the "
            "best). To reach it: raise --epochs or --steps, run more --trials, or re-score this study with another "
            "--target (no training again)") in message
    # the same study for a target the curves reach: no trial is trained again
    curves = [t.user_attrs["curve"] for t in trials]
    low = min(c[1][2] for c in curves)  # every trial's second evaluation reaches it
    again = run_tune(tune_config(model="mlp", optimizer="sgd", epochs=1, eval_every=15, target_accuracy=low,
                                 trials=1, storage=url, pruner="none"))
    firsts = [next(s for _, s, v in c if v >= low) for c in curves]
    assert again.reached and again.best_seconds == pytest.approx(min(firsts + [again.best_seconds]))
    assert len(trials_of(url, "mlp-digits-sgd")) == 3


def test_a_refused_plan_leaves_no_study(tmp_path: Path) -> None:
    url, out = storage(tmp_path), tmp_path / "out"
    plan = tmp_path / "plan.json"
    plan.write_text("{}")
    result = invoke("--model", "mlp", "--plan", plan, "--trials", "1", "--storage", url, "--out", out)
    assert result.exit_code == 2
    assert optuna.get_all_study_summaries(storage=url) == []


def test_train_config_takes_a_schedule_only_for_thor_variants() -> None:
    from thor_planner.training.loop import TrainConfig, TrainConfigError, make_optimizer

    schedule = Schedule(damping_init=0.2, interval_initial=3)
    opt = make_optimizer(TrainConfig(model="mlp", optimizer="kfac", schedule=schedule), build_model("mlp"))
    assert opt.schedule == schedule
    with pytest.raises(TrainConfigError) as err:
        TrainConfig(optimizer="adamw", schedule=schedule)
    assert str(err.value) == "Invalid schedule: a schedule applies only to thor, thor-eigen, thor-128 or kfac, not 'adamw'"


def test_library_refuses_bad_configs() -> None:
    from thor_planner.training.loop import TrainConfigError

    with pytest.raises(TuneError, match=r"^Invalid trials=0: must be >= 1$"):
        TuneConfig(trials=0)
    with pytest.raises(TrainConfigError, match=r"^Invalid plan='p.json': a plan applies only to optimizer 'thor', "
                                               r"not 'sgd'$"):
        TrainConfig(optimizer="sgd", plan="p.json")
    with pytest.raises(TuneError, match=r"^Invalid target=None: the tuner minimises the time to a target; set "
                                        r"target \(bits per byte\)$"):
        TuneConfig(train=TrainConfig(model="gpt-tiny", data="stdlib"))


def test_outputs_for_a_baseline_have_no_plan(tmp_path: Path) -> None:
    result = run_tune(tune_config(model="mlp", optimizer="mlbfgs", epochs=1, target_accuracy=0.2, trials=2,
                                 storage=storage(tmp_path), pruner="none"))
    write_outputs(tmp_path, result)
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["optimizer"] == "mlbfgs" and set(best["params"]) == {"lr", "momentum", "history_size",
                                                                     "update_every", "damping"}
    assert best["reached"] is True and best["seconds_to_target"] == result.best_seconds
    assert not (tmp_path / "plan.json").exists() and (tmp_path / "report.html").is_file()


def test_adamw_grafted_thor_tunes_in_adamw_learning_rates(tmp_path: Path) -> None:
    from thor_planner.tune.space import signature, space, train_options

    lrs = {g: next(p for p in space("thor", g) if p.name == "lr") for g in ("sgd", "adamw")}
    assert (lrs["sgd"].low, lrs["sgd"].high) == (1e-3, 1.0) and (lrs["adamw"].low, lrs["adamw"].high) == (1e-4, 0.1)
    assert [p.name for p in space("thor", "adamw")] == [p.name for p in space("thor")]
    assert signature("thor", {}, "adamw") != signature("thor", {})
    params = {"lr": 1e-3, "damping_init": 0.03, "weight_decay": 1e-4, "warmup": 0.1}
    assert train_options("kfac", params, "adamw")["graft"] == "adamw"
    assert "graft" not in train_options("kfac", params)
    assert train_options("kfac", params)["schedule"] == Schedule(damping_init=0.03)
    result = run_tune(tune_config(model="mlp", optimizer="thor-128", graft="adamw", epochs=1, target_accuracy=0.2,
                                 trials=1, storage=storage(tmp_path), pruner="none"))
    assert result.config.study_name == "mlp-digits-thor-128-adamw"
    assert 1e-4 <= result.best.params["lr"] <= 0.1
