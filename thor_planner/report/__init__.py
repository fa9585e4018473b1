"""The self-contained plotly report of a plan and its measurements.

Modules: ``html`` (``build_report``, ``write_report``, ``figures``), ``tables`` (tables, provenance,
summary cards, warnings, CSS). Imports planning and utils;
must not import capture, timing, optim, the profiler or training.
"""
