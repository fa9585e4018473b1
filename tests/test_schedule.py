"""The learning-rate schedule every optimizer of ``thor-plan train`` gets: warm-up, then cosine."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from thor_planner.training.schedule import LRSchedule, lr_factor


def test_linear_warmup_then_cosine_to_zero() -> None:
    factors = [lr_factor(step, 10, "cosine", 0.2) for step in range(10)]
    assert factors[:2] == [0.5, 1.0]
    assert factors[2:] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)])
    assert [lr_factor(s, 4) for s in range(4)] == [0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(4)]
    assert [lr_factor(s, 10, "constant", 0.3) for s in (0, 2, 3, 9)] == [pytest.approx(1 / 3), 1.0, 1.0, 1.0]


def test_every_param_group_is_scaled_from_its_own_rate() -> None:
    opt = torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))], "lr": 0.1},
                           {"params": [nn.Parameter(torch.zeros(1))], "lr": 1.0}])
    schedule = LRSchedule(opt, total=10, warmup=0.2)
    schedule.apply(0)
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.5]
    schedule.apply(1)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 1.0]
