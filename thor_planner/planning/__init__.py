"""From measurements to a decision: the measurement tables (losses.csv, timings.csv), the rules
(crossover, budget, per-factor splits), the planner, and the plan file (schema 1) that the
runtime reads, and how a check point's inversions are shared among data-parallel ranks.

Modules: ``measurements``, ``rules``, ``planner`` (``make_plan``), ``plan`` (``Plan``,
``Schedule``), ``assignment`` (greedy LPT of layers to ranks, used by the runtime too). Imports utils (and ``capture`` to match a plan against a model); must not import
timing, report, optim, the profiler or training.
"""
