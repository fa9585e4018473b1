"""THOR's arguments: the grafting choice as a validated enum (:class:`Graft`) and the checks of
the constructor and of every param group, as ``torch.optim`` makes them: one
:class:`~thor_planner.utils.errors.ConfigError` (a ``ValueError``) per mistake, naming the
argument, its value and what it must be."""

from __future__ import annotations

import math
import numbers
from enum import Enum

from thor_planner.utils.errors import ConfigError


class Graft(str, Enum):
    """Which first-order optimizer THOR stands in for: its step lengths and its update of the rest.

    ``SGD``: each layer's preconditioned direction takes the norm of its gradient; momentum, weight
    decay and the update as ``torch.optim.SGD``. ``ADAMW``: the Adam-filtered gradient is
    preconditioned and takes the norm of AdamW's direction; AdamW's betas, eps, decoupled weight
    decay and update. ``NONE`` (``graft=None``): the raw preconditioned direction, SGD's update.
    """

    SGD = "sgd"
    ADAMW = "adamw"
    NONE = "none"

    @classmethod
    def parse(cls, value) -> "Graft":
        if value is None:
            return cls.NONE
        if isinstance(value, cls):
            return value
        if isinstance(value, str) and value in cls._value2member_map_:
            return cls(value)
        raise ConfigError("graft", value, "use 'sgd', 'adamw' or None", quote=True)

    @property
    def adam(self) -> bool:
        return self is Graft.ADAMW


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_group(group: dict, graft: Graft) -> None:
    """A param group's (or the defaults') ``lr``, ``momentum``, ``weight_decay``, ``nesterov``,
    ``betas`` and ``eps``; raises :class:`ConfigError` for the first invalid one."""
    lr = group["lr"]
    if not (_real(lr) or _is_scalar_tensor(lr)) or not lr >= 0:
        raise ConfigError("lr", lr, "must be a finite number >= 0")
    for what in ("momentum", "weight_decay", "eps"):
        if not _real(group[what]) or group[what] < 0:
            raise ConfigError(what, group[what], "must be a finite number >= 0")
    if group["momentum"] >= 1:
        raise ConfigError("momentum", group["momentum"], "must be in [0, 1) (SGD's momentum; 0.9 is usual)")
    betas = group["betas"]
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2 and all(_real(b) and 0 <= b < 1 for b in betas)):
        raise ConfigError("betas", tuple(betas) if isinstance(betas, (tuple, list)) else betas,
                          "must be two numbers in [0, 1), e.g. (0.9, 0.999)")
    if not isinstance(group["nesterov"], bool):
        raise ConfigError("nesterov", group["nesterov"], "must be True or False")
    if group["nesterov"] and group["momentum"] == 0:
        raise ConfigError("nesterov", True, "Nesterov momentum requires momentum > 0")
    if group["nesterov"] and graft.adam:
        raise ConfigError("nesterov", True, "with graft='adamw' the momentum is betas[0]; use nesterov=False")


def _is_scalar_tensor(value) -> bool:
    import torch

    return isinstance(value, torch.Tensor) and value.numel() == 1 and bool(torch.isfinite(value).all())


def check_arguments(*, kl_clip, split, planned: bool, max_skipped_steps) -> None:
    """The constructor's own arguments (``planned``: a plan was given)."""
    if kl_clip is not None and not (_real(kl_clip) and kl_clip > 0):
        raise ConfigError("kl_clip", kl_clip, "must be > 0 (or None to disable)")
    if split is not None and (planned or isinstance(split, bool) or not isinstance(split, int) or split < 1):
        raise ConfigError("split", split, "pass an integer >= 1 and no plan (a plan carries its own splits)")
    if max_skipped_steps is not None and (isinstance(max_skipped_steps, bool) or not isinstance(max_skipped_steps, int)
                                          or max_skipped_steps < 1):
        raise ConfigError("max_skipped_steps", max_skipped_steps, "must be an integer >= 1 (or None)")
