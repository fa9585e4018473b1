"""Atomic file writes: write a temporary file beside the target, then rename it into place; and the
check, before any work, that a file can be written there."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from thor_planner.utils.errors import UserError


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def check_file_target(path: str | Path, option: str, example: str, *, make_parents: bool = False) -> None:
    """Refuse, before any work, a file ``path`` that cannot be written: a folder (``example`` names a
    file to put in it), a parent folder that is missing (unless ``make_parents``) or a file, or a
    folder that refuses new files."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"Cannot write {option} '{path}': it is a folder; pass a file name such as '{path / example}'")
    parent = next((p for p in path.parents if p.exists()), Path("."))
    if not make_parents and parent != path.parent:
        raise UserError(f"Cannot write {option} '{path}': folder '{path.parent}' does not exist")
    if not parent.is_dir():
        raise UserError(f"Cannot write {option} '{path}': '{parent}' is a file, not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".thor-plan-check-"):
            pass
    except OSError as exc:
        raise UserError(f"Cannot write {option} '{path}' ({exc.strerror or exc}): choose another {option}") from None
