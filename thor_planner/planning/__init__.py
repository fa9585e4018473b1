"""From measurements to a decision: the measurement tables (losses.csv, timings.csv), the rules
(crossover, budget, per-factor splits, the refresh interval), the planner, and the plan file
(schema 1) that the runtime reads, how a check point's inversions are shared among data-parallel
ranks, and the plans for the peer optimizers (Distributed Shampoo, SOAP) with their keyword
arguments.

Modules: ``measurements``, ``rules``, ``planner`` (``make_plan``), ``plan`` (``Plan``,
``Schedule``, ``ParamPlan``), ``peers`` (``make_peer_plan``, ``peer_kwargs``), ``assignment``
(greedy LPT of layers to ranks, used by the runtime too). Imports utils, ``targets`` (and
``capture`` to match a plan against a model); must not import timing, report, optim, the profiler
or training.
"""
