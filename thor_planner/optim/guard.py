"""The skip guard: a step whose gradients hold NaN or Inf changes nothing, is counted and reported,
and too many in a row raise :class:`DivergedError` (a training run never fails silently).

One :class:`SkipGuard` owns both ways of deciding:

- **on the host** (every step on the CPU; on CUDA the steps that capture factors or reach a check
  point, which synchronise anyway): the step is skipped before anything is touched, and each skip
  warns at once with its step number and the running counts;
- **on the device** (CUDA steps that neither capture nor check, so no host synchronisation): the
  finiteness flag stays a tensor that the update consumes (:mod:`.update` leaves every parameter and
  moment exactly as it was when it is false), and four counters on the device record
  ``[skipped, leading run, trailing run, longest run]`` since they were last read.

:meth:`SkipGuard.sync` folds the device counters into the host's counts (for ``stats()`` and
``state_dict()``) and keeps what it folded as *pending*; only :meth:`SkipGuard.report`, at the next
host-checked step, warns about pending skips and raises when a run of them reached the limit.
Reading the counts therefore never hides a divergence from the check that follows.

Warnings are attributed to the first stack frame outside torch and thor_planner (the user's
``opt.step()`` or ``scaler.step(opt)``), so Python's once-per-location filter does not hide the
later ones.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from thor_planner.utils.errors import ThorPlanError

_INTERNAL = (str(Path(__file__).resolve().parents[1]), str(Path(torch.__file__).resolve().parent))


class DivergedError(ThorPlanError, RuntimeError):
    """Too many consecutive steps had non-finite gradients: the run has diverged."""


def caller_frame():
    """The innermost frame outside torch and thor_planner (the user's call)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame = frame.f_back
    return frame


def warn_at_caller(message: str) -> None:
    frame = caller_frame()
    if frame is None:
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        return
    warnings.warn_explicit(message, RuntimeWarning, frame.f_code.co_filename, frame.f_lineno,
                           module=frame.f_globals.get("__name__"),
                           registry=frame.f_globals.setdefault("__warningregistry__", {}))


def finite_flag(grads: list[torch.Tensor]) -> torch.Tensor:
    """0-dim bool on the device: every gradient's L2 norm is finite (NaN/Inf propagate into it). With
    FSDP2's DTensor gradients the norms are reduced over the ranks, so every rank gets the same flag,
    returned as a plain tensor (what the update and the families' directions take)."""
    flag = torch.stack([n.float() for n in torch._foreach_norm(grads, 2)]).isfinite().all()
    return flag.full_tensor() if hasattr(flag, "full_tensor") else flag


def grads_finite(grads: list[torch.Tensor], flag: torch.Tensor) -> bool:
    """Exact host-side check: a non-finite norm is an Inf/NaN entry or an overflow of the sum."""
    if bool(flag):
        return True
    norms = torch.stack([n.float() for n in torch._foreach_norm(grads, 2)]).isfinite().tolist()
    return all(bool(torch.isfinite(g).all()) for g, ok in zip(grads, norms) if not ok)


@dataclass
class _Pending:
    """Device-decided skips folded into the counts but not yet reported."""

    skipped: int = 0
    first: int | None = None
    last: int = 0
    longest: int = 0  # the longest run of skips among them (counting the run they continued)


class SkipGuard:
    """Skipped-step counts (``total`` since construction, ``consecutive`` now, ``longest`` run) and
    the decision of each step. ``hint()`` says what to change when the run diverges."""

    def __init__(self, limit: int | None, hint: Callable[[], str]) -> None:
        self.limit, self.hint = limit, hint
        self.total = self.consecutive = self.longest = 0
        self._device: torch.Tensor | None = None  # [skipped, leading, trailing, longest] on the device
        self._device_first = self._device_steps = 0
        self._pending = _Pending()

    # -- one step ----------------------------------------------------------------------------------

    def check(self, grads: list[torch.Tensor], step: int, on_host: bool) -> tuple[bool, torch.Tensor | None]:
        """``(skip, ok)``: on the host, whether to skip the step (``ok`` None); on the device, never
        skip here but return the flag the update must honour."""
        if not grads:
            return False, None
        flag = finite_flag(grads)
        if not on_host:
            self._count_on_device(flag, step)
            return False, flag
        self.report(step)
        skipped = not grads_finite(grads, flag)
        self._record(step, skipped)
        return skipped, None

    def _record(self, step: int, skipped: bool) -> None:
        if not skipped:
            self.consecutive = 0
            return
        self.total += 1
        self.consecutive += 1
        self.longest = max(self.longest, self.consecutive)
        warn_at_caller(f"THOR: step {step} skipped: gradients contain NaN or Inf "
                       f"({self.consecutive} in a row, {self.total} in all)")
        if self.limit is not None and self.consecutive >= self.limit:
            raise self._diverged(self.consecutive, f"the last at step {step}")

    def _count_on_device(self, ok: torch.Tensor, step: int) -> None:
        if self._device is None:
            self._device = torch.zeros(4, dtype=torch.int64, device=ok.device)
            self._device_first, self._device_steps = step, 0
        c, bad = self._device, (~ok).long()
        c[0] += bad
        c[1] += bad * (c[1] == self._device_steps).long()
        c[2] = (c[2] + bad) * bad
        c[3] = torch.maximum(c[3], c[2])
        self._device_steps += 1

    # -- reading -----------------------------------------------------------------------------------

    def sync(self) -> None:
        """Fold the device counters into the counts; what they held stays pending for :meth:`report`."""
        if self._device is None:
            return
        skipped, lead, trail, longest = self._device.tolist()
        n, first = self._device_steps, self._device_first
        self._device = None
        run = max(longest, self.consecutive + lead)
        self.longest = max(self.longest, run)
        self.consecutive = self.consecutive + n if lead == n else trail
        self.total += skipped
        if skipped:
            p = self._pending
            p.skipped += skipped
            p.first = first if p.first is None else p.first
            p.last = first + n - 1
            p.longest = max(p.longest, run)

    def report(self, step: int) -> None:
        """Warn about the pending device-decided skips; raise when a run of them reached the limit."""
        self.sync()
        p, self._pending = self._pending, _Pending()
        if not p.skipped:
            return
        warn_at_caller(f"THOR: {p.skipped} of steps {p.first}-{p.last} skipped: gradients contain NaN or Inf "
                       f"({self.consecutive} in a row now, {self.total} in all)")
        if self.limit is not None and p.longest >= self.limit:
            raise self._diverged(p.longest, f"before step {step}")

    def _diverged(self, run: int, where: str) -> DivergedError:
        return DivergedError(
            f"THOR: {run} consecutive steps had NaN or Inf gradients ({where}): training has diverged. "
            f"{self.hint()} (max_skipped_steps={self.limit} sets how many skipped steps in a row are tolerated)")

    # -- checkpoints -------------------------------------------------------------------------------

    def state(self) -> dict:
        self.sync()
        return {"total": self.total, "consecutive": self.consecutive, "longest": self.longest}

    def load(self, d: dict) -> None:
        self.total, self.consecutive, self.longest = d["total"], d["consecutive"], d["longest"]
        self._device, self._pending = None, _Pending()
