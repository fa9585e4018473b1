"""Terminal output: rich progress bars and one-line errors."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

from thor_planner.utils.errors import UserError
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


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a :class:`UserError` into a one-line message and exit code 2."""
    try:
        yield
    except UserError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        err_console.print("Interrupted: nothing was written.")
        sys.exit(130)
