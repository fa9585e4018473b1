import torch
from torch import nn

from thor_planner.timing.candidates import TimingConfig, measure, synthetic_factors, time_candidates, time_training_step


def test_candidate_timings_record_blocks_repeats_and_spread():
    factors = synthetic_factors([10, 33, 64])
    config = TimingConfig(budget_s=0.01, min_repeats=2, max_repeats=4)
    rows = time_candidates(factors, [1, 16, 64], config=config)
    assert [r.candidate for r in rows] == [1, 16, 64]
    assert rows[1].blocks == {16: 2 + 4, 10: 1, 1: 1}  # 10 → one block of 10; 33 → 16, 16, 1
    assert rows[2].blocks == {64: 1, 33: 1, 10: 1}
    assert rows[2].gflop == (64**3 + 33**3 + 10**3) / 1e9
    for r in rows:
        assert 2 <= r.repeats <= 4 and r.min_s <= r.median_s <= r.max_s


def test_measure_respects_budget_and_bounds():
    calls = []
    times = measure(lambda: calls.append(1), torch.device("cpu"), TimingConfig(budget_s=10.0, max_repeats=5))
    assert len(times) == 5 and len(calls) == 6  # one warm-up


def test_a_warmup_over_budget_is_the_single_measurement():
    import time

    calls = []
    times = measure(lambda: (calls.append(1), time.sleep(0.02)), torch.device("cpu"),
                    TimingConfig(budget_s=0.01, min_repeats=1))
    assert len(calls) == 1 and len(times) == 1 and times[0] >= 0.02


def test_training_step_leaves_model_untouched():
    model = nn.Sequential(nn.Linear(4, 3))
    before = [p.clone() for p in model.parameters()]
    times = time_training_step(model, (torch.randn(8, 4), torch.randint(0, 3, (8,))), device=torch.device("cpu"),
                               config=TimingConfig(budget_s=0.01, min_repeats=2, max_repeats=3))
    assert 2 <= len(times) <= 3
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
