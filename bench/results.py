"""Each benchmark owns one section of bench/RESULTS.md, replaced in place when it runs again, and
its figures as bench/results/<name>.json.

With ``THOR_BENCH_OUT`` set (the GPU suite, ``bench/gpu_suite.py``), both go to that folder instead
(``$THOR_BENCH_OUT/RESULTS.md``, ``$THOR_BENCH_OUT/results/``), so a run on a borrowed machine or a
rehearsal leaves the repository's files alone; ``THOR_BENCH_REHEARSAL=1`` marks every section and
JSON written as a rehearsal (tiny sizes, not results).
"""

from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "RESULTS.md"
OUT_ENV, REHEARSAL_ENV = "THOR_BENCH_OUT", "THOR_BENCH_REHEARSAL"
REHEARSAL_NOTE = ("**Rehearsal on the CPU (bench/gpu_suite.py --rehearse): tiny sizes that prove the stage "
                  "runs and writes its files; not results.**")


def results_root() -> Path:
    """The folder holding RESULTS.md and results/: bench/, or ``$THOR_BENCH_OUT``."""
    out = os.environ.get(OUT_ENV)
    return Path(out) if out else BENCH


def results_dir() -> Path:
    return results_root() / "results"


def rehearsal() -> bool:
    return os.environ.get(REHEARSAL_ENV) == "1"


def machine_line() -> str:
    from thor_planner.timing.device import cpu_name

    dev = f"CUDA {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no GPU"
    return (f"{cpu_name()}, {torch.get_num_threads()} torch threads, {dev}; torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def device_slug() -> str:
    """This machine's device as file names carry it (``nvidia-h200``, ``amd-epyc-2t``)."""
    from thor_planner.timing.device import device_info, resolve_device
    from thor_planner.timing.device_profile import device_slug as slug

    return slug(device_info(resolve_device("auto"), "auto"))


def device_name() -> str:
    """The device's own name: the GPU's (``NVIDIA H200``) or the CPU's."""
    from thor_planner.timing.device import cpu_name

    return torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_name()


def write_section(name: str, body: str, echo: bool = True) -> None:
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    path = results_root() / "RESULTS.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    if rehearsal():
        body = REHEARSAL_NOTE + "\n\n" + body
    text = path.read_text() if path.exists() else "# Benchmark results\n\nEach section is written by the script it names.\n"
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
    if echo:
        print(body)


def write_json(name: str, data: dict) -> Path:
    """``results/<name>.json`` (written atomically), with the time it was written and, under the
    GPU suite's rehearsal, ``"rehearsal": true``."""
    from thor_planner.utils.atomic import atomic_write_text

    import datetime as _dt

    path = results_dir() / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **({"rehearsal": True} if rehearsal() else {}), **data}
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")
    return path
