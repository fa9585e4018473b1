"""Writing a profile folder: everything is rendered in memory first, then each file atomically."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import torch

from thor_planner.utils.atomic import atomic_write_bytes, atomic_write_text
from thor_planner.capture.collector import CapturedFactors
from thor_planner.utils.errors import UserError
from thor_planner.planning.measurements import Measurements
from thor_planner.planning.plan import Plan

PLAN_JSON = "plan.json"
REPORT_HTML = "report.html"
FACTORS_PT = "factors.pt"


def check_writable(folder: str | Path) -> Path:
    """Create ``folder`` if needed and make sure files can be written there (before measuring)."""
    folder = Path(folder)
    if folder.is_file():
        raise UserError(f"Cannot write to output folder '{folder}': it is a file; choose a folder with --out")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".thor-plan-check-"):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UserError(f"Cannot write to output folder '{folder}' ({reason}): choose a writable folder with --out") from None
    return folder


def _render(plan: Plan, m: Measurements) -> dict[str, str]:
    from thor_planner.report.html import build_report

    return {PLAN_JSON: plan.to_json(), REPORT_HTML: build_report(plan, m.losses, m.all_timings())}


def write_plan_and_report(folder: str | Path, plan: Plan, m: Measurements) -> None:
    for name, text in _render(plan, m).items():
        atomic_write_text(Path(folder) / name, text)


def write_profile(folder: str | Path, m: Measurements, plan: Plan, captured: CapturedFactors | None = None) -> None:
    """Write the CSVs, plan.json, report.html (and factors.pt when ``captured`` is given)."""
    folder = Path(folder)
    files: dict[str, str | bytes] = {**m.csv_texts(), **_render(plan, m)}
    if captured is not None:
        buf = io.BytesIO()
        torch.save({"a": {k: v.cpu() for k, v in captured.a.items()},
                    "g": {k: v.cpu() for k, v in captured.g.items()}}, buf)
        files[FACTORS_PT] = buf.getvalue()
    for name, content in files.items():
        if isinstance(content, bytes):
            atomic_write_bytes(folder / name, content)
        else:
            atomic_write_text(folder / name, content)
