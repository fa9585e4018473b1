"""The self-contained plotly report of a plan and its measurements.

Modules: ``html`` (``build_report``, ``write_report``, ``figures``, the timing figure), ``curves``
(THOR's figure 3 and where its labels go), ``heatmap`` (the per-factor loss heatmap in banded rows),
``placement`` (free-spot geometry for labels), ``style`` (colours, plotly config, figure style),
``tables`` (tables, provenance, summary cards, warnings, CSS). Imports planning and utils;
must not import capture, timing, optim, the profiler or training.
"""
