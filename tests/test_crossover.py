import pandas as pd
import pytest

from thor_planner.planning.rules import (budget, crossover, crossover_with_spread, factor_split, loss_fraction,
                                         normalized_perf)

THOR_CANDIDATES = [1, 16, 32, 64, 128, 256, 512, 1024, 2048]


def test_thor_figure_crossing_near_106_snaps_to_128():
    # Shaped like THOR's figure 3: performance 1.0 → ~0.07 at 256 → ~0 above 1000, loss fraction
    # ~0.07 → ~0.89; they cross near b = 106.
    perf = [1.0, 0.80, 0.62, 0.40, 0.12, 0.07, 0.03, 0.005, 0.001]
    frac = [0.07, 0.08, 0.10, 0.14, 0.256, 0.45, 0.66, 0.80, 0.89]
    choice = crossover(THOR_CANDIDATES, frac, perf)
    assert choice.x == pytest.approx(106.0, abs=1.0)
    assert choice.split_dim == 128
    assert choice.warning is None


def test_interpolation_is_linear_in_b():
    choice = crossover([1, 16, 32], [0.0, 0.2, 0.6], [1.0, 0.6, 0.2])
    # diff −0.4 at 16, +0.4 at 32: halfway, at 24 (ties snap to the smaller candidate).
    assert choice.x == pytest.approx(24.0)
    assert choice.y == pytest.approx(0.4)
    assert choice.split_dim == 16


def test_degenerate_crossing_warns_and_points_to_budget():
    # As on a CPU, where b = 1 is nearly free: performance collapses before b = 16.
    at_start = crossover(THOR_CANDIDATES, [0.01] * 3 + [0.2, 0.4, 0.6, 0.8, 0.9, 1.0],
                         [1.0, 0.005, 0.002, 0.001, 0.0005, 0.0002, 0.0001, 0.0, 0.0])
    assert at_start.x < 16
    # Later, but with almost no factor below the loss threshold there.
    low_fraction = crossover(THOR_CANDIDATES, [0.01] * 3 + [0.2, 0.4, 0.6, 0.8, 0.9, 1.0],
                             [1.0, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0005, 0.0002])
    assert low_fraction.x == pytest.approx(33.6) and low_fraction.y < 0.05
    for choice in (at_start, low_fraction):
        assert choice.warning.startswith("Degenerate crossover at b≈")
        assert "--rule budget --overhead F" in choice.warning


def test_no_crossing_takes_the_largest_candidate():
    choice = crossover([1, 16, 32], [0.0, 0.1, 0.2], [1.0, 0.9, 0.8])
    assert choice.split_dim == 32 and choice.x is None and "do not cross" in choice.warning


def test_normalized_perf_and_loss_fraction():
    assert normalized_perf([0.5, 1.0, 2.0]) == [1.0, 0.5, 0.25]
    losses = pd.DataFrame({"1": [0.5, 0.005, 0.2], "16": [0.0, 0.0, 0.02]})
    assert loss_fraction(losses, [1, 16], 0.01) == pytest.approx([1 / 3, 2 / 3])


def test_budget_takes_largest_affordable_candidate():
    seconds = [0.001, 0.01, 0.1, 1.0]
    choice = budget([1, 16, 32, 64], seconds, step_seconds=0.2, overhead=0.05, interval=10)  # 0.1 s allowed
    assert choice.split_dim == 32 and choice.warning is None
    tight = budget([1, 16], [1.0, 2.0], step_seconds=0.1, overhead=0.01, interval=1)
    assert tight.split_dim == 1 and tight.warning.startswith("No candidate fits the budget")


def test_factor_split_rule():
    cands = [1, 16, 32, 64, 128]
    assert factor_split([0.5, 0.2, 0.005, 0.0, 0.0], cands, 128, 500, 0.01) == 32
    assert factor_split([0.5, 0.2, 0.1, 0.05, 0.02], cands, 64, 500, 0.01) == 64
    assert factor_split([0.5, 0.2, 0.1, 0.05, 0.02], cands, 128, 40, 0.01) == 40  # capped at dim


# ------------------------------------------------------------------- uncertainty from the spread

SPAN_CANDIDATES = [1, 128, 256, 512]
SPAN_FRACTION = [0.0, 0.3, 0.5, 0.9]


def test_interval_from_the_timing_spread_and_the_tie_break():
    # p_1 = 1 s exactly; at 256 the performance is 0.38 at the median, between 0.30 and 0.46 over the
    # repeats; the others do not spread. Differences loss − perf: −0.1 at 128, then 0.5 − perf at 256.
    med = [1.0, 2.5, 1 / 0.38, 10.0]
    lo_s, hi_s = [1.0, 2.5, 1 / 0.46, 10.0], [1.0, 2.5, 1 / 0.30, 10.0]
    perf = normalized_perf(med)
    choice = crossover_with_spread(SPAN_CANDIDATES, SPAN_FRACTION, perf, lo_s, hi_s)
    assert choice.x == pytest.approx(128 + 128 * 0.1 / 0.22)  # ≈ 186: nearest candidate 128
    low, high = 128 + 128 * 0.1 / 0.30, 128 + 128 * 0.1 / 0.14  # ≈ 170.7 and 219.4
    assert choice.interval == pytest.approx((low, high))
    assert choice.spans == (128, 256)
    # the midpoint 192 splits the interval: 128 holds 192 − low ≈ 21.3, 256 holds high − 192 ≈ 27.4
    assert choice.split_dim == 256
    assert choice.tie_break == ("the interval b≈171–219 spans candidates 128, 256: 256 holds the largest "
                                f"share of it ({(high - 192) / (high - low):.0%})")


def test_no_spread_gives_the_plain_crossover():
    med = [1.0, 2.5, 1 / 0.38, 10.0]
    perf = normalized_perf(med)
    plain = crossover(SPAN_CANDIDATES, SPAN_FRACTION, perf)
    spread = crossover_with_spread(SPAN_CANDIDATES, SPAN_FRACTION, perf, med, med)
    assert spread.split_dim == plain.split_dim == 128
    assert spread.interval == pytest.approx((plain.x, plain.x)) and spread.spans == (128,)
    assert spread.tie_break is None


def test_interval_open_at_the_top_when_the_upper_curve_does_not_cross():
    # the upper performance curve stays above the loss fraction: the interval ends at the last candidate
    choice = crossover_with_spread([1, 16, 32], [0.0, 0.5, 0.6], normalized_perf([1.0, 1.5, 2.0]),
                                   [1.0, 1.0, 1.0], [1.0, 3.0, 4.0])
    assert choice.interval[1] == 32.0
    assert choice.interval[0] == pytest.approx(1 + 15 * 1 / (1 + 0.5 - 1 / 3))


def test_degenerate_verdict_is_judged_at_the_split_not_the_interpolated_crossing():
    # gpt-tiny on a CPU: 3% of the factors below the threshold up to 64, 41% at 128. Timing noise
    # moves the crossing a little past 64, where the interpolated fraction climbs steeply (3.6% in
    # one run, 5.3% in the other); both runs pick 64, which keeps 3%: both are degenerate.
    cands, frac = [1, 16, 32, 64, 128, 256], [0.03, 0.03, 0.03, 0.03, 0.41, 0.77]
    quiet = crossover(cands, frac, [1.0, 0.12, 0.09, 0.0367, 0.0159, 0.009])
    noisy = crossover(cands, frac, [1.0, 0.12, 0.09, 0.055, 0.0159, 0.009])
    assert quiet.x == pytest.approx(64 + 64 * 0.0067 / 0.4008) and quiet.y < 0.05
    assert noisy.x == pytest.approx(64 + 64 * 0.025 / 0.4191) and noisy.y > 0.05
    for choice in (quiet, noisy):
        assert choice.split_dim == 64
        assert choice.warning.startswith("Degenerate crossover at b≈")
        assert "(loss fraction 3% at split 64)" in choice.warning
    # The same crossing where 20% of the factors are below the threshold at 64 is kept.
    kept = crossover(cands, [0.03, 0.03, 0.03, 0.2, 0.41, 0.77], [1.0, 0.12, 0.09, 0.21, 0.0159, 0.009])
    assert kept.split_dim == 64 and kept.warning is None


def test_tie_broken_split_is_judged_for_degeneracy():
    # The spread spans 64 and 128 and the larger share lies past 96: the tie-break picks 128, which
    # keeps 41% of the factors, so the median's verdict at 64 (3%) does not carry over.
    cands, frac = [1, 16, 32, 64, 128, 256], [0.03, 0.03, 0.03, 0.03, 0.41, 0.77]
    median = [1.0, 0.12, 0.09, 0.35, 0.0159, 0.009]  # crosses at b≈92.7
    min_s = [1.0, 1 / 0.12, 1 / 0.09, 1 / 0.9, 1 / 0.0159, 1 / 0.009]  # fastest: p_64 up to 0.9 (b≈108)
    max_s = [1.0, 1 / 0.12, 1 / 0.09, 1 / 0.3, 1 / 0.0159, 1 / 0.009]  # slowest: p_64 down to 0.3 (b≈90)
    choice = crossover_with_spread(cands, frac, median, min_s, max_s)
    alone = crossover(cands, frac, median)
    assert alone.split_dim == 64 and alone.warning is not None
    assert choice.interval == pytest.approx((64 + 64 * 0.27 / 0.6641, 64 + 64 * 0.87 / 1.2641))
    assert choice.split_dim == 128 and choice.spans == (64, 128) and choice.warning is None
