import pytest
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


# ------------------------------------------------------------------ damping as the runtime damps


def test_timing_damps_blocks_with_the_runtime_shift(monkeypatch) -> None:
    import math

    import thor_planner.timing.candidates as candidates
    from thor_planner.planning.plan import Schedule

    seen = []
    real = candidates.invert_groups
    monkeypatch.setattr(candidates, "invert_groups", lambda groups, shift, backends: seen.append(shift) or
                        real(groups, shift, backends))
    time_candidates(synthetic_factors([8, 20]), [1, 16], config=TimingConfig(budget_s=0.001, max_repeats=1))
    assert seen and set(seen) == {math.sqrt(0.03)}
    assert Schedule().shift(0) == math.sqrt(0.03)  # what the optimizer adds at its first inversion


def test_backend_check_sees_the_damped_blocks_the_runtime_inverts() -> None:
    import math

    from thor_planner.inversion.accuracy import ACCURACY_CONDITION
    from thor_planner.timing.backend_choice import damped_accuracy_blocks

    shift = math.sqrt(0.03)
    blocks = damped_accuracy_blocks(32, shift).double()
    eig = torch.linalg.eigvalsh(blocks)
    # spectrum of the damped block: from the shift up to shift × condition number
    assert torch.allclose(eig[:, 0], torch.full((len(eig),), shift, dtype=torch.float64), rtol=1e-4)
    assert torch.allclose(eig[:, -1], torch.full((len(eig),), shift * ACCURACY_CONDITION, dtype=torch.float64),
                          rtol=1e-4)


def test_timer_inverts_with_the_runtime_shift(monkeypatch) -> None:
    import math

    import thor_planner.timing.backend_choice as choice

    seen = []
    monkeypatch.setattr(choice, "invert_stack", lambda stack, shift, name: seen.append(shift))
    choice.measured_timer(torch.device("cpu"), damping=0.02, budget_s=0.001)("torch-cholesky", 4, 2)
    assert seen and set(seen) == {math.sqrt(0.02)}


# ----------------------------------------------------------------------- busy machine monitor


class FakeReadings:
    """Other processes' CPU seconds and wall seconds, advancing by given amounts per measurement."""

    def __init__(self, others_cores: list[float], seconds: float = 1.0) -> None:
        self.loads, self.seconds = list(others_cores), seconds
        self.cpu = self.wall = 0.0
        self.reads = 0

    def reader(self) -> float:
        self.reads += 1
        if self.reads % 2 == 0:  # the end of a measurement: others used load × elapsed
            self.cpu += self.loads.pop(0) * self.seconds
        return self.cpu

    def clock(self) -> float:
        self.ticks = getattr(self, "ticks", 0) + 1
        if self.ticks % 2 == 0:  # the end of a measurement: it took ``seconds``
            self.wall += self.seconds
        return self.wall


def test_quiet_measurement_runs_once() -> None:
    from thor_planner.timing.busy import BusyMonitor, watching

    fake = FakeReadings([0.1])
    monitor = BusyMonitor(reader=fake.reader, clock=fake.clock, slack_s=0.0)
    calls = []
    with watching(monitor):
        measure(lambda: calls.append(1), torch.device("cpu"), TimingConfig(budget_s=10.0, max_repeats=2))
    assert len(calls) == 3  # one warm-up, two repeats: measured once
    assert monitor.fields() == {"busy": False, "checked": True, "threshold_cores": 0.5, "others_peak_cores": 0.1,
                                "measurements": 1, "repeated": 0, "disturbed": 0, "warning": None}


def test_busy_measurement_is_repeated_then_recorded() -> None:
    from thor_planner.timing.busy import BusyMonitor, watching

    fake = FakeReadings([1.5, 0.2])  # busy during the first attempt, quiet during the second
    monitor = BusyMonitor(reader=fake.reader, clock=fake.clock, slack_s=0.0)
    with watching(monitor):
        measure(lambda: None, torch.device("cpu"), TimingConfig(budget_s=10.0, max_repeats=2))
    assert (monitor.repeated, monitor.disturbed, monitor.busy) == (1, 0, False)

    fake = FakeReadings([1.8, 1.2, 2.0])  # busy every time: the least disturbed attempt is kept
    monitor = BusyMonitor(reader=fake.reader, clock=fake.clock, slack_s=0.0)
    attempts = iter([[0.3], [0.2], [0.4]])
    assert monitor.run(lambda: next(attempts)) == [0.2]
    assert (monitor.repeated, monitor.disturbed, monitor.busy, monitor.peak_cores) == (2, 1, True, 2.0)
    assert monitor.warning() == ("Other processes used up to 2.0 CPU cores while timing (1 of 1 measurements "
                                 "disturbed even after 3 attempts): the timings and the split may be off; "
                                 "re-run on a quiet machine")


def test_no_proc_means_unchecked() -> None:
    from thor_planner.timing.busy import BusyMonitor

    monitor = BusyMonitor(reader=lambda: None)
    assert monitor.run(lambda: [1.0]) == [1.0]
    assert monitor.fields()["checked"] is False and not monitor.busy


def test_outside_a_monitor_measure_is_unwatched() -> None:
    from thor_planner.timing.busy import current

    assert current() is None


def test_a_long_cpu_warmup_counts_as_the_first_repeat():
    import time

    calls = []
    times = measure(lambda: (calls.append(1), time.sleep(0.02)), torch.device("cpu"),
                    TimingConfig(budget_s=0.05, min_repeats=1, max_repeats=5))
    # 0.02 s ≥ a quarter of the 0.05 s budget: the warm-up is kept; repeats stop once 0.05 s is reached
    assert len(calls) == len(times) == 3 and all(t >= 0.02 for t in times)


def test_repeats_stop_once_three_runs_agree(monkeypatch) -> None:
    import thor_planner.timing.candidates as candidates

    def runs(seconds):
        it = iter(seconds)
        monkeypatch.setattr(candidates, "_timed", lambda fn, device: next(it))

    config = TimingConfig(budget_s=100.0, min_repeats=1, max_repeats=7, warmup=0)
    runs([1.0, 1.02, 1.01, 9.0, 9.0, 9.0, 9.0])
    assert candidates._measure_once(lambda: None, torch.device("cpu"), config) == [1.0, 1.02, 1.01]
    runs([1.0, 1.5, 1.0, 1.5, 1.0, 1.5, 1.0])  # a spread of 40%: repeat to max_repeats
    assert len(candidates._measure_once(lambda: None, torch.device("cpu"), config)) == 7
    runs([1.0] * 7)
    unsettled = TimingConfig(budget_s=100.0, min_repeats=1, max_repeats=7, warmup=0, settle=None)
    assert len(candidates._measure_once(lambda: None, torch.device("cpu"), unsettled)) == 7
    with pytest.raises(ValueError, match=r"^Invalid settle=-0\.1: must be >= 0 or None$"):
        TimingConfig(settle=-0.1)
