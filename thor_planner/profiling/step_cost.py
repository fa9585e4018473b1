"""What a split costs on the training steps themselves, beside its refresh: the two pieces of THOR's
per-step work that grow with the block size, each timed with the runtime's own code.

- **Application** (every step): every layer's direction from its gradient,
  ``LayerPreconditioner.direction`` of the plan's family on blocks installed as a refresh installs
  them; ``2·g·a·(s_G + s_A)`` flops for a ``g × a`` layer with THOR's inverses (twice that for the
  eigenbasis, which rotates into the basis and out).
- **Capture** (every ``factor_every`` steps): the packed diagonal blocks of every layer's A and G
  Grams, :func:`~thor_planner.optim.factors.block_gram` on as many rows as one profiled batch gave
  each (``2·R·d·s`` flops for ``R`` rows of a ``d``-dimensional factor at block size ``s``). A Gram
  of more than :data:`MAX_ROWS` rows is timed on that many and scaled by ``R / MAX_ROWS`` (its cost
  is linear in the rows it sums over), which keeps the early convolutions of an image model
  (100k rows at batch 8) from dominating the profile.

At split 512 on a small GPT these cost more per step than the refresh amortized over 100 steps, and
far more than the differences between small splits, so the budget rule counts them
(:func:`~thor_planner.planning.rules.budget`). The blocks installed are the factors' own diagonal
blocks (a solve's result has their shape) and the gradients and rows are seeded random matrices of
each layer's shapes: what the products cost does not depend on the values.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from thor_planner.optim.factors import block_gram
from thor_planner.optim.preconditioner.base import Family
from thor_planner.partition import extract_blocks, partition
from thor_planner.timing.candidates import TimingConfig, measure

MAX_ROWS = 8192

#: the param-group fields a family's direction may read (the eigenbasis family's Adam)
_GROUP = {"betas": (0.9, 0.999), "eps": 1e-8}


@dataclass(frozen=True)
class LayerShapes:
    """One layer as the per-step work sees it: its factors and the rows one batch gives each Gram."""

    a: torch.Tensor
    g: torch.Tensor
    a_rows: int
    g_rows: int


def step_cost_config(refresh: TimingConfig) -> TimingConfig:
    """Milliseconds a run on a small model, about a second at large splits of a large one: 0.1 s per
    piece (or the refresh's budget, if smaller), the median of the runs that fit, one run where a
    single one is longer (the budget rule reads them against 5% of a step, not to the percent)."""
    return TimingConfig(budget_s=min(refresh.budget_s, 0.1), min_repeats=1, max_repeats=15, warmup=1,
                        damping=refresh.damping, settle=refresh.settle)


def _application(layers: Sequence[LayerShapes], b: int, family: Family, grads: list[torch.Tensor]):
    states = []
    for layer in layers:
        pa, pg = partition(layer.a.shape[0], b), partition(layer.g.shape[0], b)
        state = family.layer(pa, pg)
        state.install(extract_blocks(layer.a, pa), extract_blocks(layer.g, pg))
        states.append(state)
    return lambda: [s.direction(grad, group=_GROUP, ok=None) for s, grad in zip(states, grads)]


def _grams(layers: Sequence[LayerShapes]) -> list[tuple[int, int]]:
    """Every Gram's ``(rows, dim)``, as a step's capture sums them."""
    return [(n, f.shape[0]) for layer in layers for n, f in ((layer.a_rows, layer.a), (layer.g_rows, layer.g))]


def _capture_seconds(grams: list[tuple[int, int]], b: int, rows: dict[tuple[int, int], torch.Tensor],
                     device: torch.device, config: TimingConfig) -> float:
    """Seconds of one factor step's Grams at split ``b``: those of at most :data:`MAX_ROWS` rows timed
    as they are, the others timed on that many rows and scaled by their flop-weighted ``R / MAX_ROWS``."""
    def timed(work):
        if not work:
            return 0.0
        return statistics.median(measure(lambda: [block_gram(r, part) for r, part in work], device, config))

    small = [(rows[(n, d)], partition(d, b)) for n, d in grams if n <= MAX_ROWS]
    large = [(n, d, partition(d, b)) for n, d in grams if n > MAX_ROWS]
    scale = (sum(n * d * p.block for n, d, p in large) / sum(MAX_ROWS * d * p.block for n, d, p in large)
             if large else 0.0)
    return timed(small) + scale * timed([(rows[(MAX_ROWS, d)], p) for _, d, p in large])


def time_step_costs(layers: Sequence[LayerShapes], candidates: Sequence[int], family: Family, *,
                    config: TimingConfig, progress: Callable[[int], None] | None = None,
                    seed: int = 0) -> list[tuple[float, float]]:
    """Per candidate, ``(application, capture)``: the median seconds of one step's directions of every
    layer and of one factor step's Grams, with every factor split at the candidate."""
    if not layers:
        raise ValueError("No layers to time")
    device, dtype = layers[0].a.device, layers[0].a.dtype
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    grads = [rand(layer.g.shape[0], layer.a.shape[0]) for layer in layers]
    grams = _grams(layers)
    rows = {shape: rand(*shape) for shape in sorted({(min(n, MAX_ROWS), d) for n, d in grams})}  # shared by shape
    out = []
    for b in candidates:
        apply_s = statistics.median(measure(_application(layers, b, family, grads), device, config))
        capture_s = _capture_seconds(grams, b, rows, device, config)
        out.append((apply_s, capture_s))
        if progress is not None:
            progress(b)
    return out
