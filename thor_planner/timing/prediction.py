"""Offline planning: candidate timings predicted from a device profile instead of measured.

Used by ``thor-plan profile --device-profile FILE``: capture and information loss still run here;
the inversion-timing stage is replaced by the profile's :class:`costmodel.CostModel`, one
prediction per candidate for exactly the blocks :func:`timing.time_candidates` would invert
(:func:`partition.block_counts`), with the per-size backend chosen the same way for all candidates.
"""

from __future__ import annotations

from collections.abc import Sequence

from thor_planner.timing.backend_choice import network_counts
from thor_planner.timing.device_profile import DeviceProfile, DeviceProfileError
from thor_planner.inversion.backends import inversion_flops
from thor_planner.partition import block_counts
from thor_planner.timing.candidates import CandidateTiming


def predict_candidates(profile: DeviceProfile, dims: Sequence[int], candidates: Sequence[int],
                       backend: str = "auto", *, family: str = "inverse", flops_per_cube: float = 1.0
                       ) -> tuple[list[CandidateTiming], dict[int, str]]:
    """Predicted whole-network refresh per candidate (rows marked ``predicted``) and the backend per size.

    ``backend`` ``"auto"`` takes the predicted fastest accurate backend per size; a name takes that
    backend wherever the profile has (accurate) data for it, else the default backend. Another
    ``family`` is predicted from the profile's timings of that family's solve.
    """
    model = profile.cost_model(family)
    try:
        chosen = model.choose(network_counts(dims, candidates), backend if family == "inverse" else family)
    except ValueError as exc:
        raise DeviceProfileError(f"Device profile '{profile.source}' cannot predict this model: {exc}") from None
    rows = []
    for b in candidates:
        counts = block_counts(list(dims), [b] * len(dims))
        seconds = model.refresh_seconds(counts, len(dims), chosen)
        rows.append(CandidateTiming(candidate=b, median_s=seconds, min_s=seconds, max_s=seconds, repeats=0,
                                    blocks=counts, gflop=flops_per_cube * inversion_flops(counts) / 1e9,
                                    predicted=True))
    return rows, chosen


def predicted_device_fields(profile: DeviceProfile, backend: str, chosen: dict[int, str]) -> dict:
    """The plan's device section for an offline plan: the profiled device, the per-size backends,
    what the profile excluded, and where the timings came from."""
    device = {k: v for k, v in profile.device.items() if k not in ("backend", "backends")}
    return {
        **device, "backend": backend, "dtype": "float32",
        "backends": {str(s): n for s, n in sorted(chosen.items())},
        "excluded": list(profile.excluded),
        "pruned": list(profile.pruned),
        "accuracy": profile.accuracy,
        "predicted_from": {"file": profile.source, "device": profile.device.get("name"),
                           "created": profile.created, "tool_version": profile.tool_version},
    }
