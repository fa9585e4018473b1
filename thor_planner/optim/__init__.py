"""The THOR runtime: the optimizer and its trace rule."""

from .thor import THOR
from .trace import KEEP, STOP, UPDATE, LayerTrace

__all__ = ["KEEP", "STOP", "THOR", "UPDATE", "LayerTrace"]
