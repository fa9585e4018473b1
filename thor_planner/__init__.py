"""thor-plan: hardware- and model-aware block splits for THOR second-order training."""

from thor_planner.optim import THOR
from thor_planner.planning.plan import Plan
from thor_planner.version import __version__

__all__ = ["THOR", "Plan", "__version__"]
