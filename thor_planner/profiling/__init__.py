"""The ``thor-plan profile`` pipeline on top of the stages: load the model and data, capture,
information loss, timing (measured or predicted), then the files of a profile folder; for a peer
optimizer (``--for shampoo|soap``) the gradient statistics, their blocks' loss and refresh time.

Modules: ``profiler`` (``run_profile``), ``common`` (``ProfileConfig`` and what both profiles
share), ``peer_profile`` (``run_peer_profile``), ``outputs`` (atomic profile folder).
May import every stage below it; must not import optim or training.
"""
