"""The trace rule as a pure state machine, on constructed factor sequences."""

from __future__ import annotations

import math

import pytest
import torch

from thor_planner.optim.trace import KEEP, STOP, UPDATE, LayerTrace, decide, trace_change


def test_trace_change_is_relative_change_of_damped_traces() -> None:
    # tr(F + sI) = tr(F) + s·d: 4.4 -> 4.84 is a 10% change
    assert trace_change(4.44, 4.0, 0.4) == pytest.approx(0.1)
    assert trace_change(4.0, 4.0, 0.4) == 0.0
    assert trace_change(-5.0, 3.0, 0.0) == pytest.approx(2 / 3)  # absolute values, as in the paper
    assert trace_change(1.0, 0.0, 0.0) == math.inf
    assert trace_change(0.0, 0.0, 0.0) == 0.0


@pytest.mark.parametrize(
    ("delta", "omega1", "omega2", "expected"),
    [
        (0.02, 0.01, 0.001, UPDATE),
        (0.01, 0.01, 0.001, KEEP),  # ω2 ≤ Δ ≤ ω1 is inclusive on both ends
        (0.001, 0.01, 0.001, KEEP),
        (0.0009, 0.01, 0.001, STOP),
        (0.0, 0.01, 0.0, KEEP),  # "THOR" (ω2 = 0) never stops
        (0.0, 0.0, 0.0, UPDATE),  # "THOR_NT": always update, even without any change
        (5.0, 0.0, 0.0, UPDATE),
    ],
)
def test_decide(delta: float, omega1: float, omega2: float, expected: str) -> None:
    assert decide(delta, omega1, omega2) == expected


def _check(state: LayerTrace, a: torch.Tensor, g: torch.Tensor, shift: float,
           omega1: float = 0.01, omega2: float = 0.001) -> str:
    """One check point with the traces of the constructed factors ``a`` and ``g``."""
    traces = float(torch.trace(a)), float(torch.trace(g))
    return state.check(*traces, a.shape[0], g.shape[0], shift, omega1, omega2)


def test_sequence_update_keep_update_stop_against_last_inversion() -> None:
    """A = c·I (d = 4), G fixed, s = 0.1: tr(A + sI) = 4c + 0.4."""
    state = LayerTrace()
    g = torch.eye(3, dtype=torch.float64)
    decisions = [_check(state, c * torch.eye(4, dtype=torch.float64), g, 0.1)
                 for c in (1.0, 1.02, 1.03, 1.035, 1.0351)]
    # 1.0: first check point; 1.02: 0.08/4.4 > ω1; 1.03: 0.04/4.48 in [ω2, ω1];
    # 1.035: 0.06/4.48 > ω1 measured against the factors last inverted (1.02), although against the
    # previous check point (1.03) it would be 0.02/4.52 < ω1; 1.0351: 0.0004/4.54 < ω2.
    assert decisions == [UPDATE, UPDATE, KEEP, UPDATE, STOP]
    assert state.stats() == {"updates": 3, "keeps": 1, "stops": 1, "frozen": True,
                             "last_delta": pytest.approx(0.0004 / 4.54)}
    assert state.ref_a == pytest.approx(4 * 1.035)
    with pytest.raises(RuntimeError):
        _check(state, torch.eye(4, dtype=torch.float64), g, 0.1)


def test_layer_change_is_the_larger_of_both_factors() -> None:
    state = LayerTrace()
    a = torch.eye(4, dtype=torch.float64)
    assert _check(state, a, torch.eye(2, dtype=torch.float64), 0.0) == UPDATE
    # A unchanged, G doubled: Δ = max(0, 1) → update
    assert _check(state, a, 2 * torch.eye(2, dtype=torch.float64), 0.0) == UPDATE
    assert state.last_delta == pytest.approx(1.0)
    # A grows by 0.5%, G unchanged: Δ = 0.005 → keep
    assert _check(state, 1.005 * a, 2 * torch.eye(2, dtype=torch.float64), 0.0) == KEEP


def test_always_update_and_round_trip() -> None:
    state = LayerTrace()
    for _ in range(3):
        assert _check(state, torch.eye(2), torch.eye(2), 0.1, 0.0, 0.0) == UPDATE
    assert (state.updates, state.keeps, state.stops, state.frozen) == (3, 0, 0, False)
    assert LayerTrace.from_dict(state.to_dict()) == state
