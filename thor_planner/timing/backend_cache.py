"""The per-size backend choice, kept between runs so that it is not measured again every time.

One JSON file per key (device type and name, torch and CUDA versions, torch threads, tool version,
the backends tried, the damping shift and the accuracy criterion: anything that could change the
choice) under ``$THOR_PLAN_CACHE_DIR`` (tests point it at a temporary folder), else
``$XDG_CACHE_HOME/thor-plan``, else ``~/.cache/thor-plan``, in ``backends/``. Each entry is one
block size and sample count (``"256x120"``): the chosen backend, the measured seconds and the
exclusions there. Files are written atomically; an unreadable or mismatched file is ignored (and
replaced on the next write); a folder that cannot be written only means nothing is kept.
``thor-plan profile --refresh-backends`` measures again and overwrites.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from thor_planner.utils.atomic import atomic_write_text
from thor_planner.version import __version__

CACHE_ENV = "THOR_PLAN_CACHE_DIR"
SCHEMA = 1


def cache_dir() -> Path:
    """Where thor-plan keeps its user cache (see the module doc)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "thor-plan"


def cache_key(device: dict, names: list[str], shift: float, accuracy: str, work_cap: float) -> dict:
    """Everything the choice depends on besides the block size and sample count."""
    return {"type": device.get("type"), "name": device.get("name"), "torch": device.get("torch"),
            "cuda": device.get("cuda"), "threads": device.get("threads"), "tool_version": __version__,
            "backends": list(names), "shift": shift, "accuracy": accuracy, "work_cap": work_cap}


class BackendCache:
    """The entries of one key, read from and written to one file."""

    def __init__(self, key: dict, folder: Path | None = None) -> None:
        self.key = key
        text = json.dumps(key, sort_keys=True)
        slug = re.sub(r"[^a-z0-9]+", "-", f"{key.get('type')}-{key.get('name')}".lower()).strip("-")[:60]
        self.path = (folder or cache_dir()) / "backends" / f"{slug}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.json"

    def load(self) -> dict[str, dict]:
        """The stored entries, or none when the file is missing, unreadable or for another key."""
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or doc.get("key") != self.key:
            return {}
        entries = doc.get("entries")
        if not isinstance(entries, dict):
            return {}
        return {k: v for k, v in entries.items() if isinstance(v, dict) and isinstance(v.get("backend"), str)
                and isinstance(v.get("excluded", []), list)}

    def save(self, entries: dict[str, dict]) -> bool:
        """Write ``entries`` (merged over what is stored); False when the folder cannot be written."""
        merged = {**self.load(), **entries}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps({"schema": SCHEMA, "key": self.key, "entries": merged},
                                                    indent=1, sort_keys=True) + "\n")
        except OSError:
            return False
        return True


def entry_name(size: int, sample: int) -> str:
    return f"{size}x{sample}"
