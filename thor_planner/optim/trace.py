"""THOR's trace rule: at a check point, recompute, keep or freeze a layer's factor inverses.

For a factor F of dimension d, the damped factor is ``F + s·I`` with ``s = sqrt(damping)`` (the
shift the runtime adds to every factor's diagonal). At check point k the rule compares F at k with
the factor the layer's inverses were last computed from (F at k−1 in the paper's notation: a
"keep" leaves the stored inverse, and with it the reference factor, unchanged, so small drifts
accumulate and eventually trigger a recompute instead of being forgotten)::

    Δ_F = | |tr(Fᵏ + sI)| − |tr(Fᵏ⁻¹ + sI)| | / |tr(Fᵏ⁻¹ + sI)|,     tr(F + sI) = tr(F) + s·d

A layer has two factors, A and G; its change is ``Δ = max(Δ_A, Δ_G)``: the layer is recomputed
when either factor moved by more than ω1 and frozen only when both moved by less than ω2. (The
trace of the Kronecker product, tr(A)·tr(G), could hide a growing A behind a shrinking G.)

    Δ > ω1          → "update": recompute the layer's inverses
    ω2 ≤ Δ ≤ ω1     → "keep": use the previous inverses
    Δ < ω2          → "stop": freeze the previous inverses for the rest of training

The first check point of a layer always updates; ω1 = 0 (hence ω2 = 0) means always update, even
when the factors did not change at all. The rule only needs traces (plain floats), so it is pure
Python and tested on constructed sequences.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

UPDATE, KEEP, STOP = "update", "keep", "stop"


def trace_change(trace: float, ref_trace: float, shift: float) -> float:
    """``| |trace + shift| − |ref + shift| | / |ref + shift|`` (``shift`` is ``s·dim``)."""
    new, old = abs(trace + shift), abs(ref_trace + shift)
    if old == 0:
        return 0.0 if new == 0 else math.inf
    return abs(new - old) / old


def decide(delta: float, omega1: float, omega2: float) -> str:
    """The trace rule's decision for a change ``delta`` and thresholds ``omega1 >= omega2 >= 0``."""
    if omega1 == 0 or delta > omega1:
        return UPDATE
    if delta >= omega2:
        return KEEP
    return STOP


@dataclass
class LayerTrace:
    """The trace rule's state for one layer: reference traces, counters and the frozen flag.

    ``ref_a`` / ``ref_g`` are the undamped traces of the factors the current inverses were
    computed from (``None`` before the first inversion).
    """

    ref_a: float | None = None
    ref_g: float | None = None
    frozen: bool = False
    updates: int = 0
    keeps: int = 0
    stops: int = 0
    last_delta: float | None = None

    def check(self, trace_a: float, trace_g: float, a_dim: int, g_dim: int, shift: float,
              omega1: float, omega2: float) -> str:
        """Apply the rule at a check point; updates the counters and returns the decision.

        ``trace_a`` / ``trace_g`` are the undamped traces of the layer's current factors and
        ``shift`` the value added to every diagonal entry (``sqrt(damping)``).
        """
        if self.frozen:
            raise RuntimeError("a frozen layer has no more check points")
        if self.ref_a is None or self.ref_g is None:
            delta, decision = None, UPDATE
        else:
            delta = max(trace_change(trace_a, self.ref_a, shift * a_dim),
                        trace_change(trace_g, self.ref_g, shift * g_dim))
            decision = decide(delta, omega1, omega2)
        self.last_delta = delta
        if decision == UPDATE:
            self.updates += 1
            self.ref_a, self.ref_g = float(trace_a), float(trace_g)
        elif decision == KEEP:
            self.keeps += 1
        else:
            self.stops += 1
            self.frozen = True
        return decision

    def stats(self) -> dict:
        return {"updates": self.updates, "keeps": self.keeps, "stops": self.stops,
                "frozen": self.frozen, "last_delta": self.last_delta}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LayerTrace:
        return cls(**d)
