"""Progress reporting for long work: the library calls a :class:`Progress`; the CLI shows bars."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Progress:
    """Silent by default. ``stage(name, total)`` yields a callable that advances by one."""

    @contextmanager
    def stage(self, name: str, total: int) -> Iterator[Callable[..., None]]:
        yield lambda *args, **kwargs: None

    def note(self, message: str) -> None:
        """A one-line remark about the work (shown by the CLI)."""
