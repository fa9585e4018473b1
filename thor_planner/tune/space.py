"""The search space of each optimizer, and how a trial's parameters become a training run.

Every optimizer has its own space (so comparisons are made at equal trial budgets):

- THOR variants (``thor``, ``thor-128``, ``kfac``): ``lr``; ``damping_init`` and ``damping_decay``
  (the factor damping is multiplied by per epoch); ``omega1`` and ``omega2_ratio`` (ω2 = ratio · ω1,
  which keeps ω2 ≤ ω1); ``factor_every`` (steps between factor captures); ``interval_initial``
  (steps between the first inverse check points) and ``interval_growth`` (the interval's factor per
  epoch). ``thor`` also tunes ``loss_threshold``, the planner rule's information-loss threshold: each
  trial re-plans the per-layer splits from the profile's measurements, without measuring again.
  With ``graft="adamw"`` (THOR as a drop-in for AdamW, for transformers) their ``lr`` takes
  AdamW's range instead of SGD's (:func:`space`).
- ``sgd``: ``lr``, ``momentum``. ``adamw`` and ``lamb``: ``lr``, ``weight_decay``.
- ``mlbfgs``: ``lr``, ``momentum`` (of the parameter and gradient averages), ``history_size``,
  ``update_every``, ``damping``.

:func:`signature` fingerprints a space (with the model, data, epochs, target and batch size, which
define the objective) so that a study is never continued with a different one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from thor_planner.planning.plan import Schedule

THOR_VARIANTS = ("thor", "thor-128", "kfac")
#: The factors' running-average decay per step; per capture it is this to the power ``factor_every``
#: (0.95 ** 10 ≈ 0.6, the default schedule's), so the averaging horizon does not change with the interval.
PER_STEP_FACTOR_DECAY = 0.95


@dataclass(frozen=True, kw_only=True)
class Param:
    """One dimension of a search space: a float or integer range, optionally log-scaled."""

    name: str
    low: float
    high: float
    log: bool = False
    integer: bool = False

    def suggest(self, trial):
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)


_THOR = (
    Param(name="lr", low=1e-3, high=1.0, log=True),  # SGD's range: THOR's steps are grafted to SGD's length
    Param(name="damping_init", low=1e-3, high=0.3, log=True),
    Param(name="damping_decay", low=0.5, high=1.0),
    Param(name="omega1", low=1e-4, high=0.1, log=True),
    Param(name="omega2_ratio", low=0.0, high=1.0),
    Param(name="factor_every", low=1, high=20, log=True, integer=True),
    Param(name="interval_initial", low=1, high=100, log=True, integer=True),
    Param(name="interval_growth", low=1.0, high=4.0),
)
SPACES: dict[str, tuple[Param, ...]] = {
    "thor": _THOR + (Param(name="loss_threshold", low=1e-3, high=0.2, log=True),),
    "thor-128": _THOR,
    "kfac": _THOR,
    "sgd": (Param(name="lr", low=1e-3, high=1.0, log=True), Param(name="momentum", low=0.0, high=0.99)),
    "adamw": (Param(name="lr", low=1e-4, high=0.1, log=True),
              Param(name="weight_decay", low=1e-6, high=0.1, log=True)),
    "lamb": (Param(name="lr", low=1e-4, high=0.1, log=True),  # relative to each tensor's norm
             Param(name="weight_decay", low=1e-6, high=0.1, log=True)),
    "mlbfgs": (Param(name="lr", low=0.01, high=3.0, log=True), Param(name="momentum", low=0.0, high=0.99),
               Param(name="history_size", low=2, high=20, integer=True),
               Param(name="update_every", low=1, high=20, log=True, integer=True),
               Param(name="damping", low=0.01, high=10.0, log=True)),
}


def space(optimizer: str, graft: str | None = "sgd") -> tuple[Param, ...]:
    """``optimizer``'s parameters; THOR variants grafted to AdamW take AdamW's learning rates."""
    params = SPACES[optimizer]
    if optimizer in THOR_VARIANTS and graft == "adamw":
        params = tuple(SPACES["adamw"][0] if p.name == "lr" else p for p in params)
    return params


def suggest(trial, optimizer: str, graft: str | None = "sgd") -> dict:
    """Ask ``trial`` for every parameter of ``optimizer``'s space, in a fixed order."""
    return {p.name: p.suggest(trial) for p in space(optimizer, graft)}


def signature(optimizer: str, objective: dict, graft: str | None = "sgd") -> str:
    """A short fingerprint of the space and of what the objective measures (``objective``: model,
    data, epochs, target accuracy, batch size)."""
    space_ = [vars(p) for p in space(optimizer, graft)]
    text = json.dumps({"optimizer": optimizer, "space": space_, "objective": objective}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def schedule_from(params: dict, steps_per_epoch: int, base: Schedule = Schedule()) -> Schedule:
    """THOR's schedule for a trial: damping decay and interval growth counted per epoch, the factor
    decay per capture following ``factor_every`` (see :data:`PER_STEP_FACTOR_DECAY`)."""
    omega1 = params["omega1"]
    initial = params["interval_initial"]
    return Schedule(
        damping_init=params["damping_init"], damping_decay=params["damping_decay"],
        damping_decay_steps=steps_per_epoch, factor_every=params["factor_every"],
        factor_decay=PER_STEP_FACTOR_DECAY ** params["factor_every"], interval_initial=initial,
        interval_growth=params["interval_growth"],
        interval_grow_every=steps_per_epoch, interval_max=max(base.interval_max, initial),
        omega1=omega1, omega2=params["omega2_ratio"] * omega1,
    )


def train_options(optimizer: str, params: dict, steps_per_epoch: int, graft: str | None = "sgd") -> dict:
    """The :class:`~thor_planner.training.TrainConfig` keywords a trial's parameters set (the plan of
    ``thor`` is made separately, from ``loss_threshold``)."""
    options: dict = {"lr": params["lr"]}
    if optimizer in THOR_VARIANTS:
        options["schedule"] = schedule_from(params, steps_per_epoch)
        if graft != "sgd":
            options["graft"] = graft
    elif optimizer == "sgd":
        options["momentum"] = params["momentum"]
    elif optimizer in ("adamw", "lamb"):
        options["weight_decay"] = params["weight_decay"]
    elif optimizer == "mlbfgs":
        options["momentum"] = params["momentum"]
        options["mlbfgs_options"] = {k: params[k] for k in ("history_size", "update_every", "damping")}
    return options
