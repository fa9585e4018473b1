"""The plan file (schema_version 1): the contract between planner and runtime.

Dataclasses mirror the JSON; :meth:`Plan.load` validates every field and names the offending one
(``Invalid plan field layers[3].a_split=0: must be an integer >= 1``); :meth:`Plan.save` writes
atomically. :meth:`Plan.check_model` refuses a plan whose layers do not match a model.

``device["backends"]`` maps each block size (string keys in JSON, e.g. ``{"2048": "torch-cholesky"}``)
to the inversion backend the planner timed there (accuracy-checked; ``--backend auto`` picks the
fastest per size); the runtime passes ``{int(k): v}`` to :func:`inversion.invert_groups`.
``device["excluded"]`` lists ``{"backend", "size", "error", "reason"}`` for backends that failed the
accuracy check; ``device["predicted_from"]`` is present when the timings were predicted from a device
profile rather than measured. Added since (absent from older plans): ``device["backends_cached"]``
(every block size's backend came from the user cache) and ``device["backend_sizes_measured"]``,
``device["accuracy"]["damping"/"shift"]`` (the check's blocks carry ``shift = sqrt(damping)`` on the
diagonal, as the runtime's), ``device["busy"]`` (other processes' CPU load while timing, see
:mod:`thor_planner.timing.busy`), ``crossover.interval``/``spans``/``tie_break`` (see
:class:`Crossover`), and for plans made for FSDP2 (``--fsdp N``) ``rule.fsdp``, ``rule.fsdp_gathered``
and, on the layers whose G split the shard constraint changed, ``g_split_unconstrained`` and
``g_loss_unconstrained`` (see :mod:`thor_planner.planning.planner`).

**Plans for other optimizers** (``optimizer``, absent from older plans: ``"thor"``). A plan made
with ``thor-plan profile --for shampoo`` or ``--for soap`` (a key of
:data:`thor_planner.targets.TARGETS`) has, instead of ``layers``, ``schedule`` and ``family``:
``block_size`` (the rule's block size, Distributed Shampoo's ``max_preconditioner_dim`` or SOAP's
``max_precond_dim``), ``refresh_interval`` (their ``precondition_frequency``) and ``parameters``
(one :class:`ParamPlan` per parameter). Its ``curves.inversion_seconds`` are the measured refresh
times. :meth:`Plan.require` refuses a plan made for another optimizer (THOR calls it);
:meth:`Plan.shampoo_kwargs` and :meth:`Plan.soap_kwargs` give a peer plan's constructor arguments.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from thor_planner.capture.layers import layer_kinds
from thor_planner.targets import TARGETS
from thor_planner.utils.atomic import atomic_write_text
from thor_planner.utils.damping import DEFAULT_DAMPING, factor_shift
from thor_planner.utils.errors import UserError
from thor_planner.utils.fields import FieldReader

SCHEMA_VERSION = 1
CURVES = ("loss_fraction", "inversion_seconds", "normalized_perf")


class PlanError(UserError):
    """A plan file that cannot be used."""


def _kinds() -> str:
    return ", ".join(repr(k) for k in layer_kinds())


_fields = FieldReader("plan", PlanError)
_fail, _get = _fields.fail, _fields.get


def _get_optional(d: dict, key: str, path: str) -> Any:
    if not isinstance(d, dict):
        _fail(path, d, "must be an object")
    return d.get(key)


def _int(d: dict, key: str, path: str, minimum: int = 0) -> int:
    v = _get(d, key, path)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        _fail(f"{path}.{key}".lstrip("."), v, f"must be an integer >= {minimum}")
    return v


def _num(d: dict, key: str, path: str, lo: float = -math.inf, hi: float = math.inf, optional=False):
    v = _get_optional(d, key, path) if optional else _get(d, key, path)
    if optional and v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        _fail(f"{path}.{key}".lstrip("."), v, f"must be a number in [{lo:g}, {hi:g}]")
    return float(v)


def _str(d: dict, key: str, path: str, optional=False) -> str | None:
    v = _get_optional(d, key, path) if optional else _get(d, key, path)
    if optional and v is None:
        return None
    if not isinstance(v, str):
        _fail(f"{path}.{key}".lstrip("."), v, "must be a string")
    return v


def _interval(co: dict) -> list[float] | None:
    v = _get_optional(co, "interval", "crossover")
    if v is None:
        return None
    if not (isinstance(v, list) and len(v) == 2 and all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in v) and v[0] <= v[1]):
        _fail("crossover.interval", v, "must be [low, high] with low <= high, or null")
    return [float(b) for b in v]


def _spans(co: dict, cands: list[int]) -> list[int] | None:
    v = _get_optional(co, "spans", "crossover")
    if v is None:
        return None
    if not (isinstance(v, list) and all(c in cands and not isinstance(c, bool) for c in v)):
        _fail("crossover.spans", v, "must be a list of candidates, or null")
    return list(v)


@dataclass(frozen=True, kw_only=True)
class LayerPlan:
    """One preconditioned layer: its factor dimensions, splits and trace thresholds."""

    name: str
    kind: str  # a registered layer kind (capture.layers.LAYER_TYPES): "conv2d", "linear", ...
    a_dim: int
    g_dim: int
    a_split: int
    g_split: int
    a_loss: float
    g_loss: float
    omega1: float = 0.01
    omega2: float = 0.001
    #: planned for FSDP (``rule.fsdp``): the G split the shard constraint replaced, and its loss
    #: (``None`` where the constraint changed nothing; absent from the file then)
    g_split_unconstrained: int | None = None
    g_loss_unconstrained: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in layer_kinds():
            raise ValueError(f"Invalid kind={self.kind!r}: must be a registered layer kind ({_kinds()})")
        for f in ("a_dim", "g_dim", "a_split", "g_split"):
            if getattr(self, f) < 1:
                raise ValueError(f"Invalid {f}={getattr(self, f)}: must be >= 1")
        if not 0 <= self.omega2 <= self.omega1:
            raise ValueError(f"Invalid omega2={self.omega2}: must be in [0, omega1]")

    @classmethod
    def from_dict(cls, d: dict, path: str) -> "LayerPlan":
        kind = _str(d, "kind", path)
        if kind not in layer_kinds():
            _fail(f"{path}.kind", kind, f"must be a registered layer kind ({_kinds()})")
        omega1 = _num(d, "omega1", path, 0.0, math.inf)
        omega2 = _num(d, "omega2", path, 0.0, omega1)
        a_dim, g_dim = _int(d, "a_dim", path, 1), _int(d, "g_dim", path, 1)
        for which, dim in (("a", a_dim), ("g", g_dim)):
            split = _int(d, f"{which}_split", path, 1)
            if split > dim:
                _fail(f"{path}.{which}_split", split, f"must be an integer in [1, {which}_dim={dim}]")
        unconstrained = None
        if d.get("g_split_unconstrained") is not None:
            unconstrained = _int(d, "g_split_unconstrained", path, 1)
        return cls(
            name=_str(d, "name", path), kind=kind, a_dim=a_dim, g_dim=g_dim,
            a_split=_int(d, "a_split", path, 1), g_split=_int(d, "g_split", path, 1),
            a_loss=_num(d, "a_loss", path, 0.0, 1.0), g_loss=_num(d, "g_loss", path, 0.0, 1.0),
            omega1=omega1, omega2=omega2, g_split_unconstrained=unconstrained,
            g_loss_unconstrained=_num(d, "g_loss_unconstrained", path, 0.0, 1.0, optional=True),
        )

    def to_dict(self) -> dict:
        """The layer's JSON object (the FSDP fields only where the constraint changed the split)."""
        d = asdict(self)
        for key in ("g_split_unconstrained", "g_loss_unconstrained"):
            if d[key] is None:
                del d[key]
        return d


@dataclass(frozen=True, kw_only=True)
class ParamPlan:
    """One parameter of a plan made for a peer optimizer: its shape, how the optimizer cuts it at
    the planned block size (``blocks``, e.g. ``6 × 128×128``) and the information loss there."""

    name: str
    shape: list[int]
    blocks: str
    loss: float

    @classmethod
    def from_dict(cls, d: dict, path: str) -> "ParamPlan":
        shape = _get(d, "shape", path)
        if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                                  for n in shape):
            _fail(f"{path}.shape", shape, "must be a list of integers >= 0")
        return cls(name=_str(d, "name", path), shape=list(shape), blocks=_str(d, "blocks", path),
                   loss=_num(d, "loss", path, 0.0, 1.0))


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """Damping and update-interval schedules in optimizer steps, and the trace thresholds.

    damping(t) = damping_init · damping_decay ** (t / damping_decay_steps)
    Factors (running averages with ``factor_decay``) are refreshed every ``factor_every`` steps.
    Inverse check points come every ``interval`` steps; the interval starts at
    ``interval_initial`` and is multiplied by ``interval_growth`` every ``interval_grow_every``
    steps, up to ``interval_max``.

    Factors default to every 10th step with decay 0.6 per capture (≈ 0.95 per step, the same
    averaging horizon as capturing every step with 0.95): capturing A (im2col + Gram per conv) is
    THOR's largest per-step cost, MindSpore's THOR computes the factors only on its update steps and
    kfac-pytorch's ImageNet recipe updates them every 10 steps; the default check points (10, 20,
    40, …, 1000 apart) all fall on capture steps. bench/step_overhead.py and bench/convergence.py
    measure the effect.
    """

    damping_init: float = DEFAULT_DAMPING
    damping_decay: float = 0.5
    damping_decay_steps: int = 10_000
    factor_every: int = 10
    factor_decay: float = 0.6
    interval_initial: int = 10
    interval_growth: float = 2.0
    interval_grow_every: int = 1_000
    interval_max: int = 1_000
    omega1: float = 0.01
    omega2: float = 0.001

    def __post_init__(self) -> None:
        if not self.damping_init > 0:
            raise ValueError(f"Invalid damping_init={self.damping_init}: must be > 0")
        if not 0 < self.damping_decay <= 1:
            raise ValueError(f"Invalid damping_decay={self.damping_decay}: must be in (0, 1]")
        if not 0 <= self.factor_decay < 1:
            raise ValueError(f"Invalid factor_decay={self.factor_decay}: must be in [0, 1)")
        if self.interval_growth < 1:
            raise ValueError(f"Invalid interval_growth={self.interval_growth}: must be >= 1")
        for f in ("damping_decay_steps", "factor_every", "interval_initial", "interval_grow_every"):
            if getattr(self, f) < 1:
                raise ValueError(f"Invalid {f}={getattr(self, f)}: must be >= 1")
        if self.interval_max < self.interval_initial:
            raise ValueError(f"Invalid interval_max={self.interval_max}: must be >= interval_initial")
        if self.omega1 < 0:
            raise ValueError(f"Invalid omega1={self.omega1}: must be >= 0")
        if not 0 <= self.omega2 <= self.omega1:
            raise ValueError(f"Invalid omega2={self.omega2}: must be in [0, omega1]")

    def damping(self, step: int) -> float:
        return self.damping_init * self.damping_decay ** (step / self.damping_decay_steps)

    def shift(self, step: int) -> float:
        """What the runtime adds to each factor's diagonal at ``step``: ``factor_shift(damping(step))``."""
        return factor_shift(self.damping(step))

    def interval(self, step: int) -> int:
        grown = self.interval_initial * self.interval_growth ** (step // self.interval_grow_every)
        return int(min(self.interval_max, grown))

    def to_dict(self) -> dict:
        return {
            "damping": {"init": self.damping_init, "decay": self.damping_decay,
                        "decay_steps": self.damping_decay_steps},
            "interval": {"factor_every": self.factor_every, "factor_decay": self.factor_decay,
                         "initial": self.interval_initial, "growth": self.interval_growth,
                         "grow_every": self.interval_grow_every, "max": self.interval_max},
            "omega1": self.omega1, "omega2": self.omega2,
        }

    @classmethod
    def from_dict(cls, d: dict, path: str = "schedule") -> "Schedule":
        dmp = _get(d, "damping", path)
        itv = _get(d, "interval", path)
        p, q = f"{path}.damping", f"{path}.interval"
        omega1 = _num(d, "omega1", path, 0.0)
        return cls(
            damping_init=_num(dmp, "init", p, 1e-12), damping_decay=_num(dmp, "decay", p, 1e-12, 1.0),
            damping_decay_steps=_int(dmp, "decay_steps", p, 1),
            factor_every=_int(itv, "factor_every", q, 1),
            factor_decay=_num(itv, "factor_decay", q, 0.0, 0.999999),
            interval_initial=_int(itv, "initial", q, 1), interval_growth=_num(itv, "growth", q, 1.0),
            interval_grow_every=_int(itv, "grow_every", q, 1),
            interval_max=_int(itv, "max", q, _int(itv, "initial", q, 1)),
            omega1=omega1, omega2=_num(d, "omega2", path, 0.0, omega1),
        )


@dataclass(frozen=True, kw_only=True)
class Crossover:
    """Where the curves cross and the global split the rule chose.

    ``x``, ``y``: the crossing of the median curves (``None`` when they do not cross), whatever the
    rule. ``split_dim``: the rule's global split. ``interval``: ``[low, high]`` in b, the crossings
    the timing spread allows; ``spans``: the candidates nearest to points of that interval;
    ``tie_break``: how the crossover rule chose among them when they are several (``None`` otherwise).
    The last three are ``None`` in plans written before they existed.
    """

    x: float | None
    y: float | None
    split_dim: int
    warning: str | None = None
    interval: list[float] | None = None
    spans: list[int] | None = None
    tie_break: str | None = None


def _candidates(d: dict) -> list[int]:
    cands = _get(d, "candidates", "")
    if not isinstance(cands, list) or not cands or not all(
        isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in cands
    ) or sorted(set(cands)) != cands:
        _fail("candidates", cands, "must be a non-empty increasing list of integers >= 1")
    return cands


def _curves_and_crossover(d: dict, cands: list[int]) -> Crossover:
    """Validate the rule and curves; the crossover."""
    _str(d["rule"], "name", "rule")
    _num(d["rule"], "loss_threshold", "rule", 0.0, 1.0)
    for key in CURVES:
        curve = _get(d["curves"], key, "curves")
        if not isinstance(curve, list) or len(curve) != len(cands) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in curve
        ):
            _fail(f"curves.{key}", curve, f"must be a list of {len(cands)} numbers, one per candidate")
    co = _get(d, "crossover", "")
    return Crossover(
        x=_num(co, "x", "crossover", optional=True), y=_num(co, "y", "crossover", optional=True),
        split_dim=_int(co, "split_dim", "crossover", 1), warning=_str(co, "warning", "crossover", optional=True),
        interval=_interval(co), spans=_spans(co, cands),
        tie_break=_str(co, "tie_break", "crossover", optional=True),
    )


def _unique_names(entries: list, key: str, what: str) -> None:
    first_index: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if entry.name in first_index:
            _fail(f"{key}[{i}].name", entry.name,
                  f"{what} names must be unique (also {key}[{first_index[entry.name]}].name)")
        first_index[entry.name] = i


def _thor_parts(d: dict) -> dict:
    """``layers``, ``schedule`` and ``family`` of a THOR plan."""
    raw_layers = _get(d, "layers", "")
    if not isinstance(raw_layers, list):
        _fail("layers", raw_layers, "must be a list")
    if not raw_layers:
        _fail("layers", raw_layers, "must list at least one layer (a plan preconditions something)")
    layers = [LayerPlan.from_dict(lp, f"layers[{i}]") for i, lp in enumerate(raw_layers)]
    _unique_names(layers, "layers", "layer")
    family = d.get("family", "inverse")
    if not isinstance(family, str) or not family:
        _fail("family", family, "must be the name of a preconditioner family, e.g. \"inverse\" or \"eigen\"")
    return {"layers": layers, "schedule": Schedule.from_dict(_get(d, "schedule", "")), "family": family}


def _peer_parts(d: dict) -> dict:
    """``block_size``, ``refresh_interval`` and ``parameters`` of a plan made for a peer optimizer."""
    raw = _get(d, "parameters", "")
    if not isinstance(raw, list) or not raw:
        _fail("parameters", raw, "must list at least one parameter")
    parameters = [ParamPlan.from_dict(pp, f"parameters[{i}]") for i, pp in enumerate(raw)]
    _unique_names(parameters, "parameters", "parameter")
    return {"block_size": _int(d, "block_size", "", 1), "refresh_interval": _int(d, "refresh_interval", "", 1),
            "parameters": parameters, "layers": [], "schedule": Schedule()}


@dataclass(kw_only=True)
class Plan:
    """A whole plan. ``layers`` are preconditioned; ``skipped`` lists layers left to SGD and why.

    A plan made for a peer optimizer (``optimizer`` other than ``"thor"``) has no ``layers``; its
    ``parameters``, ``block_size`` and ``refresh_interval`` say what to pass the optimizer, and its
    ``schedule`` (THOR's) is the default and not written.
    """

    model: dict
    device: dict
    capture: dict
    rule: dict
    candidates: list[int]
    curves: dict
    crossover: Crossover
    schedule: Schedule = field(default_factory=Schedule)
    layers: list[LayerPlan] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    tool_version: str = ""
    created: str = ""
    schema_version: int = SCHEMA_VERSION
    #: the preconditioner family the splits were planned for (its refresh cost was timed):
    #: ``"inverse"`` (THOR's block inverses; plans without the field) or ``"eigen"``
    family: str = "inverse"
    #: the optimizer the plan was made for (a key of :data:`thor_planner.targets.TARGETS`)
    optimizer: str = "thor"
    block_size: int | None = None
    refresh_interval: int | None = None
    parameters: list[ParamPlan] = field(default_factory=list)

    @property
    def split_dim(self) -> int:
        return self.crossover.split_dim

    @property
    def for_peer(self) -> bool:
        """Whether the plan was made for a peer optimizer (not THOR)."""
        return self.optimizer != "thor"

    def layer(self, name: str) -> LayerPlan:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def require(self, optimizer: str) -> None:
        """Refuse, in one line, a plan made for another optimizer than ``optimizer``."""
        if self.optimizer == optimizer:
            return
        made, wanted = TARGETS[self.optimizer], TARGETS[optimizer]
        use = ("build THOR(model, plan)" if made.name == "thor" else
               f"pass plan.{made.name}_kwargs() to {made.constructor}")
        raise PlanError(f"Plan was made for {made.title} (optimizer {made.name!r}), not {wanted.title}: "
                        f"{use}, or make one with 'thor-plan profile --for {wanted.name}'")

    def kwargs_for(self, optimizer: str, model=None) -> dict:
        """The constructor's keyword arguments this plan sets for ``optimizer`` (a peer target),
        e.g. ``{"max_preconditioner_dim": 512, "precondition_frequency": 40}`` for ``"shampoo"``.

        A plan made for another optimizer is refused (:meth:`require`); with ``model``, so is a plan
        whose parameters do not match it (:meth:`check_model`).
        """
        if optimizer not in TARGETS or not TARGETS[optimizer].peer:
            peers = ", ".join(repr(n) for n, t in TARGETS.items() if t.peer)
            raise ValueError(f"Invalid optimizer={optimizer!r}: must be one of {peers}")
        self.require(optimizer)
        if model is not None:
            self.check_model(model)
        target = TARGETS[optimizer]
        return {target.block_kwarg: self.block_size, target.interval_kwarg: self.refresh_interval}

    def shampoo_kwargs(self, model=None) -> dict:
        """``max_preconditioner_dim`` and ``precondition_frequency`` for ``DistributedShampoo``:
        ``DistributedShampoo(model.parameters(), **plan.shampoo_kwargs(), lr=...)``."""
        return self.kwargs_for("shampoo", model)

    def soap_kwargs(self, model=None) -> dict:
        """``max_precond_dim`` and ``precondition_frequency`` for heavyball's ``SOAP``:
        ``heavyball.SOAP(model.parameters(), **plan.soap_kwargs(), lr=...)``."""
        return self.kwargs_for("soap", model)

    def to_dict(self) -> dict:
        head = {"schema_version": self.schema_version, "tool_version": self.tool_version, "created": self.created,
                "optimizer": self.optimizer}
        body = {"model": self.model, "device": self.device, "capture": self.capture, "rule": self.rule,
                "candidates": list(self.candidates), "curves": self.curves, "crossover": asdict(self.crossover)}
        if self.for_peer:
            return {**head, **body, "block_size": self.block_size, "refresh_interval": self.refresh_interval,
                    "parameters": [asdict(pp) for pp in self.parameters], "skipped": self.skipped}
        return {**head, "family": self.family, **body, "schedule": self.schedule.to_dict(),
                "layers": [lp.to_dict() for lp in self.layers], "skipped": self.skipped}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save(self, path: str | Path) -> Path:
        """Write the plan as JSON atomically (a temporary file renamed into place)."""
        return atomic_write_text(path, self.to_json())

    @classmethod
    def from_dict(cls, d: Any) -> "Plan":
        d = _fields.document(d, SCHEMA_VERSION)
        for key in ("model", "device", "capture", "rule", "curves"):
            if not isinstance(_get(d, key, ""), dict):
                _fail(key, d[key], "must be an object")
        cands = _candidates(d)
        crossover = _curves_and_crossover(d, cands)
        optimizer = d.get("optimizer", "thor")
        if optimizer not in TARGETS:
            _fail("optimizer", optimizer, f"must be one of {', '.join(map(repr, TARGETS))}")
        parts = _peer_parts(d) if TARGETS[optimizer].peer else _thor_parts(d)
        skipped = d.get("skipped", [])
        if not isinstance(skipped, list):
            _fail("skipped", skipped, "must be a list")
        for i, entry in enumerate(skipped):
            _str(entry, "name", f"skipped[{i}]")
            _str(entry, "reason", f"skipped[{i}]")
        return cls(
            schema_version=SCHEMA_VERSION, tool_version=str(d.get("tool_version", "")),
            created=str(d.get("created", "")), model=d["model"], device=d["device"],
            capture=d["capture"], rule=d["rule"], candidates=cands, curves=d["curves"],
            crossover=crossover, skipped=skipped, optimizer=optimizer, **parts,
        )

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        p = Path(path)
        if p.is_dir():
            raise PlanError(f"Plan file '{p}' is a folder: pass the plan.json inside it ('{p / 'plan.json'}')")
        if not p.is_file():
            raise PlanError(f"Plan file '{p}' not found: pass the plan.json written by 'thor-plan profile'")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PlanError(f"Plan file '{p}' is not valid JSON ({exc}): re-create it with 'thor-plan plan'") from None
        except OSError as exc:
            raise PlanError(f"Cannot read plan file '{p}' ({exc.strerror or exc}): check its permissions") from None
        return cls.from_dict(data)

    def check_model(self, model) -> None:
        """Refuse a plan whose layers (a peer plan: parameters) do not match ``model`` (names, kinds,
        factor dimensions; a peer plan's parameter names and shapes)."""
        problems = self._peer_mismatches(model) if self.for_peer else self._layer_mismatches(model)
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise PlanError(f"Plan does not match the model ({len(problems)} mismatches): {shown}. "
                            "Profile this model again to make a plan for it")

    def _layer_mismatches(self, model) -> list[str]:
        from thor_planner.capture.collector import layer_specs  # late import: capture imports torch hooks machinery

        specs = {s.name: s for s in layer_specs(model)}
        problems = []
        for lp in self.layers:
            spec = specs.get(lp.name)
            if spec is None:
                problems.append(f"{lp.name}: not a Conv2d/Linear layer of the model")
                continue
            for what, planned, actual in (("kind", lp.kind, spec.kind), ("a_dim", lp.a_dim, spec.a_dim),
                                          ("g_dim", lp.g_dim, spec.g_dim)):
                if planned != actual:
                    problems.append(f"{lp.name}: plan {what}={planned}, model {what}={actual}")
        return problems

    def _peer_mismatches(self, model) -> list[str]:
        shapes = {n: list(p.shape) for n, p in model.named_parameters()}
        problems = []
        for pp in self.parameters:
            if pp.name not in shapes:
                problems.append(f"{pp.name}: not a parameter of the model")
            elif shapes[pp.name] != pp.shape:
                problems.append(f"{pp.name}: plan shape {pp.shape}, model shape {shapes[pp.name]}")
        return problems
