"""The THOR runtime: the optimizer (``thor``), its packed block factors (``blocks``), the trace rule
and batched refresh of inverses (``trace``, ``refresh``), the preconditioned and grafted directions
(``precondition``), the foreach SGD / AdamW update (``update``), constructor checks (``arguments``),
skipped-step accounting (``skips``), sharing factors and
inverses across ``torch.distributed`` ranks (``distributed``) and the mL-BFGS and LAMB baselines
(``mlbfgs``, ``lamb``).

Exports ``THOR``, ``DivergedError`` and the trace rule's decisions. Imports capture, partition, inversion and the
plan file (``planning.plan``); must not import timing, the planner's rules, report, the profiler
or training.
"""

from thor_planner.optim.skips import DivergedError
from thor_planner.optim.thor import THOR
from thor_planner.optim.trace import KEEP, STOP, UPDATE, LayerTrace

__all__ = ["KEEP", "STOP", "THOR", "UPDATE", "DivergedError", "LayerTrace"]
