"""Peer optimizers of the time-to-target benchmark (bench/peers.py), on tiny models."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import peers  # noqa: E402

needs_muon = pytest.mark.skipif(peers.absence("muon") is not None, reason="torch.optim.Muon is absent")
#: Cadences short enough for five steps to reach the preconditioners.
QUICK = {"muon": {}, "soap": {"precondition_frequency": 2}, "shampoo": {"precondition_frequency": 2},
         "kfac-pytorch": {"factor_update_steps": 1, "inv_update_steps": 2}}


class TinyLM(nn.Module):
    """Embedding, a residual MLP block on (B, T, D) with LayerNorm, and an output head."""

    def __init__(self, vocab: int = 32, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 2 * dim)
        self.down = nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        return self.head(h + self.down(torch.relu(self.up(self.norm(h)))))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def task(kind: str):
    """A model and a loss on a fixed batch."""
    gen = torch.Generator().manual_seed(0)
    if kind == "mlp":
        x, y = torch.randn(32, 8, generator=gen), torch.randint(0, 4, (32,), generator=gen)
        model = mlp()
        return model, lambda: F.cross_entropy(model(x), y)
    ids = torch.randint(0, 32, (4, 8), generator=gen)
    model = TinyLM()
    return model, lambda: F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")  # kfac-pytorch's hook on the first layer
@pytest.mark.parametrize("kind", ["mlp", "lm"])
@pytest.mark.parametrize("name", list(peers.PEERS))
def test_five_steps_reduce_the_loss(name, kind, one_thread):
    if peers.absence(name) is not None:
        pytest.skip(f"{name} is {peers.absence(name)}")
    torch.manual_seed(0)
    model, loss_fn = task(kind)
    hp = dict(QUICK[name])
    if name == "kfac-pytorch":
        hp["base"] = "sgd" if kind == "mlp" else "adamw"
    opt = peers.make(name, model, hp)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.01, losses


@needs_muon
def test_muon_takes_hidden_matrices_and_adamw_the_rest():
    model = TinyLM()
    assert peers.muon_split(model) == (["up.weight", "down.weight"],
                                       ["embed.weight", "norm.weight", "norm.bias", "up.bias", "down.bias",
                                        "head.weight", "head.bias"])
    assert peers.muon_split(mlp()) == (["0.weight"], ["0.bias", "2.weight", "2.bias"])
    opt = peers.make("muon", model, {})
    assert opt.muon_params == ["up.weight", "down.weight"]
    params = dict(model.named_parameters())
    muon_params = [p for g in opt.muon.param_groups for p in g["params"]]
    assert muon_params == [params["up.weight"], params["down.weight"]]
    assert sum(len(g["params"]) for g in opt.adamw.param_groups) == 7
    assert [g["lr"] for g in opt.param_groups] == [0.02, 3e-4]  # Muon's, then AdamW's
    with pytest.raises(ValueError, match=r"^Invalid head='lm_head': no such module in the model$"):
        peers.muon_split(model, head="lm_head")


class KeepFloat32(torch.Tensor):
    """A tensor whose ``.bfloat16()`` keeps float32: runs torch's own Newton–Schulz in float32."""

    def bfloat16(self, *args, **kwargs):
        return self.as_subclass(torch.Tensor).clone()


@needs_muon
@pytest.mark.parametrize("shape", [(24, 40), (40, 24)])
def test_float32_newton_schulz_is_torchs_iteration(shape):
    from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, EPS, _zeropower_via_newtonschulz

    grad = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    coefficients = (DEFAULT_A, DEFAULT_B, DEFAULT_C)
    theirs = _zeropower_via_newtonschulz(grad.as_subclass(KeepFloat32), coefficients, 5, EPS)
    assert theirs.dtype == torch.float32
    before = grad.clone()
    ours = peers.newton_schulz(grad, coefficients, 5, EPS)
    assert ours.dtype == torch.float32
    assert torch.allclose(ours, theirs.as_subclass(torch.Tensor), rtol=0, atol=1e-5)
    assert torch.equal(grad, before)  # the input (a momentum buffer, without Nesterov) is left alone


@needs_muon
@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_step_is_torchs_apart_from_the_precision(nesterov):
    class BFloat16Muon(peers.Float32Muon):
        ns_dtype = torch.bfloat16

    results = []
    for cls in (torch.optim.Muon, BFloat16Muon):
        weight = nn.Parameter(torch.randn(12, 20, generator=torch.Generator().manual_seed(2)))
        opt = cls([weight], lr=0.05, weight_decay=0.1, nesterov=nesterov, adjust_lr_fn="match_rms_adamw")
        for seed in (3, 4):
            weight.grad = torch.randn(12, 20, generator=torch.Generator().manual_seed(seed))
            opt.step()
        results.append(weight.detach())
    assert torch.equal(results[0], results[1])


@needs_muon
def test_newton_schulz_precision_is_recorded():
    assert peers.make("muon", mlp(), {"ns_precision": "float32"}).ns_precision == "float32"
    assert isinstance(peers.make("muon", mlp(), {"ns_precision": "float32"}).muon, peers.Float32Muon)
    stock = peers.make("muon", mlp(), {"ns_precision": "bfloat16"}).muon
    assert type(stock) is torch.optim.Muon
    expected = "bfloat16" if peers.cpu_has_bf16() else "float32"
    assert peers.make("muon", mlp(), {}).ns_precision == expected
    message = r"^Invalid ns_precision='fp8': must be one of \['auto', 'bfloat16', 'float32'\]$"
    with pytest.raises(ValueError, match=message):
        peers.make("muon", mlp(), {"ns_precision": "fp8"})


def test_cpu_bf16_flags():
    assert peers.cpu_has_bf16("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n")
    assert peers.cpu_has_bf16("Features\t: fp asimd bf16 i8mm\n")
    assert not peers.cpu_has_bf16("flags\t\t: fpu sse avx2 avx512f\n")
    assert not peers.cpu_has_bf16("")


@pytest.mark.skipif(peers.absence("soap") is not None, reason="heavyball is absent")
def test_soap_runs_eagerly_on_the_cpu():
    opt = peers.make("soap", mlp(), {})
    assert opt.compiled is False
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)


@pytest.mark.skipif(peers.absence("kfac-pytorch") is not None, reason="kfac-pytorch is absent")
def test_kfac_leaves_a_tied_head_to_the_base_optimizer():
    model = TinyLM()
    model.head.weight = model.embed.weight
    assert peers.tied_linears(model) == ["head"]
    opt = peers.make("kfac-pytorch", model, {"base": "adamw"})
    registered = [name for name, _ in opt.preconditioner._layers.values()]
    assert registered == ["up", "down"]
    assert isinstance(opt.base, torch.optim.AdamW)
    assert opt.preconditioner.lr == 1e-3
    opt.param_groups[0]["lr"] = 5e-4
    assert opt.preconditioner.lr == 5e-4  # kl_clip reads the scheduled rate


def test_spaces_share_the_schedule_and_name_each_knob():
    names = {name: [p.name for p in peers.space(name)] for name in peers.PEERS}
    assert names == {"muon": ["lr", "weight_decay", "momentum", "warmup", "adamw_lr"],
                     "soap": ["lr", "weight_decay", "beta1", "warmup", "shampoo_beta"],
                     "shampoo": ["lr", "weight_decay", "beta1", "warmup", "epsilon"],
                     "kfac-pytorch": ["lr", "weight_decay", "momentum", "warmup", "damping"]}
    assert [p.name for p in peers.space("kfac-pytorch", base="adamw")][2] == "beta1"
    for name in peers.PEERS:  # every default lies in its space
        for base in peers.PEERS[name].spaces:
            defaults = peers.settings(name, {"base": base} if base else {})
            for p in peers.space(name, base):
                assert p.low <= defaults[p.name] <= p.high, (name, p.name)


def test_bad_requests_are_refused():
    names = r"\['kfac-pytorch', 'muon', 'shampoo', 'soap'\]"
    with pytest.raises(ValueError, match=rf"^Unknown peer 'adam': must be one of {names}$"):
        peers.absence("adam")
    with pytest.raises(ValueError, match=r"^Unknown hyperparameters for soap: \['momentum'\]; known: "):
        peers.settings("soap", {"momentum": 0.9})
    with pytest.raises(ValueError, match=r"^Peer soap has no base optimizer \(got base='sgd'\)$"):
        peers.space("soap", base="sgd")
    with pytest.raises(ValueError,
                       match=r"^Invalid base='lamb' for kfac-pytorch: must be one of \['sgd', 'adamw'\]$"):
        peers.settings("kfac-pytorch", {"base": "lamb"})
    assert peers.unsupported(RuntimeError("view size is not compatible\nmore")) == \
        "unsupported: RuntimeError: view size is not compatible"


def test_absent_peer_is_reported_not_imitated(monkeypatch):
    ghost = peers.Peer(name="ghost", module="no_such_module_here", attribute="X", defaults={None: {}},
                       spaces={None: ()}, build=lambda model, s: None)
    monkeypatch.setitem(peers.PEERS, "ghost", ghost)
    assert peers.absence("ghost") == "absent"
    assert "ghost" not in peers.available()
    with pytest.raises(RuntimeError, match="^Peer ghost is absent$"):
        peers.make("ghost", mlp(), {})
