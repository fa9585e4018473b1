"""The per-step costs the budget rule counts: every layer's direction through the family's own
layer state, and the Grams of one factor step (scaled where their rows are subsampled)."""

from __future__ import annotations

import pytest
import torch

from thor_planner.optim.preconditioner import family_class
from thor_planner.profiling import step_cost
from thor_planner.profiling.step_cost import LayerShapes, time_step_costs
from thor_planner.timing.candidates import TimingConfig

CONFIG = TimingConfig(budget_s=0.01, min_repeats=1, max_repeats=2)


def spd(d: int) -> torch.Tensor:
    x = torch.randn(d, d)
    return x @ x.T / d + torch.eye(d)


def test_every_layer_direction_is_timed_at_each_candidate(monkeypatch) -> None:
    """A 6×10 layer and a 3×4 one: at split 4 the family's layer states hold blocks 4+2 / 4+4+2 and
    4 / 3, every direction gets a gradient of the layer's (g, a) shape."""
    seen = []
    family = family_class("inverse")("torch-cholesky")
    real = family.layer

    def layer(a_part, g_part):
        state = real(a_part, g_part)
        direction = state.direction
        state.direction = lambda grad, **kw: seen.append((a_part.sizes(), g_part.sizes(), tuple(grad.shape))) \
            or direction(grad, **kw)
        return state

    monkeypatch.setattr(family, "layer", layer)
    layers = [LayerShapes(spd(10), spd(6), 20, 20), LayerShapes(spd(4), spd(3), 5, 5)]
    costs = time_step_costs(layers, [1, 4], family, config=CONFIG)
    assert len(costs) == 2 and all(a > 0 and c > 0 for a, c in costs)
    assert ([4, 4, 2], [4, 2], (6, 10)) in seen and ([4], [3], (3, 4)) in seen
    assert ([1] * 10, [1] * 6, (6, 10)) in seen


def test_grams_over_the_row_cap_are_timed_on_the_cap_and_scaled(monkeypatch) -> None:
    """With the cap at 8 rows: Grams of 4 and 6 rows are timed as they are (one pass, 1 s here), the
    A and G Grams of 24 rows on 8 rows (one pass, 1 s) and scaled by 24 / 8: capture = 1 + 3 s."""
    sums = []
    monkeypatch.setattr(step_cost, "MAX_ROWS", 8)
    monkeypatch.setattr(step_cost, "measure", lambda fn, device, config: (fn(), [1.0])[1])
    monkeypatch.setattr(step_cost, "block_gram", lambda rows, part: sums.append(rows.shape[0]))
    layers = [LayerShapes(spd(5), spd(3), 4, 6), LayerShapes(spd(5), spd(3), 24, 24)]
    (_, capture), = time_step_costs(layers, [2], family_class("inverse")("torch-cholesky"), config=CONFIG)
    assert capture == pytest.approx(4.0) and sorted(sums) == [4, 6, 8, 8]
