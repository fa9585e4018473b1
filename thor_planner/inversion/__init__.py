"""Batched inversion of damped factor blocks: the backend registry, the plain torch backends,
the reduced-precision and cupy backends, and :func:`invert_groups`, the one function both the
profiler's timing and the THOR runtime call.

Exports ``BACKENDS``, ``DEFAULT_BACKEND``, ``invert_stack``, ``invert_groups``. Imports only
``thor_planner.partition``; must not import timing, planning, optim or the profiler.
"""

from thor_planner.inversion import extra as _extra  # noqa: F401  (registers the extra backends)
from thor_planner.inversion.backends import BACKENDS, DEFAULT_BACKEND, invert_groups, invert_stack

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "invert_groups", "invert_stack"]
