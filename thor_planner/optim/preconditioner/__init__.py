"""Preconditioner families behind one seam (:mod:`.base`): the registry :data:`FAMILIES`, the
Kronecker-inverse family (:mod:`.inverse`, THOR's) and the Kronecker-eigenbasis family
(:mod:`.eigen`, Adam in the eigenbasis of the A and G blocks). Registering a family is one class and one
:func:`register_family` call; ``THOR(..., family=NAME)``, the plan's ``family`` and every list of
families read the registry.

Imports the inversion backends, the partition and :mod:`thor_planner.optim.blocks`; must not import
the rest of the runtime (:mod:`thor_planner.optim.thor` builds on it, not the other way round).
"""

from __future__ import annotations

from thor_planner.optim.preconditioner.base import Family, LayerPreconditioner
from thor_planner.optim.preconditioner.eigen import EigenFamily
from thor_planner.optim.preconditioner.inverse import InverseFamily
from thor_planner.utils.errors import ConfigError

FAMILIES: dict[str, type[Family]] = {}


def register_family(cls: type[Family]) -> type[Family]:
    """Add a :class:`Family` subclass to :data:`FAMILIES` under its ``name``; returns it."""
    if not getattr(cls, "name", "") or cls.name in FAMILIES:
        raise ValueError(f"Invalid family name={getattr(cls, 'name', '')!r}: must be a new, non-empty name")
    FAMILIES[cls.name] = cls
    return cls


register_family(InverseFamily)
register_family(EigenFamily)


def family_class(name: str) -> type[Family]:
    """The registered family called ``name``."""
    if name not in FAMILIES:
        raise ConfigError("family", name, f"use {' or '.join(repr(n) for n in FAMILIES)}", quote=True)
    return FAMILIES[name]


__all__ = ["FAMILIES", "EigenFamily", "Family", "InverseFamily", "LayerPreconditioner", "family_class",
           "register_family"]
