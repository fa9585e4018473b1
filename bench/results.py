"""Each benchmark owns one section of bench/RESULTS.md, replaced in place when it runs again, and
its figures as bench/results/<name>.json."""

from __future__ import annotations

import json
import platform
import re
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine_line() -> str:
    from thor_planner.timing.device import cpu_name

    dev = f"CUDA {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no GPU"
    return (f"{cpu_name()}, {torch.get_num_threads()} torch threads, {dev}; torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def write_section(name: str, body: str) -> None:
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nEach section is written by the script it names.\n"
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)
    print(body)


def write_json(name: str, data: dict) -> Path:
    """``bench/results/<name>.json`` (written atomically), with the time it was written."""
    from thor_planner.utils.atomic import atomic_write_text

    import datetime as _dt

    path = RESULTS.with_name("results") / f"{name}.json"
    path.parent.mkdir(exist_ok=True)
    data = {"written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **data}
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")
    return path
