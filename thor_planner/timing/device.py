"""The device a profile runs on: resolving ``--device`` and describing it (the plan's and the
device profile's ``device`` section)."""

from __future__ import annotations

import os
import platform

import torch

from thor_planner.utils.errors import UserError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("CUDA was asked for (--device cuda) but torch sees no CUDA device: "
                        "use --device cpu, or install a CUDA build of torch on a GPU machine")
    return torch.device(name)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: torch.device, backend: str) -> dict:
    cuda = device.type == "cuda"
    return {
        "type": device.type,
        "name": torch.cuda.get_device_name(device) if cuda else cpu_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "backend": backend,
        "dtype": "float32",
    }
