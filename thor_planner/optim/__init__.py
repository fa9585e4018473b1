"""The THOR runtime: the optimizer (``thor``: the five phases of a step), the skip guard
(``guard``), the running factors and their capture (``factors``, packed blocks in ``blocks``), the
trace rule and check points (``trace``, ``refresh``), the preconditioner families behind one seam
(``preconditioner``), the grafted directions (``direction``), the foreach SGD / AdamW update
(``update``), a preconditioned layer's state (``layer``), checkpoints (``checkpoint``),
argument checks (``arguments``), sharing factors and solved blocks across ``torch.distributed``
ranks (``distributed``), models sharded with FSDP2, each rank preconditioning its own rows
(``sharded``), and the mL-BFGS and LAMB baselines (``mlbfgs``, ``lamb``).

Exports ``THOR``, ``Graft``, ``DivergedError``, the family registry and the trace rule's decisions.
Imports capture, partition, inversion, the plan file (``planning.plan``) and LPT assignment
(``planning.assignment``); must not import timing, the planner's rules, report, the profiler or
training.
"""

from thor_planner.optim.arguments import Graft
from thor_planner.optim.guard import DivergedError
from thor_planner.optim.preconditioner import FAMILIES, register_family
from thor_planner.optim.thor import THOR
from thor_planner.optim.trace import KEEP, STOP, UPDATE, LayerTrace

__all__ = ["FAMILIES", "KEEP", "STOP", "THOR", "UPDATE", "DivergedError", "Graft", "LayerTrace", "register_family"]
