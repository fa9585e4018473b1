"""THOR against references: dense / block-diagonal K-FAC written plainly, torch.optim.SGD, itself resumed."""

from __future__ import annotations

import copy
import io
import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import thor_planner.optim.preconditioner.inverse as inverse_module
from thor_planner import THOR, Plan
from thor_planner.capture.collector import layer_specs
from thor_planner.partition import partition
from thor_planner.planning.plan import Crossover, LayerPlan, PlanError, Schedule

EVERY_STEP = Schedule(damping_init=0.03, damping_decay=1.0, factor_every=1, factor_decay=0.0,
                      interval_initial=1, interval_max=1, omega1=0.0, omega2=0.0)
LAYERS = ("conv1", "conv2", "fc")


class Net(nn.Module):
    """conv (no bias) → BN → conv (bias, stride 2) → linear: factors 27/4, 37/6, 55/5."""

    def __init__(self, width: int = 6):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, width, 3, stride=2, padding=1)
        self.fc = nn.Linear(width * 9, 5)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv1(x)))
        return self.fc(torch.relu(self.conv2(h)).flatten(1))


def make_plan(model: nn.Module, split: int | None = None, omegas: dict | None = None,
              schedule: Schedule = EVERY_STEP, layers=LAYERS, device: dict | None = None) -> Plan:
    """A plan for ``layers`` of ``model``: every factor at ``split`` (None: dense), ω per layer."""
    specs = {s.name: s for s in layer_specs(model)}
    omegas = omegas or {}
    planned = []
    for n in layers:
        s = specs[n]
        omega1, omega2 = omegas.get(n, (0.0, 0.0))
        planned.append(LayerPlan(name=n, kind=s.kind, a_dim=s.a_dim, g_dim=s.g_dim,
                                 a_split=split or s.a_dim, g_split=split or s.g_dim, a_loss=0.0, g_loss=0.0,
                                 omega1=omega1, omega2=omega2))
    return Plan(
        model={"name": "net"}, device=device or {"type": "cpu", "backend": "torch-cholesky"}, capture={},
        rule={"name": "hand-picked", "loss_threshold": 0.01}, candidates=[1],
        curves={"loss_fraction": [1.0], "inversion_seconds": [0.0], "normalized_perf": [1.0]},
        crossover=Crossover(x=None, y=None, split_dim=split or 1),
        schedule=schedule, layers=planned,
    )


def batches(n: int, dtype=torch.float32, seed: int = 0, size: int = 8):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 6, 6, generator=gen, dtype=dtype),
             torch.randint(0, 5, (size,), generator=gen)) for _ in range(n)]


def train(model, opt, data, scheduler=None):
    for x, y in data:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()


def block_mask(dim: int, split: int | None, dtype) -> torch.Tensor:
    sizes = partition(dim, split or dim).sizes()
    return torch.block_diag(*[torch.ones(s, s, dtype=dtype) for s in sizes])


def reference_kfac(model, data, *, lr, momentum, wd, damping, split=None, kl_clip=None, layers=LAYERS,
                   graft=None):
    """(``wd`` may be a function of the parameter: per-group weight decay.)"""
    wd_of = wd if callable(wd) else (lambda p: wd)
    """K-FAC with momentum SGD written plainly: A, G from unfold and outer products, dense inverses;
    ``graft="sgd"``: each layer's direction rescaled to its gradient's Frobenius norm;
    ``graft="adamw"``: Adam's bias-corrected first moment m̂ (betas 0.9, 0.999, eps 1e-8) is
    preconditioned and rescaled to the norm of m̂ / (sqrt(v̂) + eps), the step is AdamW's
    ``p ← p(1 − lr·wd) − lr·d`` and other parameters take d = m̂ / (sqrt(v̂) + eps)."""
    bufs, m1, m2 = {}, {}, {}
    for t, (x, y) in enumerate(data, start=1):
        inputs, outputs, hooks = {}, {}, []
        for name in layers:
            def hook(m, i, o, name=name, inputs=inputs, outputs=outputs):
                inputs[name] = i[0].detach()
                o.retain_grad()
                outputs[name] = o
            hooks.append(getattr(model, name).register_forward_hook(hook))
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for h in hooks:
            h.remove()
        batch, shift = x.shape[0], math.sqrt(damping)
        direction, vg = {}, 0.0
        adam = {}
        if graft == "adamw":
            for p in model.parameters():
                m1[p] = 0.9 * m1.get(p, 0.0) + 0.1 * p.grad
                m2[p] = 0.999 * m2.get(p, 0.0) + 0.001 * p.grad**2
                p.grad = m1[p] / (1 - 0.9**t)  # what is preconditioned: the filtered gradient
                adam[p] = p.grad / ((m2[p] / (1 - 0.999**t)).sqrt() + 1e-8)
        for name in layers:
            m = getattr(model, name)
            if isinstance(m, nn.Conv2d):
                cols = F.unfold(inputs[name], m.kernel_size, padding=m.padding, stride=m.stride)
                a_rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])
                g_rows = outputs[name].grad.permute(0, 2, 3, 1).reshape(-1, m.out_channels)
            else:
                a_rows, g_rows = inputs[name], outputs[name].grad
            grad = m.weight.grad.reshape(m.weight.shape[0], -1)
            if m.bias is not None:
                a_rows = torch.cat([a_rows, torch.ones(a_rows.shape[0], 1, dtype=a_rows.dtype)], 1)
                grad = torch.cat([grad, m.bias.grad[:, None]], 1)
            a = a_rows.T @ a_rows / a_rows.shape[0]
            g = (batch * g_rows).T @ (batch * g_rows) / batch
            a = a * block_mask(a.shape[0], split, a.dtype)
            g = g * block_mask(g.shape[0], split, g.dtype)
            g_inv = torch.linalg.inv(g + shift * torch.eye(g.shape[0], dtype=g.dtype))
            a_inv = torch.linalg.inv(a + shift * torch.eye(a.shape[0], dtype=a.dtype))
            u = g_inv @ grad @ a_inv
            if graft == "sgd":
                u = u * (grad.norm() / u.norm())
            if graft == "adamw":
                norm = (adam[m.weight].norm() ** 2 + (adam[m.bias].norm() ** 2 if m.bias is not None else 0)).sqrt()
                u = u * (norm / u.norm())
            vg += float((u * grad).sum()) * lr**2
            cols = m.weight[0].numel()
            direction[m.weight] = u[:, :cols].reshape(m.weight.shape)
            if m.bias is not None:
                direction[m.bias] = u[:, cols]
        nu = min(1.0, math.sqrt(kl_clip / vg)) if kl_clip else 1.0
        with torch.no_grad():
            for p in model.parameters():
                if graft == "adamw":
                    p.mul_(1 - lr * wd_of(p))
                    p -= lr * (direction[p] * nu if p in direction else adam[p])
                    continue
                d = direction[p] * nu if p in direction else p.grad
                d = d + wd_of(p) * p
                bufs[p] = d.clone() if p not in bufs else bufs[p] * momentum + d
                p -= lr * bufs[p]


def assert_params(a: nn.Module, b: nn.Module, exact: bool = False, rtol: float = 1e-5) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        if exact:
            assert torch.equal(p, q), name
        else:
            torch.testing.assert_close(p, q, rtol=rtol, atol=1e-10, msg=name)


@pytest.mark.parametrize("split", [None, 4, 16])
@pytest.mark.parametrize(("kl_clip", "graft"), [(None, None), (1e-4, None), (None, "sgd"), (1e-4, "sgd"),
                                                 (None, "adamw"), (1e-4, "adamw")])
def test_equals_plain_kfac(split, kl_clip, graft) -> None:
    """Dense (split = dim) and block-diagonal (split 4: 27 → 4·6+3, 6 → 4+2, 5 → 4+1) K-FAC steps,
    raw or grafted to SGD's per-layer norm, with and without KL clipping."""
    torch.manual_seed(0)
    model = Net().double()
    ref = copy.deepcopy(model)
    data = batches(3, torch.float64)
    opt = THOR(model, make_plan(model, split), lr=0.1, momentum=0.9, weight_decay=5e-4, kl_clip=kl_clip,
               graft=graft)
    train(model, opt, data)
    reference_kfac(ref, data, lr=0.1, momentum=0.9, wd=5e-4, damping=0.03, split=split, kl_clip=kl_clip,
                   graft=graft)
    assert_params(model, ref)
    assert opt.stats()["layers"]["fc"]["updates"] == 3


def test_layers_outside_the_plan_get_sgd_and_planless_modes_match_plans() -> None:
    torch.manual_seed(1)
    model = Net().double()
    ref = copy.deepcopy(model)
    data = batches(2, torch.float64)
    opt = THOR(model, make_plan(model, 4, layers=("conv2", "fc")), lr=0.1, momentum=0.9)
    train(model, opt, data)
    reference_kfac(ref, data, lr=0.1, momentum=0.9, wd=0.0, damping=0.03, split=4, layers=("conv2", "fc"),
                   graft="sgd")
    assert_params(model, ref)
    assert list(opt.stats()["layers"]) == ["conv2", "fc"]
    # plan=None, split=4: every layer at split 4 with the schedule's thresholds == a plan saying so
    a, b = Net(), Net()
    b.load_state_dict(a.state_dict())
    data = batches(3)
    train(a, THOR(a, split=4, schedule=EVERY_STEP, lr=0.1), data)
    train(b, THOR(b, make_plan(b, 4), lr=0.1), data)
    assert_params(a, b, exact=True)


@pytest.mark.parametrize(("wd", "nesterov"), [(0.0, False), (5e-4, False), (1e-2, True)])
def test_without_preconditioning_equals_sgd(wd, nesterov) -> None:
    torch.manual_seed(2)
    model = Net()
    ref = copy.deepcopy(model)
    data = batches(4)
    opt = THOR(model, make_plan(model, 4), lr=0.05, momentum=0.9, weight_decay=wd, nesterov=nesterov,
               precondition=False)
    sgd = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, weight_decay=wd, nesterov=nesterov)
    train(model, opt, data)
    train(ref, sgd, data)
    assert_params(model, ref, exact=True)
    assert not model.conv1._forward_hooks  # no hooks without preconditioning


@pytest.mark.parametrize("wd", [0.0, 1e-2])
def test_without_preconditioning_adamw_graft_equals_adamw(wd) -> None:
    torch.manual_seed(2)
    model = Net()
    ref = copy.deepcopy(model)
    data = batches(4)
    opt = THOR(model, make_plan(model, 4), lr=1e-3, weight_decay=wd, graft="adamw", betas=(0.8, 0.99),
               eps=1e-6, precondition=False)
    train(model, opt, data)
    train(ref, torch.optim.AdamW(ref.parameters(), lr=1e-3, weight_decay=wd, betas=(0.8, 0.99), eps=1e-6), data)
    assert_params(model, ref, rtol=1e-6)


def test_trace_rule_per_layer_and_only_updated_layers_inverted(monkeypatch) -> None:
    """lr = 0 and one batch repeated: factors repeat exactly until the input is scaled by 3."""
    calls = []
    real = inverse_module.invert_groups

    def spy(groups, damping, backends, **kw):
        calls.append(sum(n * size for size, n in ((s, st.shape[0]) for s, st in groups.stacks.items())))
        return real(groups, damping, backends, **kw)

    monkeypatch.setattr(inverse_module, "invert_groups", spy)
    torch.manual_seed(3)
    model = Net()
    plan = make_plan(model, omegas={"conv1": (0.01, 0.0), "conv2": (0.01, 0.001), "fc": (0.0, 0.0)})
    opt = THOR(model, plan, lr=0.0)
    (x, y), = batches(1)
    train(model, opt, [(x, y)] * 3 + [(3 * x, y)] * 2)
    layers = opt.stats()["layers"]
    assert {n: (s["updates"], s["keeps"], s["stops"], s["frozen"]) for n, s in layers.items()} == {
        "conv1": (2, 3, 0, False),  # update, keep, keep, update (A ×9), keep
        "conv2": (1, 0, 1, True),  # update, stop (Δ = 0 < ω2)
        "fc": (5, 0, 0, False),  # ω = (0, 0): always
    }
    dims = {"conv1": 27 + 4, "conv2": 37 + 6, "fc": 55 + 5}
    assert calls == [sum(dims.values()), dims["fc"], dims["fc"], dims["conv1"] + dims["fc"], dims["fc"]]
    assert not model.conv2._forward_hooks and model.conv1._forward_hooks  # frozen: no more capture
    assert opt.stats()["step"] == 5 and opt.stats()["skipped_steps"] == 0


def _resume_setup():
    schedule = Schedule(damping_init=0.05, damping_decay=0.5, damping_decay_steps=4, factor_every=2,
                        factor_decay=0.8, interval_initial=2, interval_growth=2.0, interval_grow_every=4,
                        interval_max=8, omega1=0.05, omega2=0.001)
    model = Net()
    omegas = {"conv1": (0.05, 0.001), "conv2": (0.05, 0.03), "fc": (0.0, 0.0)}
    plan = make_plan(model, 4, omegas, schedule)

    def make(m):
        return THOR(m, plan, lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True, kl_clip=1e-2)

    return model, make


@pytest.mark.parametrize("k", [3, 6])
def test_resume_is_bitwise_identical(k) -> None:
    torch.manual_seed(4)
    model, make = _resume_setup()
    start = copy.deepcopy(model.state_dict())
    data = batches(12, seed=4)
    opt = make(model)
    train(model, opt, data)

    torch.manual_seed(5)
    first, _ = _resume_setup()
    first.load_state_dict(start)
    opt1 = make(first)
    train(first, opt1, data[:k])
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt1.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)
    second, _ = _resume_setup()  # fresh weights, overwritten by the checkpoint
    second.load_state_dict(ckpt["model"])
    opt2 = make(second)
    opt2.load_state_dict(ckpt["opt"])
    train(second, opt2, data[k:])
    assert_params(model, second, exact=True)
    assert opt.stats() == opt2.stats()
    assert sum(s["updates"] for s in opt.stats()["layers"].values()) > 3


def test_nan_step_is_skipped_and_touches_nothing() -> None:
    torch.manual_seed(6)
    model = Net()
    ref = copy.deepcopy(model)
    data = batches(4, seed=6)
    opt = THOR(model, make_plan(model, 4), lr=0.1, momentum=0.9, weight_decay=1e-3)
    train(model, opt, data[:2])
    before = copy.deepcopy(opt.state_dict())
    params = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    F.cross_entropy(model(data[2][0]), data[2][1]).backward()
    model.fc.weight.grad[0, 0] = float("nan")
    with pytest.warns(RuntimeWarning) as caught:
        opt.step()
    assert [str(w.message) for w in caught] == [
        "THOR: step 2 skipped: gradients contain NaN or Inf (1 in a row, 1 in all)"]
    assert caught[0].filename == __file__  # attributed to the caller's line, not to torch
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
    after = opt.state_dict()
    assert all(torch.equal(before["state"][i]["momentum_buffer"], s["momentum_buffer"])
               for i, s in after["state"].items())
    for name in LAYERS:
        assert torch.equal(before["thor"]["layers"][name]["factors"]["a"], after["thor"]["layers"][name]["factors"]["a"])
        assert torch.equal(before["thor"]["layers"][name]["factors"]["g"], after["thor"]["layers"][name]["factors"]["g"])
    assert opt.stats()["skipped_steps"] == 1 and opt.stats()["step"] == 2
    # the rest of training is the same as if the bad iteration never happened
    train(model, opt, data[3:])
    ref_opt = THOR(ref, make_plan(ref, 4), lr=0.1, momentum=0.9, weight_decay=1e-3)
    train(ref, ref_opt, data[:2] + data[3:])
    assert_params(model, ref, exact=True)


def test_statistics_of_a_stepless_iteration_are_dropped_by_zero_grad() -> None:
    """What a GradScaler overflow leaves behind: forward + backward, no step, then zero_grad."""
    torch.manual_seed(7)
    model = Net()
    ref = copy.deepcopy(model)
    data = batches(3, seed=7)
    opt = THOR(model, make_plan(model, 4), lr=0.1)
    F.cross_entropy(model(data[0][0] * 100), data[0][1]).backward()
    train(model, opt, data)
    train(ref, THOR(ref, make_plan(ref, 4), lr=0.1), data)
    assert_params(model, ref, exact=True)


def test_grad_scaler_equals_unscaled_run() -> None:
    torch.manual_seed(8)
    model = Net()
    ref = copy.deepcopy(model)
    data = batches(4, seed=8)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    opt = THOR(model, make_plan(model, 4), lr=0.1, weight_decay=1e-3, grad_scaler=scaler)
    for x, y in data:
        opt.zero_grad()
        scaler.scale(F.cross_entropy(model(x), y)).backward()
        scaler.step(opt)  # unscale_ then THOR.step: preconditioning sees unscaled gradients
        scaler.update()
    train(ref, THOR(ref, make_plan(ref, 4), lr=0.1, weight_decay=1e-3), data)
    assert scaler.get_scale() == 2.0**12
    assert_params(model, ref, exact=True)


def test_lr_scheduler_drives_the_step() -> None:
    torch.manual_seed(9)
    a = Net()
    b = copy.deepcopy(a)
    data = batches(2, seed=9)
    opt_a = THOR(a, make_plan(a, 4), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt_a, lambda epoch: [0.5, 0.25, 0.125][epoch])
    train(a, opt_a, data, sched)
    opt_b = THOR(b, make_plan(b, 4), lr=0.5)
    train(b, opt_b, data[:1])
    opt_b.param_groups[0]["lr"] = 0.25
    train(b, opt_b, data[1:])
    assert_params(a, b, exact=True)
    c = copy.deepcopy(b)  # ... and a different lr gives a different step
    train(c, THOR(c, make_plan(c, 4), lr=0.5), data[:1])
    train(b, THOR(b, make_plan(b, 4), lr=0.25), data[:1])
    assert not torch.equal(c.fc.weight, b.fc.weight)


def test_mismatched_plan_is_refused_with_the_list_of_mismatches() -> None:
    plan = make_plan(Net(), 4)
    plan.layers.append(LayerPlan(name="head", kind="linear", a_dim=3, g_dim=2, a_split=3, g_split=2,
                                 a_loss=0.0, g_loss=0.0))
    with pytest.raises(PlanError) as err:
        THOR(Net(width=5), plan, lr=0.1)
    assert str(err.value) == (
        "Plan does not match the model (3 mismatches): conv2: plan g_dim=6, model g_dim=5; "
        "fc: plan a_dim=55, model a_dim=46; head: not a Conv2d/Linear layer of the model. "
        "Profile this model again to make a plan for it"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": -1.0}, "Invalid lr=-1.0: must be a finite number >= 0"),
        ({"lr": "0.1"}, "Invalid lr=0.1: must be a finite number >= 0"),
        ({"lr": 0.1, "momentum": 2.0}, "Invalid momentum=2.0: must be in [0, 1) (SGD's momentum; 0.9 is usual)"),
        ({"lr": 0.1, "eps": -1e-8}, "Invalid eps=-1e-08: must be a finite number >= 0"),
        ({"lr": 0.1, "weight_decay": float("nan")}, "Invalid weight_decay=nan: must be a finite number >= 0"),
        ({"lr": 0.1, "max_skipped_steps": 0}, "Invalid max_skipped_steps=0: must be an integer >= 1 (or None)"),
        ({"lr": 0.1, "momentum": 0.0, "nesterov": True},
         "Invalid nesterov=True: Nesterov momentum requires momentum > 0"),
        ({"lr": 0.1, "kl_clip": 0.0}, "Invalid kl_clip=0.0: must be > 0 (or None to disable)"),
        ({"lr": 0.1, "graft": "adam"}, "Invalid graft='adam': use 'sgd', 'adamw' or None"),
        ({"lr": 0.1, "betas": (0.9, 1.0)}, "Invalid betas=(0.9, 1.0): must be two numbers in [0, 1), e.g. (0.9, 0.999)"),
        ({"lr": 0.1, "betas": 0.9}, "Invalid betas=0.9: must be two numbers in [0, 1), e.g. (0.9, 0.999)"),
        ({"lr": 0.1, "graft": "adamw", "nesterov": True},
         "Invalid nesterov=True: with graft='adamw' the momentum is betas[0]; use nesterov=False"),
        ({"lr": 0.1, "split": 0},
         "Invalid split=0: pass an integer >= 1 and no plan (a plan carries its own splits)"),
    ],
)
def test_bad_arguments(kwargs, message) -> None:
    with pytest.raises(ValueError) as err:
        THOR(Net(), **kwargs)
    assert str(err.value) == message


def test_plan_file_backends_per_size_and_unknown_backend(tmp_path) -> None:
    torch.manual_seed(10)
    model = Net()
    ref = copy.deepcopy(model)
    data = batches(2, seed=10)
    make_plan(model, 4, device={"type": "cpu", "backends": {"4": "torch-inv", "1": "torch-cholesky"}}).save(
        tmp_path / "plan.json")
    opt = THOR(model, Plan.load(tmp_path / "plan.json"), lr=0.1)  # JSON keys of "backends" are strings
    assert opt.backends == {4: "torch-inv", 1: "torch-cholesky"}
    train(model, opt, data)
    with pytest.warns(UserWarning, match="Inversion backend 'cupy' from the plan is not available here"):
        opt_ref = THOR(ref, make_plan(ref, 4, device={"type": "cuda", "backend": "cupy"}), lr=0.1)
    train(ref, opt_ref, data)
    assert_params(model, ref, rtol=1e-4)


def test_state_dict_has_no_inverses_and_loads_through_the_standard_api() -> None:
    model = Net()
    opt = THOR(model, make_plan(model, 4), lr=0.1)
    train(model, opt, batches(2))
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups", "thor"}
    assert set(sd["thor"]["layers"]["fc"]) == {"a_split", "g_split", "a_dim", "g_dim", "trace", "factors",
                                               "source", "preconditioner"}
    assert set(sd["thor"]["layers"]["fc"]["source"]) == {"a", "g", "step", "shift"}  # blocks, not inverses
    assert sd["thor"]["layers"]["fc"]["preconditioner"] == {"family": "inverse", "version": 1}
    other = THOR(Net(), make_plan(model, 8), lr=0.1)
    with pytest.raises(ValueError, match="THOR state does not match this optimizer's layers and splits"):
        other.load_state_dict(sd)
    sgd_state = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9).state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        THOR(Net(), make_plan(model, 4), lr=0.1).load_state_dict(sgd_state)  # plain SGD state loads too


# -- param groups, plan paths, other models' state ------------------------------------------------

def no_decay_groups(model: nn.Module, wd: float) -> list[dict]:
    """AdamW's usual recipe: weight decay on the weight matrices and kernels, none on biases and norms."""
    decay = [p for p in model.parameters() if p.dim() > 1]
    rest = [p for p in model.parameters() if p.dim() <= 1]
    return [{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}]


@pytest.mark.parametrize("graft", ["sgd", "adamw"])
def test_a_no_decay_param_group_equals_plain_kfac_with_per_parameter_decay(graft) -> None:
    torch.manual_seed(0)
    model = Net().double()
    ref = copy.deepcopy(model)
    data = batches(3, torch.float64)
    lr = 0.1 if graft == "sgd" else 1e-3
    opt = THOR(model, make_plan(model, 4), params=no_decay_groups(model, 0.05), lr=lr, momentum=0.9,
               graft=graft)
    train(model, opt, data)
    reference_kfac(ref, data, lr=lr, momentum=0.9, wd=lambda p: 0.05 if p.dim() > 1 else 0.0, damping=0.03,
                   split=4, graft=graft)
    assert_params(model, ref)


def test_param_groups_without_preconditioning_equal_torch_adamw_and_sgd() -> None:
    torch.manual_seed(1)
    model = Net()
    data = batches(4)
    for graft, reference in (("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)):
        mine, ref = copy.deepcopy(model), copy.deepcopy(model)
        groups = no_decay_groups(mine, 0.1)
        groups[1]["lr"] = 3e-3
        ref_groups = no_decay_groups(ref, 0.1)
        ref_groups[1]["lr"] = 3e-3
        train(mine, THOR(mine, make_plan(mine, 4), params=groups, lr=1e-3, graft=graft, precondition=False), data)
        extra = {"momentum": 0.9} if graft == "sgd" else {}
        train(ref, reference(ref_groups, lr=1e-3, **extra), data)
        assert_params(mine, ref, rtol=1e-6)


def test_a_group_with_lr_zero_stays_put_and_a_bad_group_value_is_refused() -> None:
    torch.manual_seed(2)
    model = Net()
    frozen = [model.conv1.weight, model.bn.weight, model.bn.bias]
    before = [p.detach().clone() for p in frozen]
    others = [p for p in model.parameters() if all(p is not q for q in frozen)]
    opt = THOR(model, make_plan(model, 4), params=[{"params": frozen, "lr": 0.0}, {"params": others}], lr=0.1)
    train(model, opt, batches(3))
    assert all(torch.equal(p, q) for p, q in zip(frozen, before))
    assert not torch.equal(model.fc.weight, Net().fc.weight)
    with pytest.raises(ValueError) as err:
        THOR(Net(), params=[{"params": list(Net().parameters()), "momentum": 1.5}], lr=0.1)
    assert str(err.value) == "Invalid momentum=1.5: must be in [0, 1) (SGD's momentum; 0.9 is usual)"


def test_a_plan_path_is_loaded_and_other_objects_are_refused(tmp_path) -> None:
    model = Net()
    make_plan(model, 4).save(tmp_path / "plan.json")
    opt = THOR(model, str(tmp_path / "plan.json"), lr=0.1)
    assert {n: s["updates"] for n, s in opt.stats()["layers"].items()} == {"conv1": 0, "conv2": 0, "fc": 0}
    with pytest.raises(ValueError) as err:
        THOR(model, {"layers": []}, lr=0.1)
    assert str(err.value) == ("Invalid plan=dict: pass a Plan (Plan.load('plan.json')), a plan file's path or None")


def test_a_model_with_nothing_to_precondition_says_so() -> None:
    with pytest.warns(UserWarning) as caught:
        THOR(nn.Sequential(nn.BatchNorm1d(3)), lr=0.1)
    assert [str(w.message) for w in caught] == [
        "THOR: the model has no layer to precondition (no Conv2d, Linear or registered layer type): every "
        "parameter gets the first-order update"]


def test_another_models_state_is_refused_at_load() -> None:
    model = Net()
    opt = THOR(model, make_plan(model, 4), lr=0.1)
    train(model, opt, batches(2))
    other = Net(width=5)
    with pytest.raises(ValueError) as err:
        THOR(other, split=4, lr=0.1).load_state_dict(opt.state_dict())
    assert str(err.value) == ("THOR state was saved for another model: parameter 3 (conv2.weight) has shape "
                              "(6, 4, 3, 3) in the state but (5, 4, 3, 3) here; load the state saved by this "
                              "model's optimizer")
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train(model, sgd, batches(1))
    with pytest.raises(ValueError, match=re.escape("parameter 3 (conv2.weight) has shape")):  # no "thor" section: the moments tell
        THOR(other, split=4, lr=0.1).load_state_dict(sgd.state_dict())


def test_a_version_1_checkpoint_resumes() -> None:
    """``tests/data/thor_v1_checkpoint.pt``: 5 steps of ``_resume_setup`` saved by the code before
    checkpoints had a version (per layer ``a``, ``a_blocks``, ``inv_step``, …). The 5 steps replayed
    here match the stored ones only to the last bit of float32 on another CPU (its kernels round
    differently), so the resumed run is compared to 1e-5 (1e-7 absolute), far below what a state loaded wrongly
    (no inverses, reset moments, another step count) would move."""
    from pathlib import Path

    ckpt = torch.load(Path(__file__).parent / "data" / "thor_v1_checkpoint.pt")
    assert "version" not in ckpt["opt"]["thor"] and "a_blocks" in ckpt["opt"]["thor"]["layers"]["fc"]
    data = batches(12, seed=4)
    model, make = _resume_setup()
    model.load_state_dict(ckpt["start"])
    train(model, make(model), data)
    resumed, _ = _resume_setup()
    resumed.load_state_dict(ckpt["model"])
    opt = make(resumed)
    opt.load_state_dict(ckpt["opt"])
    train(resumed, opt, data[5:])
    for (name, p), q in zip(model.named_parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=name)
