"""AlgoPerf scoring (bench/scoring.py) on hand-made trial tables."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import scoring  # noqa: E402
from scoring import INF  # noqa: E402

#: A loss curve: (step, training seconds, validation loss).
LOSS = [(10, 1.0, 3.0), (20, 2.0, 2.5), (30, 3.0, 2.4), (40, 4.0, 2.0)]
#: An accuracy curve.
ACCURACY = [(5, 0.5, 0.50), (10, 1.0, 0.79), (15, 1.5, 0.80), (20, 2.0, 0.95)]


def trial(seconds_to_target: float, step: int, target: float = 2.0) -> list[tuple[int, float, float]]:
    """A loss curve that first meets ``target`` at ``seconds_to_target`` (step ``step``)."""
    return [(step - 1, seconds_to_target - 0.5, target + 1.0), (step, seconds_to_target, target),
            (step + 1, seconds_to_target + 0.5, target - 1.0)]


def never(target: float = 2.0) -> list[tuple[int, float, float]]:
    return [(1, 1.0, target + 1.0), (2, 2.0, target + 0.5)]


def test_first_evaluation_meeting_the_target_counts():
    assert scoring.time_to_target(LOSS, 2.5, "min") == (2.0, 20)  # equality meets a "min" target
    assert scoring.time_to_target(LOSS, 2.45, "min") == (3.0, 30)
    assert scoring.time_to_target(ACCURACY, 0.8, "max") == (1.5, 15)  # >= for "max"
    assert scoring.time_to_target([scoring.Evaluation(3, 0.3, 0.9)], 0.8, "max") == (0.3, 3)


def test_target_never_reached_is_infinite_without_steps():
    assert scoring.time_to_target(LOSS, 1.0, "min") == (INF, None)
    assert scoring.time_to_target(ACCURACY, 0.99, "max") == (INF, None)
    assert scoring.time_to_target([(1, 1.0, math.nan)], 5.0, "min") == (INF, None)  # NaN never meets
    assert scoring.time_to_target([], 5.0, "min") == (INF, None)


def test_study_takes_its_fastest_trial():
    assert scoring.study_time_to_target([trial(5.0, 50), never(), trial(3.0, 40)], 2.0, "min") == (3.0, 40)
    assert scoring.study_time_to_target([never(), never()], 2.0, "min") == (INF, None)
    with pytest.raises(ValueError, match="^A study needs at least one trial$"):
        scoring.study_time_to_target([], 2.0, "min")


def test_median_over_three_studies_with_one_unreached():
    studies = [[trial(5.0, 50), never()], [never()], [trial(3.0, 30), trial(4.0, 20)]]
    score = scoring.workload_score(studies, 2.0, "min")
    assert score.study_seconds == (5.0, INF, 3.0)
    assert score.study_steps == (50, None, 30)
    assert score.seconds == 5.0  # median of 3, 5, inf
    assert score.steps == 50  # median of 30, 50, inf
    assert score.reached


def test_more_than_half_unreached_is_infinite():
    studies = [[never()], [trial(4.0, 40)], [never(), never()]]
    score = scoring.workload_score(studies, 2.0, "min")
    assert math.isinf(score.seconds) and score.steps is None and not score.reached
    assert score.to_json() == {"seconds": None, "steps": None, "reached": False,
                               "study_seconds": [None, 4.0, None], "study_steps": [None, 40, None]}
    json.dumps(score.to_json(), allow_nan=False)


def test_median_with_infinity():
    assert scoring.median([3.0, INF, 5.0]) == 5.0
    assert scoring.median([1.0, 2.0, 3.0, INF]) == 2.5
    assert math.isinf(scoring.median([1.0, 2.0, INF, INF]))  # half of an even count: a middle value is inf
    with pytest.raises(ValueError, match=r"^Invalid values=\[1.0, nan\]: NaN has no place in a median$"):
        scoring.median([1.0, math.nan])


def test_target_from_baseline_is_the_median_of_best_values():
    runs = [LOSS, [(10, 1.0, 2.2), (20, 2.0, 2.1)], [(10, 1.0, math.nan)]]
    best = [scoring.best_value(run, "min") for run in runs]
    assert best == [2.0, 2.1, INF]  # a diverged run is the worst value
    assert scoring.target_from_baseline(best, "min") == 2.1
    assert scoring.target_from_baseline([0.9, 0.95, 0.97], "max") == 0.95
    assert scoring.target_from_baseline([0.9, math.nan, 0.97], "max") == 0.9  # NaN counts as -inf
    assert scoring.best_value(ACCURACY, "max") == 0.95


def test_invalid_direction_is_refused():
    with pytest.raises(ValueError, match=r"^Invalid direction='up': must be 'min' or 'max'$"):
        scoring.time_to_target(LOSS, 2.0, "up")


#: Seconds to target: 3 optimizers on 2 workloads; b misses the gpt target.
TIMES = {"a": {"cnn": 10.0, "gpt": 20.0}, "b": {"cnn": 20.0, "gpt": INF}, "c": {"cnn": 30.0, "gpt": 10.0}}


def test_performance_profile_on_three_optimizers_and_two_workloads():
    profile = scoring.performance_profile(TIMES, max_tau=4.0, num_points=7)
    assert profile.taus == (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)
    ratios = {"a": {"cnn": 1.0, "gpt": 2.0}, "b": {"cnn": 2.0, "gpt": INF}, "c": {"cnn": 3.0, "gpt": 1.0}}
    assert profile.ratios == ratios
    for name, row in ratios.items():  # the definition, written plainly
        assert profile.rho[name] == tuple(sum(r <= tau for r in row.values()) / 2 for tau in profile.taus)
    assert profile.rho["a"] == (0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0)
    assert profile.rho["b"] == (0.0, 0.0, 0.5, 0.5, 0.5, 0.5, 0.5)
    assert profile.rho["c"] == (0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0)
    scores = scoring.benchmark_score(profile)
    # trapezoids of width 0.5 over [1, 4], divided by 3
    assert scores["a"] == pytest.approx((0.5 * 0.5 + 0.5 * 0.75 + 4 * 0.5 * 1.0) / 3)
    assert scores["b"] == pytest.approx((0.5 * 0.0 + 0.5 * 0.25 + 4 * 0.5 * 0.5) / 3)
    assert scores["c"] == pytest.approx((3 * 0.5 * 0.5 + 0.5 * 0.75 + 2 * 0.5 * 1.0) / 3)
    json.dumps(profile.to_json(), allow_nan=False)
    assert profile.to_json()["ratios"]["b"] == {"cnn": 2.0, "gpt": None}


def test_profile_grid_options():
    log = scoring.performance_profile(TIMES, max_tau=4.0, num_points=3, scale="log")
    assert log.taus == pytest.approx((1.0, 2.0, 4.0))
    assert log.rho["c"] == (0.5, 0.5, 1.0)
    auto = scoring.performance_profile(TIMES, max_tau=None, num_points=5)
    assert auto.taus == (1.0, 1.5, 2.0, 2.5, 3.0)  # up to the largest finite ratio
    unreached = scoring.performance_profile({"a": {"w": INF}, "b": {"w": INF}}, num_points=2)
    assert unreached.rho == {"a": (0.0, 0.0), "b": (0.0, 0.0)}


def test_profile_refuses_inconsistent_tables():
    message = r"^Optimizer 'b' has times for \['cnn'\]; expected \['cnn', 'gpt'\]$"
    with pytest.raises(ValueError, match=message):
        scoring.performance_profile({"a": {"cnn": 1.0, "gpt": 2.0}, "b": {"cnn": 1.0}})
    with pytest.raises(ValueError, match=r"^Invalid max_tau=0.5: must be >= 1$"):
        scoring.performance_profile(TIMES, max_tau=0.5)
    with pytest.raises(ValueError, match=r"^Invalid scale='cubic': must be 'linear' or 'log'$"):
        scoring.performance_profile(TIMES, scale="cubic")
