"""THOR as a drop-in for SGD: per-token factors, capture that follows the backward, skipped steps
that are counted and end in an error, mixed precision, the device-side skip."""

from __future__ import annotations

import copy
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from thor_planner import THOR
from thor_planner.capture.collector import FactorCollector, find_layers
from thor_planner.capture.layers import conv_patches
from thor_planner.optim.guard import DivergedError
from thor_planner.planning.plan import Schedule

EVERY_STEP = Schedule(damping_init=0.03, damping_decay=1.0, factor_every=1, factor_decay=0.0,
                      interval_initial=1, interval_max=1, omega1=0.0, omega2=0.0)
SPARSE = Schedule(damping_init=0.03, damping_decay=1.0, factor_every=4, factor_decay=0.5,
                  interval_initial=4, interval_max=4, omega1=0.0, omega2=0.0)


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False)
        self.fc = nn.Linear(6 * 9, 5)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv1(x)))
        return self.fc(torch.relu(self.conv2(h)).flatten(1))


def data(n, seed=0, size=8):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 6, 6, generator=gen), torch.randint(0, 5, (size,), generator=gen))
            for _ in range(n)]


def run(model, opt, batches, extra=None):
    for i, (x, y) in enumerate(batches):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if extra is not None:
            extra(model, i)


# -- per-token factors ---------------------------------------------------------------------------

def test_linear_factors_are_per_token_for_any_layout() -> None:
    """A mean loss over B·T tokens: G = (1/N) Σ_tokens (N·∂loss/∂out)(…)ᵀ with N = B·T, A = mean a aᵀ."""
    torch.manual_seed(0)
    layer = nn.Linear(4, 3).double()
    x = torch.randn(2, 5, 4, dtype=torch.float64)  # B = 2, T = 5
    target = torch.randn(2, 5, 3, dtype=torch.float64)
    factors = {}
    for layout, inputs, tgt in (("bt", x, target), ("tb", x.transpose(0, 1), target.transpose(0, 1)),
                                ("flat", x.reshape(10, 4), target.reshape(10, 3))):
        collector = FactorCollector(layer, find_layers(layer)[0], dtype=torch.float64)
        collector.active = True
        out = layer(inputs)
        ((out - tgt) ** 2).sum(-1).mean().backward()
        a, g = collector.factors()
        factors[layout] = (a[""], g[""])
        collector.remove()
        layer.zero_grad()
    # plain reference over the 10 tokens
    rows = torch.cat([x.reshape(10, 4), torch.ones(10, 1, dtype=torch.float64)], 1)
    per_token = 2 * (layer(x) - target).detach().reshape(10, 3)  # ∂ℓ_token/∂out
    ref_a = sum(torch.outer(r, r) for r in rows) / 10
    ref_g = sum(torch.outer(g, g) for g in per_token) / 10
    for layout, (a, g) in factors.items():
        torch.testing.assert_close(a, ref_a, msg=layout)
        torch.testing.assert_close(g, ref_g, msg=layout)


def test_same_tokens_as_3d_or_flat_give_the_same_step() -> None:
    torch.manual_seed(1)
    lin3, lin2 = nn.Linear(6, 4), nn.Linear(6, 4)
    lin2.load_state_dict(lin3.state_dict())
    x, y = torch.randn(3, 7, 6), torch.randint(0, 4, (3, 7))
    opts = [THOR(m, split=4, schedule=EVERY_STEP, lr=0.1) for m in (lin3, lin2)]
    for _ in range(3):
        for m, opt, inputs, labels in ((lin3, opts[0], x, y), (lin2, opts[1], x.reshape(21, 6), y.reshape(21))):
            opt.zero_grad()
            F.cross_entropy(m(inputs).reshape(-1, 4), labels.reshape(-1)).backward()
            opt.step()
    torch.testing.assert_close(lin3.weight, lin2.weight, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(lin3.bias, lin2.bias, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("kernel", "stride", "padding", "dilation", "mode"),
                         [(1, 1, 0, 1, "zeros"), (1, 2, 0, 1, "zeros"), (3, 1, 1, 1, "zeros"), (3, 2, 1, 1, "zeros"),
                          (2, 1, 0, 2, "zeros"), (3, 1, "same", 1, "zeros"), (3, 2, 1, 1, "reflect"),
                          (1, 1, 1, 1, "zeros")])
def test_conv_patches_equal_unfold(kernel, stride, padding, dilation, mode) -> None:
    conv = nn.Conv2d(3, 2, kernel, stride=stride, padding=padding, dilation=dilation, padding_mode=mode)
    x = torch.randn(2, 3, 7, 8)
    if isinstance(padding, str) or mode != "zeros":
        padded, pad = F.pad(x, conv._reversed_padding_repeated_twice, mode="constant" if mode == "zeros" else mode), 0
    else:
        padded, pad = x, padding
    cols = F.unfold(padded, kernel, dilation, pad, stride)
    ref = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    assert torch.equal(conv_patches(conv, x), ref)
    assert torch.equal(conv_patches(conv, x.contiguous(memory_format=torch.channels_last)), ref)


# -- capture follows the backward ----------------------------------------------------------------

def test_a_stray_forward_changes_nothing() -> None:
    """A monitoring forward in train mode with gradients on, between step() and the next backward."""
    torch.manual_seed(2)
    model = ConvNet()
    ref = copy.deepcopy(model)
    batches = data(6, seed=2)

    def stray(m, i):
        m(torch.randn(8, 3, 6, 6) * 50)  # never backpropagated

    opt = THOR(model, split=4, schedule=EVERY_STEP, lr=0.05)
    run(model, opt, batches, extra=stray)
    ref_opt = THOR(ref, split=4, schedule=EVERY_STEP, lr=0.05)
    run(ref, ref_opt, batches)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)


def test_gradient_accumulation_averages_every_pair() -> None:
    torch.manual_seed(3)
    model = ConvNet().double()
    (x1, y1), (x2, y2) = [(x.double(), y) for x, y in data(2, seed=3)]
    specs = find_layers(model)[0]

    def collect(pairs):
        collector = FactorCollector(model, specs, dtype=torch.float64)
        collector.active = True
        for x, y in pairs:
            F.cross_entropy(model(x), y).backward()
        model.zero_grad()
        out = collector.factors()
        collector.remove()
        return out

    (a1, g1), (a2, g2), (a12, g12) = collect([(x1, y1)]), collect([(x2, y2)]), collect([(x1, y1), (x2, y2)])
    for name in a12:
        torch.testing.assert_close(a12[name], (a1[name] + a2[name]) / 2)
        torch.testing.assert_close(g12[name], (g1[name] + g2[name]) / 2)


# -- skipped steps -------------------------------------------------------------------------------

def nan_steps(model, opt, n, x, y):
    for _ in range(n):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        model.fc.weight.grad[0, 0] = float("inf")
        opt.step()


def test_consecutive_skips_warn_each_time_and_raise() -> None:
    model = ConvNet()
    opt = THOR(model, split=4, lr=0.1, max_skipped_steps=3)
    (x, y), = data(1)
    run(model, opt, [(x, y)] * 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        nan_steps(model, opt, 2, x, y)
        run(model, opt, [(x, y)])  # a good step resets the run
        nan_steps(model, opt, 2, x, y)
        with pytest.raises(DivergedError) as err:
            nan_steps(model, opt, 1, x, y)
    assert [str(w.message) for w in caught] == [
        "THOR: step 2 skipped: gradients contain NaN or Inf (1 in a row, 1 in all)",
        "THOR: step 2 skipped: gradients contain NaN or Inf (2 in a row, 2 in all)",
        "THOR: step 3 skipped: gradients contain NaN or Inf (1 in a row, 3 in all)",
        "THOR: step 3 skipped: gradients contain NaN or Inf (2 in a row, 4 in all)",
        "THOR: step 3 skipped: gradients contain NaN or Inf (3 in a row, 5 in all)",
    ]
    assert all(w.filename == __file__ for w in caught)
    assert str(err.value) == (
        "THOR: 3 consecutive steps had NaN or Inf gradients (the last at step 3): training has diverged. "
        "Lower the learning rate (lr=0.1) or raise the damping (damping=0.03, Schedule(damping_init=...)) "
        "(max_skipped_steps=3 sets how many skipped steps in a row are tolerated)")
    assert opt.stats()["skipped_steps"] == 5 and opt.stats()["consecutive_skips"] == 3


def test_device_side_skip_leaves_weights_and_momentum_and_is_reported_later() -> None:
    """The no-sync path (the default on CUDA), forced here on CPU."""
    torch.manual_seed(4)
    model = ConvNet()
    opt = THOR(model, split=4, schedule=SPARSE, lr=0.05, weight_decay=1e-3)
    opt._sync_free = True
    ref = copy.deepcopy(model)
    ref_opt = THOR(ref, split=4, schedule=SPARSE, lr=0.05, weight_decay=1e-3)
    batches = data(6, seed=4)
    run(model, opt, batches[:2])
    run(ref, ref_opt, batches[:2])
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)  # same steps as the host-checked path
    params = [p.detach().clone() for p in model.parameters()]
    bufs = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # step 2 is neither a factor step nor a check point: no warning yet
        nan_steps(model, opt, 1, *batches[2])
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
    assert all(torch.equal(opt.state[p]["momentum_buffer"], b) for p, b in zip(model.parameters(), bufs))
    run(model, opt, batches[3:4])  # step 3: still on the device (steps 1-3 are)
    with pytest.warns(RuntimeWarning) as caught:
        run(model, opt, batches[4:5])  # step 4: a factor step and a check point read the counters
    assert [str(w.message) for w in caught] == [
        "THOR: 1 of steps 1-3 skipped: gradients contain NaN or Inf (0 in a row now, 1 in all)"]
    assert opt.stats()["skipped_steps"] == 1


def test_device_side_skip_with_adamw_graft_leaves_adam_state() -> None:
    torch.manual_seed(4)
    model = ConvNet()
    opt = THOR(model, split=4, schedule=SPARSE, lr=1e-3, weight_decay=1e-2, graft="adamw")
    opt._sync_free = True
    batches = data(3, seed=4)
    run(model, opt, batches[:2])
    params = [p.detach().clone() for p in model.parameters()]
    state = [{k: v.clone() for k, v in opt.state[p].items()} for p in model.parameters()]
    nan_steps(model, opt, 1, *batches[2])
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
    for p, saved in zip(model.parameters(), state):
        assert sorted(opt.state[p]) == ["exp_avg", "exp_avg_sq", "step"]
        assert all(torch.equal(opt.state[p][k], v) for k, v in saved.items())
    assert float(opt.state[next(model.parameters())]["step"]) == 2.0


# -- mixed precision and SGD's settings ----------------------------------------------------------

def test_bf16_autocast_trains_with_float32_factors() -> None:
    torch.manual_seed(5)
    model = ConvNet()
    opt = THOR(model, split=4, schedule=EVERY_STEP, lr=0.05)
    (x, y), = data(1, seed=5, size=16)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(l.factors.a.dtype == torch.float32 and l.factors.g.dtype == torch.float32 for l in opt._layers)
    assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in model.parameters())
    assert opt.stats()["skipped_steps"] == 0 and losses[-1] < losses[0] * 0.85


def test_bf16_parameters_get_bf16_updates_and_channels_last_matches() -> None:
    torch.manual_seed(6)
    model = ConvNet()
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    half = copy.deepcopy(model).to(torch.bfloat16)
    batches = data(3, seed=6)
    run(model, THOR(model, split=4, schedule=EVERY_STEP, lr=0.05), batches)
    run(cl, THOR(cl, split=4, schedule=EVERY_STEP, lr=0.05),
        [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches])
    for p, q in zip(model.parameters(), cl.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
    opt = THOR(half, split=4, schedule=EVERY_STEP, lr=0.05)
    run(half, opt, [(x.bfloat16(), y) for x, y in batches])
    assert all(p.dtype == torch.bfloat16 and torch.isfinite(p).all() for p in half.parameters())
    assert opt._layers[0].factors.a.dtype == torch.float32


def test_sgd_settings_train_a_cnn_on_digits() -> None:
    """The README's settings (lr 0.1, momentum 0.9, wd 5e-4), which SGD trains: THOR must too."""
    pytest.importorskip("sklearn")
    from thor_planner.training.loop import TrainConfig, train

    result = train(TrainConfig(model="cnn", data="digits", optimizer="thor-128", lr=0.1, momentum=0.9,
                               weight_decay=5e-4, epochs=2, lr_schedule="constant", seed=0))
    assert result.stopped != "diverged"
    assert result.records[-1].test_accuracy >= 0.9


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_no_host_sync_in_a_step_that_neither_captures_nor_checks() -> None:
    torch.manual_seed(7)
    model = ConvNet().cuda()
    opt = THOR(model, split=4, schedule=SPARSE, lr=0.05)
    batches = [(x.cuda(), y.cuda()) for x, y in data(3, seed=7)]
    run(model, opt, batches[:1])  # step 0: factor step and check point
    x, y = batches[1]
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()  # step 1
    finally:
        torch.cuda.set_sync_debug_mode(0)


class TinyTransformer(nn.Module):
    """Embedding → one attention block (separate Q/K/V) → MLP → output head, on (B, T) token ids."""

    def __init__(self, vocab=11, dim=8, hidden=12):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm = nn.LayerNorm(dim)
        self.up, self.down = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids):
        h = self.embed(ids)
        att = torch.softmax(self.q(h) @ self.k(h).transpose(1, 2) / h.shape[-1] ** 0.5, dim=-1)
        h = self.norm(h + self.o(att @ self.v(h)))
        h = h + self.down(torch.relu(self.up(h)))
        return self.head(h)


@pytest.mark.parametrize("masked", [False, True])
def test_thor_on_a_tiny_transformer_equals_per_token_kfac(masked: bool) -> None:
    """One raw (ungrafted), dense THOR step against K-FAC written plainly with per-token factors.
    ``masked``: a masked-LM loss, averaged over the 6 labelled tokens of 15 (``loss_samples=6``)."""
    torch.manual_seed(8)
    model = TinyTransformer().double()
    ref = copy.deepcopy(model)
    ids, labels = torch.randint(0, 11, (3, 5)), torch.randint(0, 11, (3, 5))
    if masked:
        labels.view(-1)[torch.tensor([0, 2, 3, 7, 8, 9, 11, 12, 14])] = -100
    terms = 6 if masked else 15  # the loss's own count: M for the masked loss, every token otherwise
    lr, shift = 0.1, 0.03 ** 0.5
    opt = THOR(model, schedule=EVERY_STEP, lr=lr, momentum=0.0, graft=None)
    F.cross_entropy(model(ids).reshape(-1, 11), labels.reshape(-1)).backward()
    opt.step(loss_samples=torch.tensor(6) if masked else None)

    linears = {n: m for n, m in ref.named_modules() if isinstance(m, nn.Linear)}
    inputs, outputs = {}, {}
    for name, m in linears.items():
        def hook(mod, i, o, name=name):
            inputs[name] = i[0].detach()
            o.retain_grad()
            outputs[name] = o
        m.register_forward_hook(hook)
    F.cross_entropy(ref(ids).reshape(-1, 11), labels.reshape(-1)).backward()
    tokens = ids.numel()
    with torch.no_grad():
        for name, m in linears.items():
            a_rows = torch.cat([inputs[name].reshape(tokens, -1), torch.ones(tokens, 1, dtype=torch.float64)], 1)
            g_rows = terms * outputs[name].grad.reshape(tokens, -1)  # per-token gradient, loss over `terms`
            a = a_rows.T @ a_rows / tokens
            g = g_rows.T @ g_rows / terms
            grad = torch.cat([m.weight.grad, m.bias.grad[:, None]], 1)
            u = torch.linalg.inv(g + shift * torch.eye(g.shape[0], dtype=torch.float64)) @ grad @ torch.linalg.inv(
                a + shift * torch.eye(a.shape[0], dtype=torch.float64))
            m.weight -= lr * u[:, :-1]
            m.bias -= lr * u[:, -1]
        for p in (ref.embed.weight, ref.norm.weight, ref.norm.bias):
            p -= lr * p.grad
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-9, msg=name)


def test_loss_samples_must_be_positive() -> None:
    opt = THOR(TinyTransformer(), split=4, lr=0.1)
    with pytest.raises(ValueError, match=re.escape("Invalid loss_samples=0: must be >= 1 (the number of "
                                                   "terms the loss averages over)")):
        opt.step(loss_samples=0)


def test_a_tied_output_projection_gets_sgd_without_a_plan() -> None:
    model = TinyTransformer()
    model.head.weight = model.embed.weight  # tied, as BERT's decoder
    opt = THOR(model, split=4, lr=0.1)
    assert "head" not in opt.stats()["layers"] and "up" in opt.stats()["layers"]


def test_reading_stats_or_state_never_hides_a_divergence_on_the_device_path() -> None:
    """NaN gradients at steps 1-3 (decided on the device), max_skipped_steps=2: the next step that
    synchronises (step 4) warns and raises, however often stats() and state_dict() read the counts."""
    torch.manual_seed(4)
    model = ConvNet()
    opt = THOR(model, split=4, schedule=SPARSE, lr=0.05, max_skipped_steps=2)
    opt._sync_free = True
    batches = data(6, seed=4)
    run(model, opt, batches[:1])  # step 0: captures and checks on the host
    for step in (1, 2, 3):
        nan_steps(model, opt, 1, *batches[step])
        assert opt.stats()["skipped_steps"] == step  # the device counters are read and folded ...
        opt.state_dict()
    assert opt.stats()["consecutive_skips"] == 3
    with pytest.warns(RuntimeWarning) as caught, pytest.raises(DivergedError) as err:
        run(model, opt, batches[4:5])  # ... but still reported at step 4
    assert [str(w.message) for w in caught] == [
        "THOR: 3 of steps 1-3 skipped: gradients contain NaN or Inf (3 in a row now, 3 in all)"]
    assert str(err.value).startswith("THOR: 3 consecutive steps had NaN or Inf gradients (before step 4): "
                                     "training has diverged.")


def test_a_good_device_step_between_skips_resets_the_run() -> None:
    torch.manual_seed(4)
    model = ConvNet()
    opt = THOR(model, split=4, schedule=SPARSE, lr=0.05, max_skipped_steps=2)
    opt._sync_free = True
    batches = data(6, seed=4)
    run(model, opt, batches[:1])
    nan_steps(model, opt, 1, *batches[1])
    opt.stats()
    run(model, opt, batches[2:3])
    nan_steps(model, opt, 1, *batches[3])
    with pytest.warns(RuntimeWarning) as caught:
        run(model, opt, batches[4:5])  # two skips, never two in a row: a warning, no error
    assert [str(w.message) for w in caught] == [
        "THOR: 2 of steps 1-3 skipped: gradients contain NaN or Inf (1 in a row now, 2 in all)"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("family, lr", [("inverse", 0.05), ("eigen", 0.01)])
def test_cuda_bf16_autocast_and_channels_last_train_both_families(family: str, lr: float) -> None:
    """The GPU benchmark's setting (bf16 autocast, channels_last) on CUDA: float32 factors, finite
    float32 weights, no skipped step, and the loss going down, for each preconditioner family."""
    torch.manual_seed(8)
    model = ConvNet().cuda().to(memory_format=torch.channels_last)
    opt = THOR(model, split=4, schedule=EVERY_STEP, lr=lr, family=family)
    (x, y), = data(1, seed=8, size=16)
    x, y = x.cuda().contiguous(memory_format=torch.channels_last), y.cuda()
    losses = []
    for _ in range(8):
        opt.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(l.factors.a.dtype == torch.float32 and l.factors.g.dtype == torch.float32 for l in opt._layers)
    assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in model.parameters())
    assert opt.stats()["skipped_steps"] == 0 and losses[-1] < losses[0]
