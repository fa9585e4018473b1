"""Errors the user can fix."""


class UserError(Exception):
    """A mistake in the user's input: shown as one line, exit code 2."""
