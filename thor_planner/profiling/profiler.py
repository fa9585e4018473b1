"""``thor-plan profile``: capture factors, measure information loss and inversion time."""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass

import pandas as pd
import torch

from thor_planner.version import __version__
from thor_planner.capture.collector import CapturedFactors, capture_factors
from thor_planner.capture.layers import find_layers
from thor_planner.inputs.data import BatchSource, check_batches, load_batches
from thor_planner.optim.preconditioner import FAMILIES, family_class
from thor_planner.utils.errors import ConfigError, UserError, check_seed, out_of_memory
from thor_planner.utils.imports import user_code_error
from thor_planner.infoloss import loss_table
from thor_planner.timing.backend_choice import backend_cache_for, default_backend, network_counts, select_for_model
from thor_planner.timing.busy import BusyMonitor, watching
from thor_planner.inversion.backends import BACKENDS
from thor_planner.inversion.extra import CUDA_ONLY
from thor_planner.planning.measurements import Measurements
from thor_planner.inputs.models import LoadedModel, load_model
from thor_planner.utils.progress import Progress
from thor_planner.timing.device_profile import load_device_profile
from thor_planner.timing.prediction import predict_candidates, predicted_device_fields
from thor_planner.timing.candidates import TimingConfig, time_candidates, time_training_step
from thor_planner.timing.device import DEVICES, device_info, resolve_device

FISHERS = ("sampled", "empirical")


@dataclass(frozen=True, kw_only=True)
class ProfileConfig:
    model: str = "resnet50"
    weights: str | None = None
    num_classes: int | None = None
    data: str = "synthetic"
    batches: int = 2
    batch_size: int = 8
    input_size: int | None = None
    seed: int = 0
    fisher: str = "sampled"
    skip: str | None = None
    device: str = "auto"
    candidates: tuple[int, ...] | None = None
    max_split: int = 2048
    backend: str | None = None  # None: auto on CUDA, torch-cholesky on CPU; "auto": fastest accurate per size
    device_profile: str | None = None  # predict timings from this device profile instead of timing here
    timing: TimingConfig = TimingConfig()
    refresh_backends: bool = False  # measure the backend choice again instead of reusing the cached one
    #: preconditioner families whose refresh is timed: the first is the plan's, others are compared
    family: tuple[str, ...] = ("inverse",)

    def __post_init__(self) -> None:
        for what in ("batches", "batch_size"):
            if getattr(self, what) < 1:
                raise ConfigError(what, getattr(self, what), "must be >= 1")
        if self.input_size is not None and self.input_size < 1:
            raise ConfigError("input_size", self.input_size, "must be >= 1")
        check_seed(self.seed)
        if self.fisher not in FISHERS:
            raise ConfigError("fisher", self.fisher, "use 'sampled' or 'empirical'", quote=True)
        if self.device not in DEVICES:
            raise ConfigError("device", self.device, "use auto, cpu or cuda", quote=True)
        if self.max_split < 16:
            raise ConfigError("max_split", self.max_split, "must be >= 16 (the candidates are 1, then powers of two "
                              "from 16); for other splits give --candidates")
        if self.candidates is not None and (
            not self.candidates or any(c < 1 for c in self.candidates) or list(self.candidates) != sorted(set(self.candidates))
        ):
            raise ConfigError("candidates", ",".join(map(str, self.candidates)),
                              "give increasing integers >= 1, e.g. 1,16,64,256")
        if self.backend is not None and self.backend != "auto" and self.backend not in BACKENDS:
            raise ConfigError("backend", self.backend, f"use auto or one of {', '.join(sorted(BACKENDS))}", quote=True)
        unknown = [f for f in self.family if f not in FAMILIES]
        if not self.family or unknown or len(set(self.family)) != len(self.family):
            raise ConfigError("family", ",".join(self.family), f"use one or more of {', '.join(FAMILIES)} (the "
                              "first is the plan's; the others are timed for comparison)")
        if self.skip is not None:
            try:
                re.compile(self.skip)
            except re.error as exc:
                raise UserError(f"Invalid --skip={self.skip!r}: not a regular expression ({exc})") from None


def default_candidates(max_dim: int, max_split: int = 2048) -> list[int]:
    """1, then powers of two from 16 up to the largest factor dimension (and ``max_split``)."""
    top = min(max_dim, max_split)
    cands, b = [1], 16
    while b <= top:
        cands.append(b)
        b *= 2
    return cands


def input_shape_for(loaded: LoadedModel, input_size: int | None) -> tuple[int, ...] | None:
    """The model's input shape; ``input_size`` is the image side, or the sequence length of a token
    model."""
    shape = loaded.input_shape
    if input_size is None:
        return shape
    if loaded.vocab_size is not None:
        return (input_size,)
    if shape is None:
        return (3, input_size, input_size)
    if len(shape) != 3:
        raise UserError(f"--input-size applies to image models; '{loaded.name}' takes inputs of shape "
                        f"{tuple(shape)}: drop --input-size")
    return (shape[0], input_size, input_size)


def skip_pattern(user_skip: str | None, rule_skips: dict[str, str]) -> str | None:
    """One regular expression for the capture: the user's ``--skip`` or one of the model's
    :attr:`~thor_planner.inputs.models.LoadedModel.planner_skips` (matched by exact name)."""
    parts = ([f"(?:{user_skip})"] if user_skip else []) + [f"^{re.escape(n)}$" for n in rule_skips]
    return "|".join(parts) or None


def _powers_of_two_up_to(top: int) -> str:
    picks = [1] + [b for b in (16, 64, 256, 1024) if b <= top]
    return ",".join(map(str, picks if len(picks) > 1 else [1, top]))


def usable_candidates(wanted: tuple[int, ...], max_dim: int, model: str, progress: Progress) -> list[int]:
    """``--candidates`` up to the largest factor dimension (larger ones invert whole factors, like
    that dimension: dropped with a note); at least two must remain."""
    kept = [c for c in wanted if c <= max_dim]
    if len(kept) < 2:
        raise UserError(f"Invalid --candidates={','.join(map(str, wanted))}: give at least two splits up to the "
                        f"largest factor dimension of '{model}' ({max_dim}), e.g. {_powers_of_two_up_to(max_dim)}")
    dropped = [c for c in wanted if c > max_dim]
    if dropped:
        progress.note(f"Candidates above the largest factor dimension ({max_dim}) dropped: "
                      f"{', '.join(map(str, dropped))}")
    return kept


def check_backend_for(backend: str | None, device_type: str) -> None:
    if backend in CUDA_ONLY and device_type != "cuda":
        names = ", ".join(n for n in sorted(BACKENDS) if n not in CUDA_ONLY)
        raise UserError(f"Invalid --backend={backend!r}: it runs on CUDA only; on {device_type} use auto or "
                        f"one of {names}")


def check_model_takes(loaded: LoadedModel, model: torch.nn.Module, source: BatchSource, data: str,
                      device: torch.device) -> None:
    """Run one sample through the model (eval mode, no gradients) so that inputs it cannot take and
    labels beyond its outputs are refused with a message, before anything is measured."""
    inputs = source.batches[0][0]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(inputs[:1].to(device))
    except Exception as exc:  # noqa: BLE001 - the user's model on the user's data
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
        takes = f"; it takes {'×'.join(map(str, loaded.input_shape))}" if loaded.input_shape else ""
        raise UserError(f"Model '{loaded.name}' cannot take the inputs of data '{data}' (shape "
                        f"{'×'.join(map(str, inputs.shape[1:]))}{takes}): {type(exc).__name__}: {first}: "
                        "pass data shaped as the model expects") from None
    finally:
        model.train(was_training)
    if loaded.num_classes is None and isinstance(out, torch.Tensor) and out.dim() >= 1:
        check_batches(data, source.batches, int(out.shape[-1]))


def _capture_in_training_mode(cfg: ProfileConfig, loaded: LoadedModel, model: torch.nn.Module,
                              source: BatchSource, device: torch.device, advance) -> CapturedFactors:
    """:func:`capture_factors` on the user's model in training mode, forward and backward on every
    batch: whatever the model, or torch under it, rejects there is a one-line error."""
    try:
        return capture_factors(model, source.batches, fisher=cfg.fisher, skip=skip_pattern(cfg.skip, loaded.planner_skips),
                               seed=cfg.seed, device=device, progress=advance)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - what the model or torch under it rejects
        if out_of_memory(exc):
            raise
        raise user_code_error(f"Model '{loaded.name}' in training mode on batches of {cfg.batch_size} from data "
                              f"'{cfg.data}'", exc, "pass data, --batch-size or --input-size it can train on") from None


def _check_plannable(cfg: ProfileConfig, loaded: LoadedModel) -> list:
    """The layers to plan (refusing a model or ``--skip`` that leaves none)."""
    specs, _ = find_layers(loaded.model, skip_pattern(cfg.skip, loaded.planner_skips))
    if not specs:
        every = find_layers(loaded.model)[0]
        if cfg.skip is not None and every:
            raise UserError(f"--skip {cfg.skip!r} matches all {len(every)} Conv2d/Linear layers of '{loaded.name}': "
                            "nothing is left to plan; narrow the regular expression")
        raise UserError(f"Model '{loaded.name}' has no Conv2d or Linear layer to precondition: "
                        "thor-plan plans those layers only")
    return specs


def _capture(cfg: ProfileConfig, loaded: LoadedModel, model: torch.nn.Module, source: BatchSource,
             device: torch.device, progress: Progress) -> CapturedFactors:
    """The factors of ``source``'s batches, with the model's own reasons for skipped layers."""
    torch.manual_seed(cfg.seed)
    with progress.stage("capture factors", len(source.batches)) as advance:
        captured = _capture_in_training_mode(cfg, loaded, model, source, device, advance)
    for entry in captured.skipped:  # the model's rule says why (dimension and cost), not the regex
        if entry["name"] in loaded.planner_skips:
            entry["reason"] = loaded.planner_skips[entry["name"]]
        elif entry["reason"].startswith("matched --skip"):
            entry["reason"] = f"matched --skip {cfg.skip!r}"
    return captured


def _predicted(cfg: ProfileConfig, dims: list[int], candidates: list[int], profile, device: torch.device):
    """Every family's rows predicted from a device profile, and the plan's device section."""
    backend = cfg.backend or default_backend(str(profile.device["type"]))
    rows, section = {}, None
    for name in cfg.family:
        family = family_class(name)
        rows[name], chosen = predict_candidates(profile, dims, candidates, backend, family=name,
                                                flops_per_cube=family.flops_per_cube)
        if section is None:
            section = {**predicted_device_fields(profile, backend if family.uses_backends else name, chosen),
                       "capture_device": device.type}
    return rows, section


def _timings(cfg: ProfileConfig, factors: list[torch.Tensor], candidates: list[int], model: torch.nn.Module,
             batch, device: torch.device, profile, monitor: BusyMonitor, progress: Progress):
    """``({family: timing rows}, device section, training-step seconds)``: predicted from a device
    profile, or measured here (accuracy-checked inversion backends where a family uses them, each
    family's batched refresh per candidate, one training step)."""
    dims = [f.shape[0] for f in factors]
    if profile is not None:
        return *_predicted(cfg, dims, candidates, profile, device), []
    backend = cfg.backend or default_backend(device.type)
    info = device_info(device, backend)
    families = [family_class(name) for name in cfg.family]
    rows = {}
    with watching(monitor):
        selection = None
        if any(f.uses_backends for f in families):
            cache = backend_cache_for(device, info, backend, cfg.timing.damping)
            with progress.stage("backend check", len(network_counts(dims, candidates))) as advance:
                selection = select_for_model(dims, candidates, backend, device, advance, cache=cache,
                                             refresh=cfg.refresh_backends, damping=cfg.timing.damping)
        for family in families:
            solve = None if family.uses_backends else family(backend).solve
            stage = "inversion timing" if family.uses_backends else f"{family.name} refresh timing"
            with progress.stage(stage, len(candidates)) as advance:
                rows[family.name] = time_candidates(
                    factors, candidates, backends=selection.backends if selection else backend, config=cfg.timing,
                    progress=advance, solve=solve, flops_per_cube=family.flops_per_cube)
        with progress.stage("training step", 1) as advance:
            step_times = time_training_step(model, batch, device=device)
            advance()
    section = {**info, **(selection.device_fields() if selection else {}), "busy": monitor.fields()}
    if not families[0].uses_backends:
        section["backend"] = f"{families[0].name} solve"
    return rows, section, step_times


def _meta(cfg: ProfileConfig, loaded: LoadedModel, source: BatchSource, shape, device_section: dict,
          step_times: list[float], captured: CapturedFactors) -> dict:
    return {
        "tool_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": loaded.name, "source": loaded.source, "num_params": loaded.num_params},
        "device": device_section,
        "capture": {"data": source.kind, "data_description": source.description,
                    "batches": cfg.batches, "batch_size": cfg.batch_size,
                    "input_shape": list(shape) if shape else None, "fisher": cfg.fisher,
                    "seed": cfg.seed, "skip": cfg.skip},
        "family": cfg.family[0],
        "step_seconds": sorted(step_times)[len(step_times) // 2] if step_times else None,
        "step_repeats": len(step_times),
        "skipped": captured.skipped,
    }


def run_profile(cfg: ProfileConfig, progress: Progress = Progress(),
                monitor: BusyMonitor | None = None) -> tuple[Measurements, CapturedFactors]:
    """Measure everything the planner needs; nothing is written here.

    With ``cfg.device_profile`` the inversion timings are predicted from that profile (rows marked
    ``predicted``) and no training step is timed (``step_seconds`` is ``None``: the budget rule
    needs a step measured on the target device). Timings go through ``monitor`` (a default
    :class:`BusyMonitor` if none), which repeats measurements disturbed by other processes; its
    findings are the device section's ``busy``.
    """
    device = resolve_device(cfg.device)
    profile = load_device_profile(cfg.device_profile) if cfg.device_profile else None
    check_backend_for(cfg.backend, str(profile.device["type"]) if profile is not None else device.type)
    loaded = load_model(cfg.model, num_classes=cfg.num_classes, weights=cfg.weights)
    specs = _check_plannable(cfg, loaded)
    max_dim = max(max(s.a_dim, s.g_dim) for s in specs)
    wanted = usable_candidates(cfg.candidates, max_dim, loaded.name, progress) if cfg.candidates else None
    shape = input_shape_for(loaded, cfg.input_size)
    if shape is None and cfg.data == "synthetic":
        raise UserError(f"Model '{cfg.model}' has no known input shape: pass --input-size N "
                        "(images 3×N×N) or real batches with --data")
    source = load_batches(cfg.data, input_shape=shape, num_classes=loaded.num_classes,
                          batch_size=cfg.batch_size, batches=cfg.batches, seed=cfg.seed,
                          vocab_size=loaded.vocab_size, objective=loaded.objective)
    model = loaded.model.to(device)
    check_model_takes(loaded, model, source, cfg.data, device)
    captured = _capture(cfg, loaded, model, source, device, progress)
    named = [(s.name, s.kind, w, f) for s in captured.specs
             for w, f in (("a", captured.a[s.name]), ("g", captured.g[s.name]))]
    candidates = wanted or default_candidates(max(f.shape[0] for *_, f in named), cfg.max_split)
    with progress.stage("information loss", len(named)) as advance:
        # on the CPU wherever the factors were captured: the batched small eigensolves are
        # launch-bound on a GPU (an H100 took longer than two CPU cores), and the losses then do not
        # depend on the device's eigensolver
        losses = loss_table([(n, k, w, f.cpu()) for n, k, w, f in named], candidates, progress=advance)
    rows, device_section, step_times = _timings(cfg, [f for *_, f in named], candidates, model, source.batches[0],
                                                device, profile, monitor or BusyMonitor(), progress)
    meta = _meta(cfg, loaded, source, shape, device_section, step_times, captured)
    frames = {name: pd.DataFrame([t.row() for t in family_rows]) for name, family_rows in rows.items()}
    plan_family, *others = cfg.family
    compared = pd.concat([frames[n].assign(family=n) for n in others], ignore_index=True) if others else None
    return Measurements(losses=losses, timings=frames[plan_family], meta=meta, compared=compared), captured
