"""THOR's checkpoints: what ``state_dict()`` holds under ``"thor"``, the checks that refuse another
model's or another plan's state, and the upgrade of older checkpoints.

Version 2 (this one): ``{"version", "family", "step", "next_check", "skips", "skipped_steps",
"params": [shape of every parameter, group by group], "layers": {name: Layer.state_dict()}}``.
Version 1 (no ``"version"`` field) kept per layer ``a``, ``g``, ``a_blocks``, ``g_blocks``,
``inv_step``, ``inv_shift`` and the trace; :func:`upgrade` maps it onto version 2 (family
``inverse``), so old checkpoints resume.
"""

from __future__ import annotations

import torch

from thor_planner.optim.blocks import pack
from thor_planner.utils.errors import UserError

VERSION = 2


class StateMismatchError(UserError, ValueError):
    """An optimizer state saved for another model, plan or preconditioner family."""


def param_shapes(groups: list[dict]) -> list[list[int]]:
    return [list(p.shape) for g in groups for p in g["params"]]


def check_same_model(groups: list[dict], state: dict, thor: dict | None, names: dict) -> None:
    """Refuse a state whose parameters have other shapes than ours (``params`` when the state
    records them, else the shapes of its per-parameter tensors); ``names`` maps our parameters to
    their names in the model."""
    mine = param_shapes(groups)
    params = [p for g in groups for p in g["params"]]
    if thor is not None and "params" in thor:
        theirs = {i: s for i, s in enumerate(thor["params"])}
    else:
        theirs = {int(i): list(t.shape) for i, s in state.get("state", {}).items() for t in s.values()
                  if isinstance(t, torch.Tensor) and t.dim() > 0}
    for i, shape in sorted(theirs.items()):
        here = mine[i] if i < len(mine) else None
        if here != shape:
            name = f" ({names[params[i]]})" if i < len(params) and params[i] in names else ""
            raise StateMismatchError(
                f"THOR state was saved for another model: parameter {i}{name} has shape {tuple(shape)} in the state "
                f"but {'no parameter' if here is None else tuple(here)} here; load the state saved by this "
                "model's optimizer")


def check_same_layers(mine: dict[str, tuple[int, int]], thor: dict) -> None:
    theirs = {n: (s["a_split"], s["g_split"]) for n, s in thor["layers"].items()}
    if mine != theirs:
        raise StateMismatchError("THOR state does not match this optimizer's layers and splits: "
                                 f"saved {sorted(theirs.items())}, here {sorted(mine.items())}")


def check_same_family(family: str, thor: dict) -> None:
    if thor.get("family", "inverse") != family:
        raise StateMismatchError(f"THOR state was saved by the {thor['family']!r} preconditioner family, this "
                                 f"optimizer uses {family!r}: build THOR with family={thor['family']!r}")


def upgrade(thor: dict) -> dict:
    """A version-1 ``"thor"`` state as version 2 (a version-2 state is returned as it is)."""
    if "layers" not in thor and any(str(k).startswith("rank") for k in thor):
        raise StateMismatchError("THOR state was saved by THOR on a model sharded with FSDP (one part per rank): "
                                 "load it into the same FSDP run's optimizer")
    if thor.get("version", 1) >= VERSION:
        return thor
    layers = {}
    for name, s in thor["layers"].items():
        source = None if s.get("a_blocks") is None else {
            "a": pack(s["a_blocks"]), "g": pack(s["g_blocks"]), "step": s["inv_step"], "shift": s["inv_shift"]}
        layers[name] = {"a_split": s["a_split"], "g_split": s["g_split"], "trace": s["trace"],
                        "factors": {"a": s["a"], "g": s["g"]}, "source": source,
                        "preconditioner": {"family": "inverse", "version": 1}}
    skips = thor.get("skips", {"total": thor["skipped_steps"], "consecutive": 0, "longest": 0})
    return {**thor, "version": VERSION, "family": "inverse", "skips": skips, "layers": layers}
