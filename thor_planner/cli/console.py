"""Terminal output: rich progress bars and one-line errors."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

from thor_planner.utils.errors import ConfigError, UserError
from thor_planner.utils.progress import Progress

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


class BarProgress(Progress):
    """One rich progress bar per stage; remembers each stage's wall time."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, total: int) -> Iterator[Callable[..., None]]:
        start = time.perf_counter()
        with RichProgress(TextColumn("[bold]{task.description:<18}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), console=err_console, transient=False,
                          disable=not err_console.is_terminal) as bar:
            task = bar.add_task(name, total=total)
            yield lambda *args, **kwargs: bar.advance(task)
        self.seconds[name] = time.perf_counter() - start
        if not err_console.is_terminal:
            err_console.print(f"{name}: {self.seconds[name]:.1f} s")

    def note(self, message: str) -> None:
        err_console.print(message)


def fail(message: str) -> None:
    """Print one line to stderr and exit with code 2."""
    err_console.print(f"[bold red]Error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (same clean-up), with the exit code 143 of a terminated process."""


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (so ``finally`` and ``except`` clean up)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def first_missing(folder: Path) -> Path | None:
    """The outermost of ``folder`` and its parents that does not exist yet (what creating it makes)."""
    missing = None
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing = path
    return missing


def flag(argument: str) -> str:
    """The command-line flag of a library argument (``batch_size`` → ``--batch-size``)."""
    return "--" + argument.replace("_", "-")


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a :class:`UserError` into a one-line message and exit code 2 (an invalid argument is named
    by its flag)."""
    try:
        yield
    except ConfigError as exc:
        fail(exc.render(flag(exc.argument)))
    except UserError as exc:
        fail(str(exc))
    except KeyboardInterrupt as exc:
        err_console.print("Interrupted: nothing was written.")
        sys.exit(143 if isinstance(exc, Terminated) else 130)
