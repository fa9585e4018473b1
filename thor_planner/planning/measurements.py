"""What a profile measured, as two CSV files that ``thor-plan plan --from`` re-plans from.

``losses.csv``: one row per factor (``layer, kind, factor, dim``) and one column per candidate; for a
profile made for a peer optimizer (the header's ``optimizer``, ``"thor"`` when absent), one row per
parameter (``parameter, shape``, the shape as ``128x384``).
``timings.csv``: one row per candidate (median, min, max seconds, repeats, blocks, GFLOP,
predicted) of the refresh of the preconditioner family the plan is made for (``meta["family"]``,
``inverse`` when absent), with that family's per-step costs at the candidate when they were measured
(``apply_s``: one step's directions; ``capture_s``: one factor step's Grams;
:mod:`thor_planner.profiling.step_cost`), then the rows of any family timed for comparison, each row
naming its ``family``; its first line is ``# thor-plan {json}`` with the provenance (model, device, capture,
the family, the measured training-step time and the skipped layers), which pandas skips as a comment.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from thor_planner.capture.layers import layer_kinds
from thor_planner.targets import TARGETS
from thor_planner.utils.atomic import atomic_write_text
from thor_planner.utils.errors import UserError

LOSSES_CSV = "losses.csv"
TIMINGS_CSV = "timings.csv"
META_PREFIX = "# thor-plan "
LOSS_COLUMNS = ["layer", "kind", "factor", "dim"]
TIMING_COLUMNS = ["candidate", "median_s", "min_s", "max_s", "repeats", "blocks", "gflop", "predicted"]
STEP_COST_COLUMNS = ["apply_s", "capture_s"]  # optional: absent in predicted and older profiles
PEER_LOSS_COLUMNS = ["parameter", "shape"]
META_OBJECTS = ("model", "device", "capture")  # provenance objects the timings.csv header must hold


def _whole(column: pd.Series, minimum: int) -> bool:
    """Every value of ``column`` is an integer >= ``minimum``."""
    values = pd.to_numeric(column, errors="coerce")
    return bool(values.notna().all() and (values >= minimum).all() and (values == values.round()).all())


def _as_int(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("inf")


def _check_complete_rows(path: Path, timings: pd.DataFrame) -> None:
    """Every timings row has every field, and the seconds are positive with min <= median <= max."""
    for i, row in enumerate(timings[TIMING_COLUMNS].itertuples(index=False)):
        values = row._asdict()
        lacking = [k for k, v in values.items() if v is None or (isinstance(v, float) and pd.isna(v))]
        if lacking:
            raise UserError(f"Line {i + 3} of '{path}' lacks {', '.join(lacking)}: re-create it with 'thor-plan profile'")
        secs = pd.to_numeric(pd.Series([values["min_s"], values["median_s"], values["max_s"]]), errors="coerce")
        if secs.isna().any() or not (0 < secs[0] <= secs[1] <= secs[2]):
            raise UserError(f"Line {i + 3} of '{path}' needs positive seconds with min_s <= median_s <= max_s: "
                            "re-create it with 'thor-plan profile'")


def _split_families(path: Path, timings: pd.DataFrame, family: str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The plan family's rows (files without a ``family`` column hold only those) and the others'."""
    if "family" not in timings.columns:
        return timings, None
    named = timings["family"].fillna(family)  # a row cut short names no family: it is checked as the plan's
    own = timings[named == family].drop(columns="family").reset_index(drop=True)
    others = timings[named != family].reset_index(drop=True)
    for name, rows in others.groupby("family"):
        if not (rows["candidate"].is_monotonic_increasing and rows["candidate"].is_unique):
            raise UserError(f"'{path}' needs increasing candidates for family {name!r}: re-create it with "
                            "'thor-plan profile'")
    return own, (others if not others.empty else None)


def _check_factor_rows(path: Path, losses: pd.DataFrame) -> None:
    """One 'a' and one 'g' row per layer, registered kinds, integer dims."""
    per_layer = losses.groupby("layer", sort=False)["factor"].apply(sorted)
    if not _whole(losses["dim"], 1) or not losses["kind"].isin(layer_kinds()).all() \
            or not all(f == ["a", "g"] for f in per_layer):
        raise UserError(f"'{path}' needs one 'a' and one 'g' row per layer, a registered kind "
                        f"({', '.join(layer_kinds())}) and integer dims >= 1: re-create it with 'thor-plan profile'")


def _check_peer_rows(path: Path, losses: pd.DataFrame) -> None:
    """One row per parameter, shapes written as ``128x384``."""
    shapes = losses["shape"].fillna("").astype(str)
    if not losses["parameter"].is_unique or not shapes.str.fullmatch(r"(\d+(x\d+)*)?").all():
        raise UserError(f"'{path}' needs one row per parameter and shapes such as 128x384: "
                        "re-create it with 'thor-plan profile'")


@dataclass
class Measurements:
    losses: pd.DataFrame
    timings: pd.DataFrame  # the plan family's refresh
    meta: dict
    compared: pd.DataFrame | None = None  # other families' rows (a ``family`` column), for the report

    @property
    def family(self) -> str:
        return str(self.meta.get("family", "inverse"))

    def all_timings(self) -> pd.DataFrame:
        """Every family's rows, each naming its ``family``."""
        own = self.timings.assign(family=self.family)
        return own if self.compared is None or self.compared.empty else pd.concat([own, self.compared],
                                                                                  ignore_index=True)

    @property
    def candidates(self) -> list[int]:
        return [int(c) for c in self.timings["candidate"]]

    @property
    def seconds(self) -> list[float]:
        return [float(s) for s in self.timings["median_s"]]

    @property
    def step_costs(self) -> list[tuple[float, float]] | None:
        """Per candidate, ``(apply_s, capture_s)`` of the plan's family; ``None`` where not measured."""
        if any(c not in self.timings.columns for c in STEP_COST_COLUMNS):
            return None
        return [(float(a), float(c)) for a, c in zip(self.timings["apply_s"], self.timings["capture_s"])]

    @property
    def optimizer(self) -> str:
        """The optimizer the measurements were made for (a key of :data:`thor_planner.targets.TARGETS`)."""
        return str(self.meta.get("optimizer", "thor"))

    def csv_texts(self) -> dict[str, str]:
        """The two files' contents (rendered before anything is written)."""
        losses = self.losses.to_csv(index=False, float_format="%.6g")
        timings = META_PREFIX + json.dumps(self.meta, sort_keys=True) + "\n"
        every = self.all_timings()
        columns = TIMING_COLUMNS + [c for c in STEP_COST_COLUMNS if c in every.columns] + ["family"]
        timings += every[columns].to_csv(index=False, float_format="%.6g")
        return {LOSSES_CSV: losses, TIMINGS_CSV: timings}

    def save(self, folder: str | Path) -> None:
        for name, text in self.csv_texts().items():
            atomic_write_text(Path(folder) / name, text)

    @classmethod
    def load(cls, folder: str | Path) -> "Measurements":
        folder = Path(folder)
        if folder.is_file():
            raise UserError(f"Profile folder '{folder}' is a file: pass the folder written by 'thor-plan profile' "
                            f"that holds it ('{folder.parent}')")
        if not folder.is_dir():
            raise UserError(f"Profile folder '{folder}' not found: pass a folder written by 'thor-plan profile'")
        paths = {name: folder / name for name in (LOSSES_CSV, TIMINGS_CSV)}
        missing = [n for n, p in paths.items() if not p.is_file()]
        if missing:
            raise UserError(f"Profile folder '{folder}' lacks {' and '.join(missing)}: "
                            "run 'thor-plan profile' to measure it first")
        meta, timings, losses = _read(folder, paths)
        optimizer = meta.get("optimizer", "thor")
        if optimizer not in TARGETS:
            raise UserError(f"'{paths[TIMINGS_CSV]}' header names optimizer {optimizer!r}, which this version of "
                            f"thor-plan does not plan for ({', '.join(TARGETS)})")
        loss_columns = PEER_LOSS_COLUMNS if TARGETS[optimizer].peer else LOSS_COLUMNS
        timings, compared = _split_families(paths[TIMINGS_CSV], timings, str(meta.get("family", "inverse")))
        for name, frame, cols in ((TIMINGS_CSV, timings, TIMING_COLUMNS), (LOSSES_CSV, losses, loss_columns)):
            lacking = [c for c in cols if c not in frame.columns]
            if lacking:
                raise UserError(f"'{folder / name}' lacks columns {', '.join(lacking)}: re-create it with 'thor-plan profile'")
        _check_complete_rows(paths[TIMINGS_CSV], timings)
        column = timings["candidate"]
        seconds = pd.to_numeric(timings["median_s"], errors="coerce")
        if not (_whole(column, 1) and column.is_monotonic_increasing and column.is_unique and (seconds > 0).all()):
            raise UserError(f"'{paths[TIMINGS_CSV]}' needs increasing integer candidates >= 1 and positive "
                            "median_s: re-create it with 'thor-plan profile'")
        cands = [str(int(c)) for c in timings["candidate"]]
        loss_cands = [c for c in losses.columns if c not in loss_columns]
        if sorted(loss_cands, key=_as_int) != cands or len(timings) == 0 or len(losses) == 0:
            raise UserError(f"'{folder}' has losses for candidates {','.join(loss_cands) or 'none'} but timings for "
                            f"{','.join(cands) or 'none'}: re-run 'thor-plan profile'")
        (_check_peer_rows if TARGETS[optimizer].peer else _check_factor_rows)(paths[LOSSES_CSV], losses)
        numeric = losses[cands].apply(pd.to_numeric, errors="coerce")
        if numeric.isna().any().any() or ((numeric < 0) | (numeric > 1)).any().any():
            raise UserError(f"'{folder / LOSSES_CSV}' holds losses outside [0, 1]: re-run 'thor-plan profile'")
        timings = _checked_step_costs(paths[TIMINGS_CSV], timings)
        timings["predicted"] = timings["predicted"].astype(bool)
        return cls(losses=losses, timings=timings, meta=meta, compared=compared)


def _checked_step_costs(path: Path, timings: pd.DataFrame) -> pd.DataFrame:
    """The plan family's per-step costs: positive on every row, or dropped where no row has them."""
    present = [c for c in STEP_COST_COLUMNS if c in timings.columns]
    if not present:
        return timings
    values = timings[present].apply(pd.to_numeric, errors="coerce")
    if len(present) == len(STEP_COST_COLUMNS) and (values > 0).all().all():
        timings[present] = values
        return timings
    if values.isna().all().all():
        return timings.drop(columns=present)
    raise UserError(f"'{path}' needs positive {' and '.join(STEP_COST_COLUMNS)} on every row of the plan's family, "
                    "or neither: re-create it with 'thor-plan profile'")


def _read(folder: Path, paths: dict[str, Path]) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """The header's provenance (checked for its objects and the step time), the timings and the losses."""
    text = paths[TIMINGS_CSV].read_text()
    first, _, rest = text.partition("\n")
    if not first.startswith(META_PREFIX):
        raise UserError(f"'{paths[TIMINGS_CSV]}' has no '{META_PREFIX.strip()}' header line: "
                        "re-create it with 'thor-plan profile'")
    try:
        meta = json.loads(first[len(META_PREFIX):])
        timings = pd.read_csv(io.StringIO(rest))
        losses = pd.read_csv(paths[LOSSES_CSV], dtype={"shape": str, "parameter": str})
    except (ValueError, pd.errors.ParserError) as exc:
        raise UserError(f"Cannot read the measurements in '{folder}': {str(exc).splitlines()[0]}") from None
    lacking = [k for k in META_OBJECTS if not isinstance(meta, dict) or not isinstance(meta.get(k), dict)]
    step = meta.get("step_seconds") if isinstance(meta, dict) else None
    offline = step is None and isinstance(meta, dict) and isinstance(meta.get("device"), dict) \
        and "predicted_from" in meta["device"]
    if not offline and (isinstance(step, bool) or not isinstance(step, (int, float)) or not step > 0):
        lacking.append("step_seconds")  # only a plan predicted from a device profile has none
    if lacking:
        raise UserError(f"'{paths[TIMINGS_CSV]}' header lacks {', '.join(lacking)}: "
                        "re-create it with 'thor-plan profile'")
    return meta, timings, losses
