"""A layer type registered from outside the package (``nn.Conv1d``) is captured, planned and
preconditioned as a plainly written K-FAC step says; the registry refuses duplicate kinds."""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from thor_planner import THOR
from thor_planner.capture.layers import LAYER_TYPES, LayerType, layer_kinds, register_layer_type
from thor_planner.planning.plan import Schedule

EVERY_STEP = Schedule(damping_init=0.03, damping_decay=1.0, factor_every=1, factor_decay=0.0,
                      interval_initial=1, interval_max=1, omega1=0.0, omega2=0.0)

CONV1D_MODULE = textwrap.dedent('''
    """A user's package: a 1-D convolution layer type and a model and data that use it."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from thor_planner.capture.layers import LayerType, register_layer_type


    class Conv1dType(LayerType):
        kind = "conv1d"
        module_class = nn.Conv1d

        def dims(self, module):
            return module.in_channels * module.kernel_size[0], module.out_channels

        def input_rows(self, module, x):
            x = F.pad(x, (module.padding[0], module.padding[0]))
            patches = x.unfold(2, module.kernel_size[0], module.stride[0])  # (N, C, L, k)
            return patches.permute(0, 2, 1, 3).reshape(-1, x.shape[1] * module.kernel_size[0])

        def grad_rows(self, module, grad):
            return grad.movedim(1, -1).reshape(-1, grad.shape[1])

        def samples(self, module, output):
            return output.shape[0]


    register_layer_type(Conv1dType())


    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv1d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv1d(4, 6, 3, stride=2, bias=False),
                             nn.ReLU(), nn.Flatten(), nn.Linear(6 * 7, 5))


    def data(batch_size=8, seed=0):
        gen = torch.Generator().manual_seed(seed)
        while True:
            yield torch.randn(batch_size, 3, 16, generator=gen), torch.randint(0, 5, (batch_size,), generator=gen)
''')


@pytest.fixture
def conv1d_package(tmp_path, monkeypatch):
    (tmp_path / "userconv1d.py").write_text(CONV1D_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("thor_planner.capture.layers.LAYER_TYPES", dict(LAYER_TYPES))
    sys.modules.pop("userconv1d", None)
    import userconv1d

    yield userconv1d
    sys.modules.pop("userconv1d", None)


def reference_conv1d_kfac(model: nn.Sequential, x, y, lr: float, damping: float) -> None:
    """One dense K-FAC step (no momentum, no grafting) written plainly: A from unfolded patches, G from
    per-sample output gradients summed over positions, ``(G + sI)⁻¹ ∇W (A + sI)⁻¹``."""
    inputs, outputs = {}, {}
    for i, m in enumerate(model):
        if isinstance(m, (nn.Conv1d, nn.Linear)):
            def hook(mod, inp, out, i=i):
                inputs[i] = inp[0].detach()
                out.retain_grad()
                outputs[i] = out
            m.register_forward_hook(hook)
    F.cross_entropy(model(x), y).backward()
    n, shift = x.shape[0], math.sqrt(damping)
    with torch.no_grad():
        for i, out in outputs.items():
            m = model[i]
            if isinstance(m, nn.Conv1d):
                k, pad, stride = m.kernel_size[0], m.padding[0], m.stride[0]
                xp = F.pad(inputs[i], (pad, pad))
                cols = [xp[:, :, j * stride: j * stride + k].reshape(n, -1) for j in range(out.shape[2])]
                a_rows = torch.cat(cols)  # (n·L, C·k), C-major then kernel offset, as the weight
                g_rows = (n * out.grad).permute(0, 2, 1).reshape(-1, m.out_channels)
            else:
                a_rows, g_rows = inputs[i], n * out.grad
            grad = m.weight.grad.reshape(m.out_channels if isinstance(m, nn.Conv1d) else m.out_features, -1)
            if m.bias is not None:
                a_rows = torch.cat([a_rows, torch.ones(a_rows.shape[0], 1, dtype=a_rows.dtype)], 1)
                grad = torch.cat([grad, m.bias.grad[:, None]], 1)
            a = a_rows.T @ a_rows / a_rows.shape[0]
            g = g_rows.T @ g_rows / n
            u = torch.linalg.inv(g + shift * torch.eye(len(g), dtype=g.dtype)) @ grad @ torch.linalg.inv(
                a + shift * torch.eye(len(a), dtype=a.dtype))
            cols = m.weight[0].numel()
            m.weight -= lr * u[:, :cols].reshape(m.weight.shape)
            if m.bias is not None:
                m.bias -= lr * u[:, cols]


def test_a_conv1d_type_registered_outside_is_captured_planned_and_preconditioned(conv1d_package, tmp_path) -> None:
    from thor_planner.planning.planner import make_plan
    from thor_planner.profiling.profiler import ProfileConfig, run_profile
    from thor_planner.timing.candidates import TimingConfig

    assert layer_kinds() == ("conv2d", "linear", "conv1d")
    measurements, captured = run_profile(ProfileConfig(
        model="userconv1d:net", data="userconv1d:data", batches=2, batch_size=8, device="cpu",
        candidates=(1, 4, 16), timing=TimingConfig(budget_s=0.01)))
    assert [(s.name, s.kind, s.a_dim, s.g_dim) for s in captured.specs] == [
        ("0", "conv1d", 10, 4), ("2", "conv1d", 12, 6), ("5", "linear", 43, 5)]
    plan = make_plan(measurements, schedule=EVERY_STEP)
    plan.save(tmp_path / "plan.json")
    dense = copy.deepcopy(plan)  # the same plan at split = dim, so the reference is dense K-FAC
    dense.layers = [dataclasses.replace(lp, a_split=lp.a_dim, g_split=lp.g_dim) for lp in plan.layers]
    model = conv1d_package.net().double()
    ref = copy.deepcopy(model)
    x, y = next(conv1d_package.data())
    opt = THOR(model, dense, lr=0.1, momentum=0.0, graft=None)
    opt.zero_grad()
    F.cross_entropy(model(x.double()), y).backward()
    opt.step()
    reference_conv1d_kfac(ref, x.double(), y, lr=0.1, damping=0.03)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-8, atol=1e-12)
    assert THOR(conv1d_package.net(), tmp_path / "plan.json", lr=0.1).stats()["layers"].keys() == {"0", "2", "5"}


def test_registering_a_kind_twice_is_refused() -> None:
    class Again(LayerType):
        kind = "linear"

    with pytest.raises(ValueError) as err:
        register_layer_type(Again())
    assert str(err.value) == ("Invalid layer type kind='linear': must be a new, non-empty name "
                              "(registered: conv2d, linear)")
