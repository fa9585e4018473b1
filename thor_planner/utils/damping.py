"""How damping enters an inversion: the value added to every factor's diagonal.

THOR (as MindSpore's implementation does) inverts ``F + sqrt(damping) · I`` for each Kronecker factor
``F``: the Kronecker product of two factors damped this way carries ``damping`` itself on its
diagonal (plus cross terms). The runtime, the inversion timing and the backend accuracy check all
take the shift from :func:`factor_shift`, so the planner measures the matrices training inverts.
"""

from __future__ import annotations

import math

DEFAULT_DAMPING = 0.03  # THOR's initial damping (MindSpore's ResNet-50 recipe)


def factor_shift(damping: float) -> float:
    """The value added to each factor's diagonal for ``damping``: ``sqrt(damping)``."""
    if not damping >= 0:
        raise ValueError(f"Invalid damping={damping}: must be >= 0")
    return math.sqrt(damping)
