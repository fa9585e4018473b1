"""``thor-plan tune``: optuna studies over what the profiler cannot measure (learning rate, damping
schedule, trace thresholds, factor and inverse intervals, the rule's loss threshold), with the
training time to a target accuracy as the objective.

Owns the search spaces (``space``), the study's storage and identity (``study``), the objective and
the run (``tuner``), and the tuning report and output folder (``report``). Exports ``TuneConfig``,
``TuneResult``, ``TuneError``, ``run_tune`` and ``write_outputs``. Sits on top: drives training and
planning; may import every other stage; must not import the CLI, and nothing in the package imports
it. optuna is imported only when a study is opened (the ``tune`` extra).
"""

from thor_planner.tune.report import write_outputs
from thor_planner.tune.study import TuneError
from thor_planner.tune.tuner import TuneConfig, TuneInterrupted, TuneResult, run_tune

__all__ = ["TuneConfig", "TuneError", "TuneInterrupted", "TuneResult", "run_tune", "write_outputs"]
