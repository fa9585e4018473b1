"""thor-plan: hardware- and model-aware block splits for THOR second-order training."""

__version__ = "0.1.0"

from .optim import THOR
from .plan import Plan

__all__ = ["THOR", "Plan", "__version__"]
