"""The package's exceptions: one root, :class:`ThorPlanError`, so a caller can catch everything
thor-plan raises on purpose with one ``except``.

- :class:`UserError`: a mistake in the user's input (shown by the CLI as one line, exit code 2).
- :class:`ConfigError`: an invalid argument value; also a ``ValueError``, as ``torch.optim`` raises
  for bad hyperparameters. Its message names the library argument (``Invalid batches=0: …``); the
  CLI renames the argument to its flag (``Invalid --batches=0: …``) through :attr:`argument`.
"""

from __future__ import annotations


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
