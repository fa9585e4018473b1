"""``thor-plan profile``: capture factors, measure information loss and inversion time (for a peer
optimizer, :mod:`.peer_profile`; the configuration and what both share, :mod:`.common`)."""

from __future__ import annotations

import re

import pandas as pd
import torch

from thor_planner.targets import TARGETS
from thor_planner.capture.collector import CapturedFactors, capture_factors
from thor_planner.capture.layers import find_layers
from thor_planner.inputs.data import BatchSource
from thor_planner.optim.preconditioner import family_class
from thor_planner.utils.errors import UserError, out_of_memory
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
from thor_planner.timing.candidates import time_candidates, time_training_step
from thor_planner.timing.device import device_info, resolve_device
from thor_planner.profiling.peer_profile import run_peer_profile
from thor_planner.profiling.step_cost import LayerShapes, step_cost_config, time_step_costs
from thor_planner.profiling.common import ProfileConfig, load_inputs, provenance_meta  # noqa: F401 (ProfileConfig: API)

def default_candidates(max_dim: int, max_split: int = 2048) -> list[int]:
    """1, then powers of two from 16 up to the largest factor dimension (and ``max_split``)."""
    top = min(max_dim, max_split)
    cands, b = [1], 16
    while b <= top:
        cands.append(b)
        b *= 2
    return cands


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


def _timings(cfg: ProfileConfig, captured: CapturedFactors, candidates: list[int], model: torch.nn.Module,
             batch, device: torch.device, profile, monitor: BusyMonitor, progress: Progress):
    """``({family: timing rows}, device section, training-step seconds, per-step costs)``: predicted
    from a device profile (no per-step costs), or measured here (accuracy-checked inversion backends
    where a family uses them, each family's batched refresh per candidate, the plan family's per-step
    costs per candidate, one training step)."""
    factors = [f for *_, f in captured.named_factors()]
    dims = [f.shape[0] for f in factors]
    if profile is not None:
        return *_predicted(cfg, dims, candidates, profile, device), [], None
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
        layers = [LayerShapes(captured.a[s.name], captured.g[s.name], *captured.rows[s.name]) for s in captured.specs]
        with progress.stage("per-step cost", len(candidates)) as advance:
            costs = time_step_costs(layers, candidates, families[0](backend), config=step_cost_config(cfg.timing),
                                    progress=advance)
        with progress.stage("training step", 1) as advance:
            step_times = time_training_step(model, batch, device=device)
            advance()
    section = {**info, **(selection.device_fields() if selection else {}), "busy": monitor.fields()}
    if not families[0].uses_backends:
        section["backend"] = f"{families[0].name} solve"
    return rows, section, step_times, costs


def run_profile(cfg: ProfileConfig, progress: Progress = Progress(),
                monitor: BusyMonitor | None = None) -> tuple[Measurements, CapturedFactors]:
    """Measure everything the planner needs; nothing is written here.

    With ``cfg.device_profile`` the inversion timings are predicted from that profile (rows marked
    ``predicted``) and no training step is timed (``step_seconds`` is ``None``: the budget rule
    needs a step measured on the target device). Timings go through ``monitor`` (a default
    :class:`BusyMonitor` if none), which repeats measurements disturbed by other processes; its
    findings are the device section's ``busy``. For a peer optimizer (``cfg.target``), see
    :func:`thor_planner.profiling.peer_profile.run_peer_profile` (it returns the gradient samples
    instead of the factors).
    """
    if TARGETS[cfg.target].peer:
        return run_peer_profile(cfg, progress, monitor)
    device = resolve_device(cfg.device)
    profile = load_device_profile(cfg.device_profile) if cfg.device_profile else None
    check_backend_for(cfg.backend, str(profile.device["type"]) if profile is not None else device.type)
    loaded = load_model(cfg.model, num_classes=cfg.num_classes, weights=cfg.weights)
    specs = _check_plannable(cfg, loaded)
    max_dim = max(max(s.a_dim, s.g_dim) for s in specs)
    wanted = usable_candidates(cfg.candidates, max_dim, loaded.name, progress) if cfg.candidates else None
    inputs = load_inputs(cfg, device, loaded)
    model, shape, source = inputs.model, inputs.shape, inputs.source
    captured = _capture(cfg, loaded, model, source, device, progress)
    named = [(s.name, s.kind, w, f) for s in captured.specs
             for w, f in (("a", captured.a[s.name]), ("g", captured.g[s.name]))]
    candidates = wanted or default_candidates(max(f.shape[0] for *_, f in named), cfg.max_split)
    with progress.stage("information loss", len(named)) as advance:
        # on the CPU wherever the factors were captured: the batched small eigensolves are
        # launch-bound on a GPU (an H100 took longer than two CPU cores), and the losses then do not
        # depend on the device's eigensolver
        losses = loss_table([(n, k, w, f.cpu()) for n, k, w, f in named], candidates, progress=advance)
    rows, device_section, step_times, costs = _timings(cfg, captured, candidates, model, source.batches[0],
                                                       device, profile, monitor or BusyMonitor(), progress)
    meta = {**provenance_meta(cfg, loaded, source, shape, device_section, step_times, captured),
            "family": cfg.family[0]}
    frames = {name: pd.DataFrame([t.row() for t in family_rows]) for name, family_rows in rows.items()}
    plan_family, *others = cfg.family
    if costs is not None:
        frames[plan_family] = frames[plan_family].assign(apply_s=[a for a, _ in costs], capture_s=[c for _, c in costs])
    compared = pd.concat([frames[n].assign(family=n) for n in others], ignore_index=True) if others else None
    return Measurements(losses=losses, timings=frames[plan_family], meta=meta, compared=compared), captured
