"""Resolve a ``pkg.module:attribute`` spec, for model and data factories alike."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from thor_planner.utils.errors import UserError


def import_object(spec: str, what: str) -> Any:
    """Import ``module`` and return ``attribute`` for ``spec`` written as ``'module:attribute'``.

    ``what`` names the object in messages (``"model factory"`` or ``"data factory"``). The attribute
    may be dotted (``'pkg.mod:Class.method'``). Every failure raises :class:`UserError`.
    """
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise UserError(f"Invalid {what} '{spec}': write it as 'pkg.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any failure in user code is a user error here
        raise UserError(
            f"Cannot import module '{module_name}' for {what} '{spec}': {exc}"
        ) from exc
    obj: Any = module
    owner = f"module '{module_name}'"
    done: list[str] = []
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise UserError(
                f"{what.capitalize()} '{spec}' not found: {owner} has no attribute '{part}'"
            )
        obj = getattr(obj, part)
        done.append(part)
        owner = f"'{module_name}:{'.'.join(done)}'"
    return obj


def accepted_kwargs(fn: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``kwargs`` that ``fn`` accepts as keyword arguments (all of them if ``fn``
    takes ``**kwargs``; none if its signature cannot be read)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return dict(kwargs)
    names = {
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return {k: v for k, v in kwargs.items() if k in names}
