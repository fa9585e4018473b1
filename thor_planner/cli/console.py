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
from rich.table import Table

from thor_planner.utils.errors import ConfigError, UserError, memory_detail, out_of_memory
from thor_planner.utils.progress import Progress

#: Where runs write by default: ignored by git, apart from the committed examples under profiles/.
RUNS = Path("runs")

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


def print_table(where: Console, columns: list[str], rows: list[list[str]], title: str | None = None,
                right: int = 1) -> None:
    """A table whose cells are printed whole: rich's box drawing on a terminal wide enough for it,
    else (piped, redirected or a narrow terminal) plain aligned text, one line per row, columns two
    spaces apart (for grep and cut). Columns from ``right`` on are right-aligned (numbers)."""
    widths = [max([len(name)] + [len(row[i]) for row in rows]) for i, name in enumerate(columns)]
    if where.is_terminal and sum(widths) + 3 * len(widths) + 1 <= where.width:
        table = Table(title=title)
        for i, name in enumerate(columns):
            table.add_column(name, justify="right" if i >= right else "left", no_wrap=True)
        for row in rows:
            table.add_row(*(escape(cell) for cell in row))
        where.print(table)
        return

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i >= right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    for text in ([title] if title else []) + [line(columns)] + [line(row) for row in rows]:
        where.out(text, highlight=False)


def path_value(text: str) -> Path:
    """The value of a path option or argument: an empty string is refused (as a path it would name
    the current folder, where nothing was meant to be read or written)."""
    if not str(text).strip():
        raise typer.BadParameter("an empty path: give a file or folder name")
    return Path(text)


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
def user_errors(memory_fix: str = "use smaller sizes") -> Iterator[None]:
    """Turn a :class:`UserError` (an invalid argument named by its flag), or running out of memory
    (``memory_fix`` says which sizes to lower), into a one-line message and exit code 2."""
    try:
        yield
    except ConfigError as exc:
        fail(exc.render(flag(exc.argument)))
    except UserError as exc:
        fail(str(exc))
    except (MemoryError, RuntimeError) as exc:
        if not out_of_memory(exc):
            raise
        fail(f"Out of memory ({memory_detail(exc)}): {memory_fix}")
    except KeyboardInterrupt as exc:
        err_console.print("Interrupted: nothing was written.")
        sys.exit(143 if isinstance(exc, Terminated) else 130)
