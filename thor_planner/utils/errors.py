"""The package's exceptions: one root, :class:`ThorPlanError`, so a caller can catch everything
thor-plan raises on purpose with one ``except``; and the few facts about an exception that a
one-line message needs.

- :class:`UserError`: a mistake in the user's input (shown by the CLI as one line, exit code 2).
- :class:`ConfigError`: an invalid argument value; also a ``ValueError``, as ``torch.optim`` raises
  for bad hyperparameters. Its message names the library argument (``Invalid batches=0: …``); the
  CLI renames the argument to its flag (``Invalid --batches=0: …``) through :attr:`argument`.
"""

from __future__ import annotations

import re

#: Seeds every generator takes (torch's are 64-bit; the int64 range keeps numpy's and torch's agreeing).
SEED_MAX = 2**63 - 1


class ThorPlanError(Exception):
    """Root of every exception thor-plan raises on purpose."""


class UserError(ThorPlanError):
    """A mistake in the user's input: shown as one line, exit code 2."""


#: the value of a :class:`ConfigError` that is not worth printing (a schedule object, say)
UNSHOWN = object()


class ConfigError(UserError, ValueError):
    """``Invalid {argument}={value}: {requirement}`` for one library argument (``Invalid {argument}:
    {requirement}`` when the value is :data:`UNSHOWN`)."""

    def __init__(self, argument: str, value: object, requirement: str, *, quote: bool = False) -> None:
        self.argument, self.value, self.requirement, self.quote = argument, value, requirement, quote
        super().__init__(self.render(argument))

    def render(self, name: str) -> str:
        """The message with the argument called ``name`` (the CLI passes its flag)."""
        if self.value is UNSHOWN:
            return f"Invalid {name}: {self.requirement}"
        value = repr(self.value) if self.quote else self.value
        return f"Invalid {name}={value}: {self.requirement}"


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


def check_seed(seed: int, argument: str = "seed") -> None:
    """Refuse a seed no generator takes."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise ConfigError(argument, seed, f"must be an integer from 0 to {SEED_MAX}")
