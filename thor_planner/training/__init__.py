"""``thor-plan train``: a deterministic training loop over the built-in models and data for THOR
and its baselines, logging per-epoch loss and accuracy and THOR's trace-rule counts.

Exports ``TrainConfig``, ``train`` (``thor_planner.training.train(TrainConfig(...))``). Sits on
top: may import inputs, profiling, planning and optim; nothing in the package imports it.
"""

from thor_planner.training.loop import TrainConfig, TrainConfigError, train

__all__ = ["TrainConfig", "TrainConfigError", "train"]
