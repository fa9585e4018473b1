"""The optimizer registry: every optimizer ``thor-plan train``, ``thor-plan tune`` and the
benchmarks can use, each one :class:`OptimizerSpec` (factory, default learning rate, search space,
family). The CLI's choice lists, the tuner's spaces and the benchmarks' tables all read
:data:`OPTIMIZERS`; registering another (a benchmark's peer, say) is one :func:`register_optimizer`
call.

Search spaces (what ``thor-plan tune`` and the time-to-target benchmark search; log-scaled where
marked):

- THOR variants (``thor``, ``thor-128``, ``kfac``, ``thor-eigen``): ``lr`` (SGD's range, 1e-3–1, log; with
  ``graft="adamw"`` AdamW's, 1e-4–0.1, log), ``weight_decay`` (1e-6–0.1, log), ``warmup`` (0–0.2
  of the steps), ``damping_init`` (1e-3–0.3, log); ``thor`` also ``loss_threshold`` (1e-3–0.2,
  log), the planner rule's threshold, re-planned from the profile without measuring again.
  ``thor-eigen`` (a drop-in for AdamW only; its eigenbases do not depend on the damping): AdamW's
  space (``lr``, ``weight_decay``, ``beta1``, ``warmup``) and ``loss_threshold``. The
  factor and inverse intervals and the trace thresholds keep the plan's schedule (or the default
  :class:`~thor_planner.planning.plan.Schedule`); the damping decays over the run as the schedule
  says, counted per epoch.
- ``sgd``: ``lr`` (1e-3–1, log), ``momentum`` (0–0.99), ``weight_decay``, ``warmup``.
- ``adamw`` and ``lamb``: ``lr`` (1e-4–0.1, log; LAMB's is relative to each tensor's norm),
  ``weight_decay``, ``beta1`` (0.8–0.99), ``warmup``.
- ``mlbfgs``: ``lr`` (0.01–3, log), ``momentum`` (of the parameter and gradient averages),
  ``history_size`` (2–20), ``update_every`` (1–20, log), ``damping`` (0.01–10, log).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from thor_planner.training.space import ADAMW_LR, BETA1, MOMENTUM, SGD_LR, WARMUP, WEIGHT_DECAY, Param
from thor_planner.utils.errors import ConfigError

#: ``build(model, config, plan)``: the optimizer for ``model`` as ``config`` (a
#: :class:`~thor_planner.training.loop.TrainConfig`, which imports this module) says.
Factory = Callable[[nn.Module, Any, Any], Any]


@dataclass(frozen=True, kw_only=True)
class OptimizerSpec:
    """One optimizer: how to build it, its default learning rate and its search space.

    ``family``: ``"thor"`` (THOR variants: they take a schedule, ``graft`` and ``kl_clip``),
    ``"first-order"``, ``"quasi-newton"`` or ``"peer"`` (registered by a benchmark).
    ``options``: the names of extra keyword options (``TrainConfig.options``) it accepts.
    ``adamw_lr``: its default learning rate when grafted to AdamW (THOR variants).
    ``grafts``: the first-order optimizers a THOR variant can stand in for (the first is its default);
    ``preconditioner``: its THOR preconditioner family (what a planless run profiles for).
    """

    name: str
    summary: str
    build: Factory
    default_lr: float
    space: tuple[Param, ...]
    family: str = "first-order"
    plans: bool = False
    options: tuple[str, ...] = ()
    adamw_lr: float | None = None
    adamw_space: tuple[Param, ...] | None = None
    grafts: tuple[str, ...] = ("sgd",)
    preconditioner: str = "inverse"

    @property
    def thor(self) -> bool:
        return self.family == "thor"

    def lr(self, graft: str | None = "sgd") -> float:
        return self.adamw_lr if self.thor and graft == "adamw" and self.adamw_lr else self.default_lr

    def search_space(self, graft: str | None = "sgd") -> tuple[Param, ...]:
        return self.adamw_space if self.thor and graft == "adamw" and self.adamw_space else self.space

    def resolve_graft(self, graft: str | None) -> str:
        """``"auto"``: its default graft; else ``graft`` as the runtime names it (None → ``"none"``)."""
        return self.grafts[0] if graft == "auto" else ("none" if graft is None else graft)


OPTIMIZERS: dict[str, OptimizerSpec] = {}


def register_optimizer(spec: OptimizerSpec, *, replace: bool = False) -> OptimizerSpec:
    """Add ``spec`` to :data:`OPTIMIZERS` (``replace``: overwrite an entry of the same name)."""
    if not spec.name or (spec.name in OPTIMIZERS and not replace):
        raise ValueError(f"Invalid optimizer name={spec.name!r}: must be a new, non-empty name")
    OPTIMIZERS[spec.name] = spec
    return spec


def optimizer_spec(name: str) -> OptimizerSpec:
    if name not in OPTIMIZERS:
        raise ConfigError("optimizer", name, f"use {names(tuple(OPTIMIZERS))}", quote=True)
    return OPTIMIZERS[name]


def names(options: tuple[str, ...]) -> str:
    """``a, b or c``."""
    return ", ".join(options[:-1]) + f" or {options[-1]}" if len(options) > 1 else options[0]


def thor_variants() -> tuple[str, ...]:
    return tuple(n for n, s in OPTIMIZERS.items() if s.thor)


# -------------------------------------------------------------------------------- factories


def _betas(config) -> tuple[float, float]:
    return tuple(config.options.get("betas", (0.9, 0.999)))


def _sgd(model: nn.Module, config, plan):
    return torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=config.momentum,
                           weight_decay=config.weight_decay)


def _adamw(model: nn.Module, config, plan):
    return torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay,
                             betas=_betas(config))


def _lamb(model: nn.Module, config, plan):
    from thor_planner.optim.lamb import LAMB

    return LAMB(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay, betas=_betas(config))


def _mlbfgs(model: nn.Module, config, plan):
    from thor_planner.optim.mlbfgs import MLBFGS

    return MLBFGS(model.parameters(), lr=config.learning_rate, momentum=config.momentum,
                  weight_decay=config.weight_decay, **config.options)


def _thor(split: int | None, planned: bool = False, family: str = "inverse") -> Factory:
    def build(model: nn.Module, config, plan):
        from thor_planner.optim import THOR

        extra = {"betas": _betas(config)} if "betas" in config.options else {}
        return THOR(model, plan if planned else None, split=None if planned else split, lr=config.learning_rate,
                    momentum=config.momentum, weight_decay=config.weight_decay, schedule=config.schedule,
                    graft=config.graft, kl_clip=config.kl_clip, family=family, **extra)
    return build


_THOR_SPACE = (SGD_LR, WEIGHT_DECAY, WARMUP, Param(name="damping_init", low=1e-3, high=0.3, log=True))
_THOR_ADAMW_SPACE = (ADAMW_LR,) + _THOR_SPACE[1:]
_THRESHOLD = Param(name="loss_threshold", low=1e-3, high=0.2, log=True)
_THOR_OPTIONS = ("betas",)
_INVERSE_GRAFTS = ("sgd", "adamw", "none")

register_optimizer(OptimizerSpec(
    name="thor", summary="THOR with the plan's per-layer splits (profiles the model first without a plan)",
    build=_thor(None, planned=True), default_lr=0.1, adamw_lr=0.01, family="thor", plans=True,
    space=_THOR_SPACE + (_THRESHOLD,), adamw_space=_THOR_ADAMW_SPACE + (_THRESHOLD,), options=_THOR_OPTIONS,
    grafts=_INVERSE_GRAFTS))
register_optimizer(OptimizerSpec(
    name="thor-eigen", summary="THOR's eigenbasis family with the plan's splits (Adam in the Kronecker eigenbasis; "
    "a drop-in for AdamW; profiles the model for it first without a plan)", build=_thor(None, True, "eigen"),
    default_lr=3e-3, family="thor", plans=True, space=(ADAMW_LR, WEIGHT_DECAY, BETA1, WARMUP, _THRESHOLD),
    options=_THOR_OPTIONS, grafts=("adamw",), preconditioner="eigen"))
register_optimizer(OptimizerSpec(
    name="thor-128", summary="THOR with every factor split at 128", build=_thor(128), default_lr=0.1,
    adamw_lr=0.01, family="thor", space=_THOR_SPACE, adamw_space=_THOR_ADAMW_SPACE, options=_THOR_OPTIONS,
    grafts=_INVERSE_GRAFTS))
register_optimizer(OptimizerSpec(
    name="kfac", summary="dense, unsplit K-FAC factors (THOR's runtime at split = dimension)", build=_thor(None),
    default_lr=0.1, adamw_lr=0.01, family="thor", space=_THOR_SPACE, adamw_space=_THOR_ADAMW_SPACE,
    options=_THOR_OPTIONS, grafts=_INVERSE_GRAFTS))
register_optimizer(OptimizerSpec(
    name="sgd", summary="SGD with momentum", build=_sgd, default_lr=0.1,
    space=(SGD_LR, MOMENTUM, WEIGHT_DECAY, WARMUP)))
register_optimizer(OptimizerSpec(
    name="adamw", summary="AdamW", build=_adamw, default_lr=0.01, space=(ADAMW_LR, WEIGHT_DECAY, BETA1, WARMUP),
    options=("betas",)))
register_optimizer(OptimizerSpec(
    name="mlbfgs", summary="momentum-based L-BFGS", build=_mlbfgs, default_lr=1.0, family="quasi-newton",
    space=(Param(name="lr", low=0.01, high=3.0, log=True), MOMENTUM,
           Param(name="history_size", low=2, high=20, integer=True),
           Param(name="update_every", low=1, high=20, log=True, integer=True),
           Param(name="damping", low=0.01, high=10.0, log=True)),
    options=("history_size", "update_every", "damping")))
register_optimizer(OptimizerSpec(
    name="lamb", summary="LAMB: AdamW's moments with a per-tensor trust ratio", build=_lamb, default_lr=0.05,
    space=(ADAMW_LR, WEIGHT_DECAY, BETA1, WARMUP), options=("betas",)))


#: What a trial's parameters become: TrainConfig fields set directly ...
DIRECT = ("lr", "weight_decay", "momentum", "warmup")
#: ... THOR schedule parameters (see :func:`trial_config`), and the rest are ``options``.
SCHEDULE_PARAMS = ("damping_init",)
PLAN_PARAMS = ("loss_threshold",)


def trial_config(spec: OptimizerSpec, params: dict, base_betas: tuple[float, float] = (0.9, 0.999)) -> dict:
    """The :class:`~thor_planner.training.loop.TrainConfig` keywords a trial's ``params`` set
    (``schedule`` is built by the caller from ``schedule_params``; the plan from ``loss_threshold``)."""
    out: dict = {k: params[k] for k in DIRECT if k in params}
    options = {k: v for k, v in params.items() if k not in DIRECT + SCHEDULE_PARAMS + PLAN_PARAMS}
    if "beta1" in options:
        options["betas"] = (options.pop("beta1"), base_betas[1])
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ValueError(f"Invalid search space for {spec.name!r}: {', '.join(unknown)} is not an option it takes")
    if options:
        out["options"] = options
    return out
