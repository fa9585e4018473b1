"""``thor-plan profile --for shampoo|soap``: the gradient of every parameter on a few batches, the
information loss of the optimizer's blocks at each candidate block size, the whole network's
refresh time at each candidate on this device, and one training step.

Candidates: powers of two from :data:`PEER_MIN_CANDIDATE` up to the first one that holds every
parameter's largest dimension (capped at ``--max-split``), or ``--candidates``. Smaller blocks are
left out by default: Distributed Shampoo refreshes one factor matrix at a time, so a network cut
into blocks of 16 has hundreds of thousands of them, a refresh nobody runs. A candidate at which
the optimizer cuts every parameter exactly as at the previous candidate (SOAP between two
dimensions of the model), or preconditions nothing (SOAP below the smallest dimension), is dropped
with a note. Parameters the optimizer never preconditions at any candidate (SOAP's
one-dimensional ones: Adam at every block size) are listed as skipped, with the reason.
"""

from __future__ import annotations

import math
import re

import pandas as pd
import torch

from thor_planner.capture.gradient_stats import GradientSamples, capture_gradients
from thor_planner.gradient_loss import gradient_loss_table
from thor_planner.inputs.models import load_model
from thor_planner.planning.measurements import Measurements
from thor_planner.profiling.common import ProfileConfig, load_inputs, provenance_meta
from thor_planner.targets import TARGETS, PlanTarget
from thor_planner.timing.busy import BusyMonitor, watching
from thor_planner.timing.candidates import time_training_step
from thor_planner.timing.device import device_info, resolve_device
from thor_planner.timing.refresh import time_refresh_candidates
from thor_planner.utils.errors import UserError
from thor_planner.utils.imports import user_code_error
from thor_planner.utils.progress import Progress

PEER_MIN_CANDIDATE = 64


def largest_dimension(shapes: dict[str, tuple[int, ...]]) -> int:
    """The largest dimension of any parameter viewed as a matrix (first dimension × the rest)."""
    return max([1] + [max(shape[0] if shape else 1, math.prod(shape[1:])) for shape in shapes.values()])


def default_peer_candidates(top: int, max_split: int) -> list[int]:
    """Powers of two from :data:`PEER_MIN_CANDIDATE` up to the first that is ``>= top``, at most
    ``max_split``."""
    cands, b = [], PEER_MIN_CANDIDATE
    while b <= max_split:
        cands.append(b)
        if b >= top:
            break
        b *= 2
    return cands or [min(PEER_MIN_CANDIDATE, max_split)]


def distinct_candidates(shapes: dict[str, tuple[int, ...]], target: PlanTarget, wanted: list[int],
                        progress: Progress | None = None) -> list[int]:
    """The candidates at which the optimizer cuts the parameters (``shapes``) differently from the
    previous one and preconditions something (module doc); at least two must remain."""
    kept, last, dropped = [], None, []
    for b in wanted:
        cut = [target.blocks(shape, b) for shape in shapes.values()]
        signature = tuple((c.merged, c.parts, c.preconditioned) for c in cut)
        if not any(c.preconditions for c in cut) or signature == last:
            dropped.append(b)
            continue
        kept.append(b)
        last = signature
    if dropped and progress is not None:
        progress.note(f"Block sizes at which {target.title} preconditions nothing or cuts the network as at the "
                      f"next smaller one dropped: {', '.join(map(str, dropped))}")
    if len(kept) < 2:
        raise UserError(f"Only {len(kept)} of the block sizes {','.join(map(str, wanted))} cut the model's parameters "
                        f"differently for {target.title}: give --candidates that do (the parameters' dimensions are "
                        f"up to {largest_dimension(shapes)})")
    return kept


def planned_shapes(model: torch.nn.Module, skip: str | None) -> dict[str, tuple[int, ...]]:
    """The shapes of the trainable parameters ``--skip`` leaves (before any gradient is captured)."""
    pattern = re.compile(skip) if skip else None
    return {n: tuple(p.shape) for n, p in model.named_parameters()
            if p.requires_grad and p.numel() > 0 and not (pattern and pattern.search(n))}


def never_preconditioned(samples: GradientSamples, target: PlanTarget, candidates: list[int]) -> GradientSamples:
    """``samples`` without the parameters no candidate preconditions, which move to ``skipped``."""
    left = [n for n in samples.names if not any(target.blocks(samples.shape(n), b).preconditions for b in candidates)]
    reason = (f"{target.title} leaves it to its first-order update at every block size "
              "(heavyball's SOAP does not precondition one-dimensional parameters)")
    grads = {n: g for n, g in samples.grads.items() if n not in left}
    return GradientSamples(grads, samples.skipped + [{"name": n, "reason": reason} for n in left])


def _capture(cfg: ProfileConfig, loaded, model, source, device, progress: Progress) -> GradientSamples:
    torch.manual_seed(cfg.seed)
    with progress.stage("capture gradients", len(source.batches)) as advance:
        try:
            samples = capture_gradients(model, source.batches, skip=cfg.skip, device=device, progress=advance)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - what the model or torch under it rejects
            raise user_code_error(f"Model '{loaded.name}' in training mode on batches of {cfg.batch_size} from "
                                  f"data '{cfg.data}'", exc, "pass data, --batch-size or --input-size it can train "
                                  "on") from None
    if not samples.grads:
        raise UserError(f"Model '{loaded.name}' has no parameter with a gradient to plan for"
                        + (f" (--skip {cfg.skip!r} leaves none)" if cfg.skip else ""))
    return samples


def run_peer_profile(cfg: ProfileConfig, progress: Progress = Progress(),
                     monitor: BusyMonitor | None = None) -> tuple[Measurements, GradientSamples]:
    """Measure what a plan for ``cfg.target`` needs (module doc); nothing is written here."""
    target = TARGETS[cfg.target]
    device = resolve_device(cfg.device)
    loaded = load_model(cfg.model, num_classes=cfg.num_classes, weights=cfg.weights)
    inputs = load_inputs(cfg, device, loaded)
    model, shape, source = inputs.model, inputs.shape, inputs.source
    if cfg.candidates:  # refused before anything is measured when they cannot tell block sizes apart
        distinct_candidates(planned_shapes(model, cfg.skip), target, list(cfg.candidates))
    samples = _capture(cfg, loaded, model, source, device, progress)
    shapes = {n: samples.shape(n) for n in samples.names}
    wanted = list(cfg.candidates) if cfg.candidates else default_peer_candidates(largest_dimension(shapes),
                                                                                cfg.max_split)
    candidates = distinct_candidates(shapes, target, wanted, progress)
    samples = never_preconditioned(samples, target, candidates)
    with progress.stage("information loss", len(samples.names)) as advance:
        losses = gradient_loss_table(samples, target, candidates, progress=advance)
    monitor = monitor or BusyMonitor()
    with watching(monitor):
        with progress.stage("refresh timing", len(candidates)) as advance:
            rows = time_refresh_candidates(samples, target, candidates, device=device, config=cfg.timing,
                                           progress=advance)
        with progress.stage("training step", 1) as advance:
            step_times = time_training_step(model, source.batches[0], device=device)
            advance()
    section = {**device_info(device, f"{target.name} refresh"), "refresh": target.refresh, "busy": monitor.fields()}
    meta = {**provenance_meta(cfg, loaded, source, shape, section, step_times, samples), "optimizer": target.name}
    meta["capture"]["statistic"] = "gradient"
    return Measurements(losses=losses, timings=pd.DataFrame([t.row() for t in rows]), meta=meta), samples
