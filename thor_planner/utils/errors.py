"""Errors the user can fix, and the few facts about an exception that a one-line message needs."""

from __future__ import annotations

import re

#: Seeds every generator takes (torch's are 64-bit; the int64 range keeps numpy's and torch's agreeing).
SEED_MAX = 2**63 - 1


class UserError(Exception):
    """A mistake in the user's input: shown as one line, exit code 2."""


def first_line(exc: BaseException) -> str:
    """The first informative line of an error's message (skipping torch's 'Error(s) in loading'
    header), or its type's name when it has none."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("Error(s) in loading")] or lines
    return lines[0] if lines else type(exc).__name__


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says an allocation failed (host or device memory)."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in str(exc) or "out of memory" in str(exc))


def memory_detail(exc: BaseException) -> str:
    """What a failed allocation asked for (``an allocation of 80 GB failed``), else its first line."""
    text = str(exc)
    if found := re.search(r"allocate (\d+) bytes", text):
        return f"an allocation of {int(found.group(1)) / 1e9:.3g} GB failed"
    if found := re.search(r"[Tt]ried to allocate ([\d.]+ ?[KMGT]i?B)", text):
        return f"an allocation of {found.group(1)} failed"
    return first_line(exc)


def check_seed(seed: int, option: str = "--seed") -> None:
    if not 0 <= seed <= SEED_MAX:
        raise UserError(f"Invalid {option}={seed}: must be an integer from 0 to {SEED_MAX}")
