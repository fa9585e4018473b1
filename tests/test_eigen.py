"""The eigenbasis family against a plainly written reference: Adam run in the eigenbasis of each
layer's A and G blocks (rotate, Adam's moments there, rotate back), with the moments carried to a
new basis at every refresh; block splits with remainders; a frozen layer's basis; bitwise resume;
the accuracy-checked batched eigendecomposition."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from test_thor import LAYERS, Net, _resume_setup, assert_params, batches, make_plan, train
from thor_planner import THOR
from thor_planner.inversion.eigen import EIGEN_TOLERANCE, eigen_residual, eigh_groups, eigh_stack
from thor_planner.partition import group_by_size, partition
from thor_planner.planning.plan import Schedule

EVERY_STEP = Schedule(damping_init=0.03, damping_decay=1.0, factor_every=1, factor_decay=0.0,
                      interval_initial=1, interval_max=1, omega1=0.0, omega2=0.0)
ONCE = Schedule(damping_init=0.03, damping_decay=1.0, factor_every=1, factor_decay=0.0,
                interval_initial=1000, interval_max=1000, omega1=0.0, omega2=0.0)


def block_eigenvectors(f: torch.Tensor, split: int) -> torch.Tensor:
    """The dense block-diagonal matrix of each diagonal block's eigenvectors (descending)."""
    out, start = torch.zeros_like(f), 0
    for size in partition(f.shape[0], split).sizes():
        block = f[start:start + size, start:start + size]
        out[start:start + size, start:start + size] = torch.linalg.eigh(block)[1].flip(-1)
        start += size
    return out


def layer_rows(model, name, inputs, outputs, batch):
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
    return a_rows.T @ a_rows / a_rows.shape[0], (batch * g_rows).T @ (batch * g_rows) / batch, grad


def reference_eigen(model, data, *, lr, wd, betas, eps, split, refresh_every_step=True):
    """Adam in the Kronecker eigenbasis written plainly: dense block-diagonal eigenvector matrices,
    the moments of a layer moved to a new basis by ``P = Q_newᵀ Q_old`` (``m ← P_G m P_Aᵀ``,
    ``v ← (P_G∘P_G) v (P_A∘P_A)ᵀ``), AdamW for the other parameters, decoupled weight decay."""
    b1, b2 = betas
    state, adam = {}, {}
    for t, (x, y) in enumerate(data, start=1):
        inputs, outputs, hooks = {}, {}, []
        for name in LAYERS:
            def hook(m, i, o, name=name):
                inputs[name] = i[0].detach()
                o.retain_grad()
                outputs[name] = o
            hooks.append(getattr(model, name).register_forward_hook(hook))
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for h in hooks:
            h.remove()
        direction = {}
        for name in LAYERS:
            m = getattr(model, name)
            a, g, grad = layer_rows(model, name, inputs, outputs, x.shape[0])
            s = state.setdefault(name, {"m": torch.zeros_like(grad), "v": torch.zeros_like(grad)})
            if refresh_every_step or "qa" not in s:
                qa, qg = block_eigenvectors(a, split), block_eigenvectors(g, split)
                if "qa" in s:
                    pa, pg = qa.T @ s["qa"], qg.T @ s["qg"]
                    s["m"], s["v"] = pg @ s["m"] @ pa.T, (pg * pg) @ s["v"] @ (pa * pa).T
                s["qa"], s["qg"] = qa, qg
            r = s["qg"].T @ grad @ s["qa"]
            s["m"] = b1 * s["m"] + (1 - b1) * r
            s["v"] = b2 * s["v"] + (1 - b2) * r * r
            n = (s["m"] / (1 - b1 ** t)) / ((s["v"] / (1 - b2 ** t)).sqrt() + eps)
            u = s["qg"] @ n @ s["qa"].T
            cols = m.weight[0].numel()
            direction[m.weight] = u[:, :cols].reshape(m.weight.shape)
            if m.bias is not None:
                direction[m.bias] = u[:, cols]
        with torch.no_grad():
            for p in model.parameters():
                if p not in direction:
                    m1, m2 = adam.get(p, (0.0, 0.0))
                    m1, m2 = b1 * m1 + (1 - b1) * p.grad, b2 * m2 + (1 - b2) * p.grad ** 2
                    adam[p] = (m1, m2)
                    direction[p] = (m1 / (1 - b1 ** t)) / ((m2 / (1 - b2 ** t)).sqrt() + eps)
                p.mul_(1 - lr * wd)
                p -= lr * direction[p]


@pytest.mark.parametrize("split", [4, 16, None])
@pytest.mark.parametrize("schedule", [EVERY_STEP, ONCE], ids=["refresh-every-step", "basis-kept"])
def test_equals_adam_in_the_kronecker_eigenbasis(split, schedule) -> None:
    """Split 4 cuts every factor with a remainder (27 → 4·6 + 3, 6 → 4 + 2, 5 → 4 + 1). Batches of 64
    give full-rank factors: within a degenerate eigenspace (a rank-deficient factor) any basis is an
    eigenbasis, and Adam's per-coordinate scaling depends on which one was returned."""
    torch.manual_seed(0)
    model = Net().double()
    ref = copy.deepcopy(model)
    data = batches(4, torch.float64, size=64)
    opt = THOR(model, make_plan(model, split, schedule=schedule), lr=0.01, weight_decay=0.1, betas=(0.9, 0.95),
               eps=1e-8, family="eigen")
    assert opt.graft.value == "adamw"  # the family's own choice
    train(model, opt, data)
    reference_eigen(ref, data, lr=0.01, wd=0.1, betas=(0.9, 0.95), eps=1e-8, split=split or 10_000,
                    refresh_every_step=schedule is EVERY_STEP)
    assert_params(model, ref, rtol=1e-7)


def test_the_family_stands_in_for_adamw_only() -> None:
    with pytest.raises(ValueError) as err:
        THOR(Net(), split=4, lr=0.1, family="eigen", graft="sgd")
    assert str(err.value) == "Invalid graft='sgd': the 'eigen' family stands in for 'adamw' only"
    with pytest.raises(ValueError) as err:
        THOR(Net(), split=4, lr=0.1, family="cholesky")
    assert str(err.value) == "Invalid family='cholesky': use 'inverse' or 'eigen'"


def test_the_plan_names_the_family_and_an_argument_overrides_it() -> None:
    model = Net()
    plan = make_plan(model, 4)
    plan.family = "eigen"
    assert THOR(model, plan, lr=1e-3).family.name == "eigen"
    assert THOR(model, plan, lr=1e-3, family="inverse").family.name == "inverse"


def test_a_frozen_layers_basis_never_changes_again() -> None:
    """lr = 0 and one batch repeated: the factors repeat exactly, so conv2 (ω2 > 0) stops at its
    second check point; its basis and its moments' basis stay while the others keep refreshing."""
    torch.manual_seed(3)
    model = Net()
    plan = make_plan(model, 4, omegas={"conv1": (0.0, 0.0), "conv2": (0.01, 0.001), "fc": (0.0, 0.0)})
    opt = THOR(model, plan, lr=0.0, family="eigen")
    (x, y), = batches(1)
    train(model, opt, [(x, y)] * 2)
    conv2 = next(l for l in opt._layers if l.name == "conv2")
    assert conv2.trace.frozen and conv2.factors.a is None
    frozen = [b.clone() for b in conv2.precond.qa + conv2.precond.qg]
    train(model, opt, [(2 * x, y)] * 3)
    assert all(torch.equal(b, c) for b, c in zip(frozen, conv2.precond.qa + conv2.precond.qg))
    assert opt.stats()["layers"]["conv1"]["updates"] == 5 and opt.stats()["layers"]["conv2"]["updates"] == 1


@pytest.mark.parametrize("k", [3, 6])
def test_resume_is_bitwise_identical(k) -> None:
    torch.manual_seed(4)
    model, make = _resume_setup()

    def eigen(m):
        opt = make(m)
        return THOR(m, make_plan(m, 4, {"conv1": (0.05, 0.001), "conv2": (0.05, 0.03), "fc": (0.0, 0.0)},
                                 opt.schedule), lr=3e-3, weight_decay=0.01, family="eigen")

    start = copy.deepcopy(model.state_dict())
    data = batches(12, seed=4)
    opt = eigen(model)
    train(model, opt, data)
    first, _ = _resume_setup()
    first.load_state_dict(start)
    opt1 = eigen(first)
    train(first, opt1, data[:k])
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt1.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)
    assert ckpt["opt"]["thor"]["family"] == "eigen"
    assert set(ckpt["opt"]["thor"]["layers"]["fc"]["preconditioner"]) == {"family", "version", "exp_avg",
                                                                          "exp_avg_sq", "step"}
    second, _ = _resume_setup()
    second.load_state_dict(ckpt["model"])
    opt2 = eigen(second)
    opt2.load_state_dict(ckpt["opt"])
    train(second, opt2, data[k:])
    assert_params(model, second, exact=True)
    inverse = THOR(copy.deepcopy(second), make_plan(second, 4), lr=0.1)
    with pytest.raises(ValueError, match="saved by the 'eigen' preconditioner family, this optimizer uses 'inverse'"):
        inverse.load_state_dict(ckpt["opt"])


def test_batched_eigh_descends_and_passes_its_check() -> None:
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(64, 24, generator=gen)
    f = rows.T @ rows / 64
    groups = group_by_size([f], [partition(24, 10)])  # blocks 10, 10, 4
    vectors = eigh_groups(groups)
    for size, stack in groups.stacks.items():
        q = vectors.stacks[size]
        values = torch.linalg.eigvalsh(stack.double()).flip(-1)
        rotated = q.mT.double() @ stack.double() @ q.double()
        torch.testing.assert_close(rotated.diagonal(dim1=-2, dim2=-1), values, rtol=1e-4, atol=1e-5)
        assert float(eigen_residual(stack, values.float(), q).max()) < EIGEN_TOLERANCE


def test_a_failed_block_is_redone_in_float64_and_a_hopeless_one_gets_the_identity() -> None:
    gen = torch.Generator().manual_seed(1)
    rows = torch.randn(32, 6, generator=gen)
    good = rows.T @ rows
    nan = torch.full((6, 6), math.nan)
    q = eigh_stack(torch.stack([good, nan]))
    assert torch.equal(q[1], torch.eye(6))
    torch.testing.assert_close(q[0].mT @ q[0], torch.eye(6), atol=1e-5, rtol=0)
