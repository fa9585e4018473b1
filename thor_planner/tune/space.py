"""How a trial searches an optimizer's space (the registry's, :mod:`thor_planner.training.optimizers`)
and how its parameters become a training run.

:func:`signature` fingerprints a space (with the model, data, budget and batch size, which define
the objective) so that a study is never continued with a different one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

from thor_planner.planning.plan import Schedule
from thor_planner.training.optimizers import optimizer_spec, trial_config
from thor_planner.training.space import Param

__all__ = ["Param", "schedule_from", "signature", "space", "suggest", "train_options"]


def space(optimizer: str, graft: str | None = "sgd") -> tuple[Param, ...]:
    """``optimizer``'s parameters; THOR variants grafted to AdamW take AdamW's learning rates."""
    return optimizer_spec(optimizer).search_space(graft)


def suggest(trial, optimizer: str, graft: str | None = "sgd") -> dict:
    """Ask ``trial`` for every parameter of ``optimizer``'s space, in a fixed order."""
    return {p.name: p.suggest(trial) for p in space(optimizer, graft)}


def signature(optimizer: str, objective: dict, graft: str | None = "sgd") -> str:
    """A short fingerprint of the space and of what the objective measures (``objective``: model,
    data, budget, batch size)."""
    space_ = [vars(p) for p in space(optimizer, graft)]
    text = json.dumps({"optimizer": optimizer, "space": space_, "objective": objective}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def schedule_from(params: dict, base: Schedule = Schedule()) -> Schedule:
    """THOR's schedule for a trial: ``base`` (the plan's, or the default) with the trial's damping."""
    return replace(base, damping_init=params["damping_init"]) if "damping_init" in params else base


def train_options(optimizer: str, params: dict, graft: str | None = "sgd", base: Schedule = Schedule(),
                  base_options: dict | None = None) -> dict:
    """The :class:`~thor_planner.training.TrainConfig` keywords a trial's parameters set over the base
    run's ``options`` (a trial's ``beta1`` keeps the base's second beta; the plan of ``thor`` is made
    separately, from ``loss_threshold``)."""
    spec, base_options = optimizer_spec(optimizer), dict(base_options or {})
    options = trial_config(spec, params, base_options.get("betas", (0.9, 0.999)))
    if base_options or "options" in options:
        options["options"] = {**base_options, **options.get("options", {})}
    if spec.thor:
        options["schedule"] = schedule_from(params, base)
        if graft != "sgd":
            options["graft"] = graft
    return options
