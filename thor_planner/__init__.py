"""thor-plan: hardware- and model-aware block splits for THOR second-order training."""

__version__ = "0.1.0"
