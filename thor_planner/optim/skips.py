"""Steps skipped because their gradients hold NaN or Inf: counted, reported at the caller's line,
and turned into an error when they keep coming (a training run never fails silently).

Every skipped step warns with its step number and the running counts, attributed to the first
stack frame outside torch and thor_planner (the user's ``opt.step()`` or ``scaler.step(opt)``), so
Python's once-per-location filter does not hide the later ones. After ``limit`` consecutive skips
:class:`DivergedError` names the likely cause.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

_INTERNAL = (str(Path(__file__).resolve().parents[1]), str(Path(torch.__file__).resolve().parent))


class DivergedError(RuntimeError):
    """Too many consecutive steps had non-finite gradients: the run has diverged."""


def caller_frame():
    """The innermost frame outside torch and thor_planner (the user's call)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame = frame.f_back
    return frame


@dataclass
class SkipCounter:
    """Skipped-step counts: ``total`` since construction, ``consecutive`` now, ``longest`` run."""

    limit: int | None = 10
    total: int = 0
    consecutive: int = 0
    longest: int = 0

    def record(self, step: int, skipped: bool, hint: str) -> None:
        """Count one step; warn when it was skipped; raise after ``limit`` consecutive skips."""
        if not skipped:
            self.consecutive = 0
            return
        self.total += 1
        self.consecutive += 1
        self.longest = max(self.longest, self.consecutive)
        message = (f"THOR: step {step} skipped: gradients contain NaN or Inf "
                   f"({self.consecutive} in a row, {self.total} in all)")
        frame = caller_frame()
        if frame is None:
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        else:
            warnings.warn_explicit(message, RuntimeWarning, frame.f_code.co_filename, frame.f_lineno,
                                   module=frame.f_globals.get("__name__"), registry=frame.f_globals.setdefault(
                                       "__warningregistry__", {}))
        if self.limit is not None and self.consecutive >= self.limit:
            raise DivergedError(
                f"THOR: {self.consecutive} consecutive steps had NaN or Inf gradients (the last at step "
                f"{step}): training has diverged. {hint} (max_skipped_steps={self.limit} sets how many "
                "skipped steps in a row are tolerated)")

    def state(self) -> dict:
        return {"total": self.total, "consecutive": self.consecutive, "longest": self.longest}

    def load(self, d: dict) -> None:
        self.total, self.consecutive, self.longest = d["total"], d["consecutive"], d["longest"]
