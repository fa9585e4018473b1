"""The ``thor-plan profile`` pipeline on top of the stages: load the model and data, capture,
information loss, timing (measured or predicted), then the files of a profile folder.

Modules: ``profiler`` (``ProfileConfig``, ``run_profile``), ``outputs`` (atomic profile folder).
May import every stage below it; must not import optim or training.
"""
