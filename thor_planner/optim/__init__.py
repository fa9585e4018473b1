"""The THOR runtime: the optimizer, its packed block factors and its trace rule.

Exports ``THOR`` and the trace rule's decisions. Imports capture, partition, inversion and the
plan file (``planning.plan``); must not import timing, the planner's rules, report, the profiler
or training.
"""

from thor_planner.optim.thor import THOR
from thor_planner.optim.trace import KEEP, STOP, UPDATE, LayerTrace

__all__ = ["KEEP", "STOP", "THOR", "UPDATE", "LayerTrace"]
