"""LAMB against a plain re-computation of its update, its trust-ratio edge cases and its argument checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from thor_planner.optim.lamb import LAMB


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))


def _grads(model: nn.Module, step: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    x, y = torch.randn(8, 5, generator=gen), torch.randint(0, 3, (8,), generator=gen)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    return [p.grad.clone() for p in model.parameters()]


def test_steps_match_a_plain_recomputation():
    lr, b1, b2, eps, wd = 0.02, 0.8, 0.95, 1e-6, 0.1
    model, reference = _model(), _model()
    with torch.no_grad():
        reference[2].bias.zero_()  # a zero-norm tensor: trust ratio 1
        model[2].bias.zero_()
    opt = LAMB(model.parameters(), lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    ws = [p.detach().clone().double() for p in reference.parameters()]
    ms = [torch.zeros_like(w) for w in ws]
    vs = [torch.zeros_like(w) for w in ws]
    for t in range(1, 5):
        grads = _grads(model, t)  # the gradient at the optimizer's current weights
        opt.step()
        for i, g in enumerate(grads):
            g = g.double()
            ms[i] = b1 * ms[i] + (1 - b1) * g
            vs[i] = b2 * vs[i] + (1 - b2) * g * g
            m_hat = ms[i] / (1 - b1 ** t)
            v_hat = vs[i] / (1 - b2 ** t)
            u = m_hat / (v_hat.sqrt() + eps) + wd * ws[i]
            w_norm = math.sqrt(float((ws[i] ** 2).sum()))
            u_norm = math.sqrt(float((u ** 2).sum()))
            ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
            ws[i] = ws[i] - lr * ratio * u
        for w, p in zip(ws, model.parameters()):
            assert torch.allclose(p.detach().double(), w, atol=1e-6, rtol=0)
    assert opt.state[model[0].weight]["step"] == 4


def test_step_length_is_lr_times_the_weight_norm():
    w = nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = LAMB([w], lr=0.1)
    w.grad = torch.tensor([1e-4, -2e3])  # any gradient scale: the step is lr · ‖w‖ = 0.5
    before = w.detach().clone()
    opt.step()
    assert float((w.detach() - before).norm()) == pytest.approx(0.5, rel=1e-6)


def test_zero_weight_norm_takes_the_plain_update():
    w = nn.Parameter(torch.zeros(3))
    opt = LAMB([w], lr=0.1, eps=1e-8)
    w.grad = torch.tensor([2.0, -0.5, 0.0])
    opt.step()
    # first step: m̂ = g, v̂ = g², u = sign(g) (0 where g = 0), ratio 1
    assert torch.allclose(w.detach(), torch.tensor([-0.1, 0.1, 0.0]), atol=1e-6)


def test_zero_update_norm_leaves_the_weights():
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = LAMB([w], lr=0.1, weight_decay=0.0)
    w.grad = torch.zeros(2)
    opt.step()  # u = 0: ratio 1 (not 0/0), and the weights stay finite and unchanged
    assert torch.equal(w.detach(), torch.tensor([1.0, -2.0]))


def test_parameters_without_gradients_are_untouched_and_state_round_trips():
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    opt = LAMB([a, b], lr=0.1)
    a.grad = torch.tensor([1.0, 2.0])
    opt.step()
    assert torch.equal(b.detach(), torch.ones(2)) and b not in opt.state
    again = LAMB([a, b], lr=0.1)
    again.load_state_dict(opt.state_dict())
    assert again.state[a]["step"] == 1 and torch.equal(again.state[a]["exp_avg"], opt.state[a]["exp_avg"])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"lr": 0.0}, "Invalid lr=0.0: must be > 0"),
    ({"lr": float("nan")}, "Invalid lr=nan: must be > 0"),
    ({"betas": (0.9, 1.0)}, "Invalid betas=(0.9, 1.0): each must be in [0, 1)"),
    ({"betas": (-0.1, 0.999)}, "Invalid betas=(-0.1, 0.999): each must be in [0, 1)"),
    ({"eps": 0.0}, "Invalid eps=0.0: must be > 0"),
    ({"weight_decay": -1e-4}, "Invalid weight_decay=-0.0001: must be >= 0"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError) as err:
        LAMB([nn.Parameter(torch.ones(1))], **kwargs)
    assert str(err.value) == message


def test_training_loop_offers_lamb():
    from thor_planner.training.loop import TrainConfig, build_model, make_optimizer
    from thor_planner.training.optimizers import OPTIMIZERS

    opt = make_optimizer(TrainConfig(model="mlp", optimizer="lamb", weight_decay=0.01), build_model("mlp"))
    assert isinstance(opt, LAMB)
    assert opt.param_groups[0]["lr"] == OPTIMIZERS["lamb"].default_lr == 0.05
    assert opt.param_groups[0]["weight_decay"] == 0.01


def test_tuner_has_a_lamb_space():
    from thor_planner.tune.space import space, train_options

    assert [p.name for p in space("lamb")] == ["lr", "weight_decay", "beta1", "warmup"]
    assert train_options("lamb", {"lr": 0.01, "weight_decay": 1e-3, "beta1": 0.85, "warmup": 0.1}) == {
        "lr": 0.01, "weight_decay": 1e-3, "warmup": 0.1, "options": {"betas": (0.85, 0.999)}}
