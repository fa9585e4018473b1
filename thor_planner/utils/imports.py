"""The user's own code: resolving a ``pkg.module:attribute`` spec, and calling what it names (model
and data factories alike) so that whatever goes wrong there is one line naming it and the fix."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from thor_planner.utils.errors import UserError, first_line, out_of_memory


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


def _parameters(fn: Callable[..., Any]) -> list[inspect.Parameter] | None:
    try:
        return list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None


def accepted_kwargs(fn: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``kwargs`` that ``fn`` accepts as keyword arguments (all of them if ``fn``
    takes ``**kwargs``; none if its signature cannot be read)."""
    params = _parameters(fn)
    if params is None:
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return dict(kwargs)
    names = {
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return {k: v for k, v in kwargs.items() if k in names}


def user_code_error(subject: str, exc: BaseException, fix: str) -> UserError:
    """``{subject} raised {Type} ({first line of its message}): {fix}``."""
    first = first_line(exc)
    detail = f" ({first})" if first and first != type(exc).__name__ else ""
    return UserError(f"{subject} raised {type(exc).__name__}{detail}: {fix}")


def call_factory(fn: Any, spec: str, what: str, kwargs: dict[str, Any], fix: str) -> Any:
    """Call the user's factory ``fn`` (``spec``, a ``what`` such as ``"model factory"``) with
    ``kwargs``. Something that cannot be called, parameters without a default that thor-plan does not
    pass, and any exception it raises are each a one-line :class:`UserError` (``fix`` ends the
    last); running out of memory propagates, for the command to say which sizes to lower."""
    name = f"{what.capitalize()} '{spec}'"
    if not callable(fn):
        raise UserError(f"{name} is {type(fn).__name__}, not a function: point it at a function "
                        f"(or class) that takes no arguments")
    params = _parameters(fn) or []
    required = [p.name for p in params if p.default is inspect.Parameter.empty and p.name not in kwargs
                and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    if required:
        listed = ", ".join(f"'{n}'" for n in required)
        raise UserError(f"{name} needs {'an argument' if len(required) == 1 else 'arguments'} {listed} that "
                        "thor-plan does not pass: give it a default value, or point at a function that "
                        "takes no arguments")
    try:
        return fn(**kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure in user code is a user error here
        if out_of_memory(exc):
            raise
        raise user_code_error(name, exc, fix) from None
