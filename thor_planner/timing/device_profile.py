"""Device profiles: inversion timings of one device, measured once, for planning any model offline.

``thor-plan device-profile`` measures every backend worth trying on the device (accuracy-checked
first, see :mod:`backend_select`) over block sizes (1, 16, 32, … up to a cap) and batch counts
(1, 4, 16, … blocks), within a time budget per (backend, size) that may stretch to 4× to reach one
batch of at least :data:`MIN_STACK_BYTES` (so large batches are measured, not extrapolated), plus
the cost of grouping factors into per-size stacks. The file stores the raw medians and the fitted :class:`costmodel.CostModel`
parameters; ``thor-plan profile --device-profile FILE`` then predicts every candidate's
whole-network refresh time instead of timing it.

File (``schema_version`` 1)::

    {"schema_version": 1, "kind": "thor-plan device profile", "tool_version": "...", "created": "...",
     "device": {"type": "cpu|cuda", "name": "...", "torch": "...", "cuda": null, "threads": 2, ...},
     "damping": 0.03, "sizes": [1, 16, ...], "counts": [1, 4, ...],
     "grouping": {"per_factor_s": ..., "per_row_s": ..., "per_byte_s": ..., "per_large_byte_s": ...},
     "backends": {"torch-cholesky": {"16": {"counts": [...], "seconds": [...],
                                            "fixed_s": ..., "per_block_s": ...}, ...}, ...},
     "accuracy": {...}, "excluded": [...], "pruned": [...], "wall_seconds": ...}

:func:`load_device_profile` validates every field and names the offending one
(``Invalid device profile field backends.torch-inv.64.per_block_s=-1.0: must be a number >= 0``).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from thor_planner.version import __version__
from thor_planner.utils.atomic import atomic_write_text
from thor_planner.timing.backend_choice import Selection, check_damped_accuracy, choose_backends, measured_timer
from thor_planner.timing.device import device_info as describe_device
from thor_planner.timing.costmodel import CellFit, CostModel, GroupingCost, fit_linear, grouping_features, nonnegative_lstsq
from thor_planner.utils.errors import UserError
from thor_planner.utils.fields import FieldReader
from thor_planner.partition import BlockGroups, group_by_size, partition

SCHEMA_VERSION = 1
KIND = "thor-plan device profile"
DEFAULT_COUNTS = (1, 4, 16, 64, 256, 1024, 4096)
MEMORY_CAP = {"cpu": 2 * 2**30, "cuda": 8 * 2**30}  # bytes of one stack (≈ 4 live copies while inverting)
MIN_STACK_BYTES = 64 * 2**20
GROUPING_FIELDS = tuple(f.name for f in fields(GroupingCost))


def default_sizes(device_type: str) -> list[int]:
    """1, then powers of two from 16 to 2048 on CPU (ResNet-50's largest default split) or 4096 on CUDA."""
    top = 4096 if device_type == "cuda" else 2048
    return [1] + [2**k for k in range(4, int(math.log2(top)) + 1)]


def device_slug(device: dict) -> str:
    """A file name for a device: ``intel-xeon-processor-2t`` (CPU, with threads) or ``nvidia-h100-80gb-hbm3``."""
    slug = re.sub(r"[^a-z0-9]+", "-", re.sub(r"\((r|tm)\)", "", str(device.get("name", "device")).lower())).strip("-")
    return f"{slug or 'device'}-{device.get('threads')}t" if device.get("type") == "cpu" else slug or "cuda"


class DeviceProfileError(UserError):
    """A device profile file that cannot be used."""


_fields = FieldReader("device profile", DeviceProfileError)
_fail, _get = _fields.fail, _fields.get


def _number(d: Any, key: str, path: str, minimum: float = 0.0, strict: bool = False) -> float:
    v = _get(d, key, path)
    where = f"{path}.{key}" if path else key
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < minimum \
            or (strict and v == minimum):
        _fail(where, v, f"must be a number {'>' if strict else '>='} {minimum:g}")
    return float(v)


def _int_list(d: Any, key: str, path: str) -> list[int]:
    v = _get(d, key, path)
    where = f"{path}.{key}" if path else key
    if not isinstance(v, list) or not v or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v) \
            or sorted(set(v)) != v:
        _fail(where, v, "must be a non-empty increasing list of integers >= 1")
    return v


@dataclass
class DeviceProfile:
    """A device's measured inversion costs (see the module docstring for the file)."""

    device: dict
    sizes: list[int]
    counts: list[int]
    backends: dict[str, dict[int, dict]]  # name → size → {"counts", "seconds", "fixed_s", "per_block_s"}
    #: other preconditioner families' refresh (one batched solve per size), family → size → fit
    solvers: dict[str, dict[int, dict]] = field(default_factory=dict)
    grouping: GroupingCost = GroupingCost()
    damping: float = 0.03
    excluded: list[dict] = field(default_factory=list)
    pruned: list[dict] = field(default_factory=list)
    accuracy: dict = field(default_factory=dict)
    wall_seconds: float = 0.0
    tool_version: str = __version__
    created: str = ""
    source: str | None = None  # the file it was loaded from

    def cost_model(self, family: str = "inverse") -> CostModel:
        """The fitted refresh cost: the inversion backends', or another family's solve (its name is
        then the only "backend")."""
        if family != "inverse":
            if family not in self.solvers:
                raise DeviceProfileError(f"Device profile '{self.source}' has no timings for the {family!r} family: "
                                         "re-create it with 'thor-plan device-profile' (it times every family)")
            return CostModel({family: _fits(self.solvers[family])}, self.grouping, {})
        fits = {name: _fits(cells) for name, cells in self.backends.items()}
        limits: dict[str, int] = {}
        for entry in [*self.excluded, *self.pruned]:
            name, size = entry.get("backend"), entry.get("size")
            if isinstance(name, str) and isinstance(size, int) and size > 1:
                limits[name] = min(size, limits.get(name, size))
        return CostModel(fits, self.grouping, limits)

    def to_dict(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION, "kind": KIND, "tool_version": self.tool_version,
            "created": self.created, "device": self.device, "damping": self.damping,
            "sizes": self.sizes, "counts": self.counts,
            "grouping": asdict(self.grouping),
            "backends": {n: {str(s): c for s, c in sorted(cells.items())} for n, cells in self.backends.items()},
            **({"solvers": {n: {str(s): c for s, c in sorted(cells.items())} for n, cells in self.solvers.items()}}
               if self.solvers else {}),
            "accuracy": self.accuracy, "excluded": self.excluded, "pruned": self.pruned,
            "wall_seconds": self.wall_seconds,
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def from_dict(cls, d: Any) -> "DeviceProfile":
        d = _fields.document(d, SCHEMA_VERSION)
        device = _get(d, "device", "")
        if not isinstance(device, dict):
            _fail("device", device, "must be an object")
        if _get(device, "type", "device") not in ("cpu", "cuda"):
            _fail("device.type", device["type"], "must be 'cpu' or 'cuda'")
        if not isinstance(_get(device, "name", "device"), str):
            _fail("device.name", device["name"], "must be a string")
        sizes, counts = _int_list(d, "sizes", ""), _int_list(d, "counts", "")
        grouping = _get(d, "grouping", "")
        group = GroupingCost(**{k: _number(grouping, k, "grouping") for k in GROUPING_FIELDS})
        raw = _get(d, "backends", "")
        if not isinstance(raw, dict) or not raw:
            _fail("backends", raw, "must be a non-empty object: backend name → block size → fit")
        backends = {name: _cells(cells, f"backends.{name}") for name, cells in raw.items()}
        solvers = d.get("solvers", {})
        if not isinstance(solvers, dict):
            _fail("solvers", solvers, "must be an object: family name → block size → fit")
        solvers = {name: _cells(cells, f"solvers.{name}") for name, cells in solvers.items()}
        lists = {}
        for key in ("excluded", "pruned"):
            lists[key] = d.get(key, [])
            if not isinstance(lists[key], list) or not all(isinstance(e, dict) for e in lists[key]):
                _fail(key, lists[key], "must be a list of objects")
        return cls(device=device, sizes=sizes, counts=counts, backends=backends, solvers=solvers, grouping=group,
                   damping=_number(d, "damping", "") if "damping" in d else 0.03,
                   excluded=lists["excluded"], pruned=lists["pruned"], accuracy=d.get("accuracy") or {},
                   wall_seconds=float(d.get("wall_seconds") or 0.0), tool_version=str(d.get("tool_version", "")),
                   created=str(d.get("created", "")))


def _fits(cells: dict[int, dict]) -> dict[int, CellFit]:
    return {size: CellFit(c["fixed_s"], c["per_block_s"], tuple(c["counts"]), tuple(c["seconds"]))
            for size, c in cells.items()}


def _cells(cells: Any, path: str) -> dict[int, dict]:
    """One backend's (or family's) fits by block size, validated."""
    if not isinstance(cells, dict):
        _fail(path, cells, "must be an object: block size → fit")
    out = {}
    for key, cell in cells.items():
        where = f"{path}.{key}"
        if not re.fullmatch(r"[1-9][0-9]*", key):
            _fail(where, cell if not isinstance(cell, dict) else key, "keys must be block sizes (integers >= 1)")
        cs, secs = _int_list(cell, "counts", where), _get(cell, "seconds", where)
        if not isinstance(secs, list) or len(secs) != len(cs) or not all(
                isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t > 0 for t in secs):
            _fail(f"{where}.seconds", secs, f"must be a list of {len(cs)} positive numbers, one per count")
        fixed, per_block = _number(cell, "fixed_s", where), _number(cell, "per_block_s", where)
        if fixed + per_block <= 0:
            _fail(f"{where}.per_block_s", cell["per_block_s"], "fixed_s + per_block_s must be > 0")
        out[int(key)] = {"counts": cs, "seconds": [float(t) for t in secs], "fixed_s": fixed, "per_block_s": per_block}
    return out


def load_device_profile(path: str | Path) -> DeviceProfile:
    """Read and validate a device profile; every problem is a one-line :class:`DeviceProfileError`."""
    p = Path(path)
    if not p.is_file():
        raise DeviceProfileError(f"Device profile '{p}' not found: create one with "
                                 f"'thor-plan device-profile --out {p}' on the target device")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DeviceProfileError(f"Device profile '{p}' is not readable JSON: {str(exc).splitlines()[0]}") from None
    profile = DeviceProfile.from_dict(data)
    profile.source = str(p)
    return profile


def _grouping_cost(device: torch.device, budget_s: float, dim: int = 2048) -> GroupingCost:
    """Fit :func:`group_by_size`'s cost (see :mod:`costmodel`) from 16 factors of ``dim`` (2048: 256 MB,
    beyond the caches) and 512 factors of 64, at splits giving narrow rows, small and large stacks."""
    from thor_planner.timing.candidates import TimingConfig, measure

    config = TimingConfig(budget_s=budget_s, min_repeats=3, max_repeats=9)
    big = [torch.ones(dim, dim, device=device) for _ in range(16)]
    small = [torch.ones(64, 64, device=device) for _ in range(512)]
    rows, targets = [], []
    for factors, split in ((big, dim // 4), (big, 64), (big, 4), (big, 1), (small, 16), (small, 1)):
        parts = [partition(f.shape[0], split) for f in factors]
        counts: dict[int, int] = {}
        for part in parts:
            for size, count in part.size_counts().items():
                counts[size] = counts.get(size, 0) + count
        rows.append(grouping_features(len(factors), counts))
        targets.append(statistics.median(measure(lambda: group_by_size(factors, parts), device, config)))
    return GroupingCost(*nonnegative_lstsq(rows, targets))


def _solver_timer(solve: Callable, device: torch.device, damping: float, budget_s: float):
    """A timer of a family's ``solve`` on one synthetic stack of ``count`` blocks of ``size``."""
    from thor_planner.timing.backend_choice import timing_stack
    from thor_planner.timing.candidates import TimingConfig, measure
    from thor_planner.utils.damping import factor_shift

    config = TimingConfig(budget_s=budget_s, min_repeats=3, max_repeats=7, warmup=1)

    def timer(_name: str, size: int, count: int) -> float:
        groups = BlockGroups({size: timing_stack(size, count, device)}, [[(size, 0, count)]])
        return statistics.median(measure(lambda: solve(groups, factor_shift(damping)), device, config))

    return timer


def _measure_cell(timer, name: str, size: int, counts: Sequence[int], budget_s: float, mem_cap: float) -> dict:
    """Median seconds at growing counts while the cell's budget allows (up to 4× the budget until
    one batch of :data:`MIN_STACK_BYTES` is measured); fitted."""
    done_c: list[int] = []
    done_t: list[float] = []
    spent = 0.0
    for count in counts:
        stack_bytes = count * size * size * 4
        if stack_bytes * 4 > mem_cap:
            break
        if done_t:
            cost = 4 * done_t[-1] / done_c[-1] * count  # warm-up + three repeats
            big_enough = done_c[-1] * size * size * 4 >= MIN_STACK_BYTES
            if spent + cost > (budget_s if big_enough else 4 * budget_s):
                break
        start = time.perf_counter()
        done_t.append(timer(name, size, count))
        done_c.append(count)
        spent += time.perf_counter() - start
    fixed, per_block = fit_linear(done_c, done_t)
    return {"counts": done_c, "seconds": done_t, "fixed_s": fixed, "per_block_s": per_block}


def measure_device_profile(
    device: torch.device,
    *,
    sizes: Sequence[int] | None = None,
    backends: Sequence[str] | None = None,
    counts: Sequence[int] = DEFAULT_COUNTS,
    cell_budget_s: float = 1.0,
    damping: float = 0.03,
    device_info: dict | None = None,
    grouping_factor_dim: int = 2048,
    progress: Callable[[int], None] | None = None,
    solvers: dict[str, Callable] | None = None,
) -> DeviceProfile:
    """Measure a device profile. The accuracy check and pruning of :func:`backend_select.choose_backends`
    decide which backends are measured at each size (its timer call is where each cell is measured).
    ``solvers`` (family name → ``solve(groups, shift)``) are measured at every size too."""
    from thor_planner.inversion.extra import device_backends

    start = time.perf_counter()
    sizes = list(sizes or default_sizes(device.type))
    names = list(backends or device_backends(device.type))
    cells: dict[str, dict[int, dict]] = {n: {} for n in names}
    timer = measured_timer(device, damping=damping, budget_s=min(0.2, cell_budget_s / 4))
    mem_cap = MEMORY_CAP.get(device.type, MEMORY_CAP["cpu"])

    def cell_timer(name: str, size: int, _sample: int) -> float:
        cell = _measure_cell(timer, name, size, counts, cell_budget_s, mem_cap)
        cells[name][size] = cell
        return cell["fixed_s"] + cell["per_block_s"]  # one block: what pruning extrapolates (∝ s³)

    selection: Selection = choose_backends({s: 1 for s in sizes}, names, device, timer=cell_timer,
                                           progress=progress, prune_seconds=cell_budget_s,
                                           accuracy=lambda ns, s: check_damped_accuracy(ns, s, device, damping=damping))
    for name in names:  # size 1 and single-accurate-backend sizes were not timed by the selection
        for size in sizes:
            accurate_here = not any(e["backend"] == name and e["size"] == size for e in selection.excluded)
            pruned_here = any(p["backend"] == name and p["size"] <= size for p in selection.pruned)
            if size not in cells[name] and accurate_here and not pruned_here:
                cells[name][size] = _measure_cell(timer, name, size, counts, cell_budget_s, mem_cap)
    grouping = _grouping_cost(device, budget_s=min(0.5, cell_budget_s), dim=grouping_factor_dim)
    solved = {name: {size: _measure_cell(_solver_timer(solve, device, damping, min(0.2, cell_budget_s / 4)), name,
                                         size, counts, cell_budget_s, mem_cap) for size in sizes}
              for name, solve in (solvers or {}).items()}

    return DeviceProfile(
        device=device_info or {k: v for k, v in describe_device(device, "auto").items() if k != "backend"},
        sizes=sizes, counts=list(counts), backends={n: c for n, c in cells.items() if c}, solvers=solved,
        grouping=grouping,
        damping=damping, excluded=selection.excluded, pruned=selection.pruned,
        accuracy=selection.device_fields()["accuracy"], wall_seconds=time.perf_counter() - start,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
