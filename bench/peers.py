"""The peer optimizers of the time-to-target benchmark, each built as its documentation prescribes,
with the search space it is tuned in.

    from peers import absence, make, space
    if absence("soap") is None:                     # else report absence("soap"): "absent"
        opt = make("soap", model, {"lr": 3e-3})    # missing hyperparameters take their defaults
        schedule = LRSchedule(opt, total_steps, "cosine", warmup=0.05)  # thor_planner.training.schedule
        for t in ...: schedule.apply(t); opt.zero_grad(); loss.backward(); opt.step()

Every object :func:`make` returns has ``step()``, ``zero_grad()`` and ``param_groups`` (one learning
rate per group, which the project's :class:`~thor_planner.training.schedule.LRSchedule` scales:
every optimizer of the benchmark gets the same linear warm-up then cosine decay to zero). A peer that does not import is reported ``"absent"``
(:func:`absence`), never imitated; one that raises on a workload is reported with
:func:`unsupported`.

Search spaces (:func:`space`; :class:`thor_planner.tune.space.Param` dimensions). Every space tunes
``lr``, ``weight_decay``, ``beta1`` or ``momentum``, ``warmup`` (0–0.2 of the steps) and one
knob of the method's own; each default lies inside its range. The Adam-like peers (SOAP, Shampoo,
K-FAC on AdamW) take the project's AdamW ranges (``lr`` 1e-4–0.1, ``weight_decay`` 1e-6–0.1, both
log; ``thor_planner.training.space``) and ``beta1`` 0.8–0.99; K-FAC on SGD takes SGD's ``lr`` (1e-3–1,
log) and ``momentum`` (0–0.99) and the same ``weight_decay`` range. Preconditioner and factor
cadences are fixed at their documented defaults, not tuned.

- ``muon``: ``torch.optim.Muon`` (torch ≥ 2.9; Jordan et al., kellerjordan.github.io/posts/muon) on
  the hidden 2-D weight matrices and ``torch.optim.AdamW`` on every other parameter (embeddings, the
  output head = the model's last Linear, biases, norms, convolution kernels), as torch's docstring
  prescribes. Its example's values are the defaults: Muon ``lr`` 0.02, ``momentum`` 0.95 (Nesterov),
  ``weight_decay`` 0.1 (torch's default), 5 Newton–Schulz steps with Jordan's coefficients; AdamW
  ``adamw_lr`` 3e-4, ``adamw_weight_decay`` 0.01. Tuned: ``lr`` 2e-3–0.2 (log), ``weight_decay``
  1e-3–0.3 (log), ``momentum`` 0.8–0.99, and its own knob ``adamw_lr`` (AdamW's range). Newton–Schulz
  runs in bfloat16 as torch's does where bfloat16 matrix products are native (CUDA; CPUs with
  AVX512-BF16, AMX-BF16 or ARM BF16: :func:`cpu_has_bf16`), else the same iteration in float32
  (:class:`Float32Muon`); the optimizer's ``ns_precision`` says which.
- ``soap``: ``heavyball.SOAP`` 3.2.1 (Vyas et al. 2024, arXiv:2409.11321). Defaults heavyball's:
  ``lr`` 3e-3, ``betas`` (0.9, 0.95), ``shampoo_beta`` 0.95, ``eps`` 1e-8, ``weight_decay`` 0.01,
  ``max_precond_dim`` 2048; ``precondition_frequency`` 10, the paper's and its reference code's
  (heavyball's own default is 2), fixed, not tuned. Own knob: ``shampoo_beta`` 0.8–0.999 (the
  preconditioner's moving average). heavyball compiles its steps with ``torch.compile``: kept on
  CUDA; on the CPU (where inductor's autotuning takes tens of seconds per shape) the steps run
  eagerly under torch's ``force_eager`` compiler stance (``compile`` setting; ``opt.compiled``).
- ``shampoo``: Meta's ``distributed_shampoo.DistributedShampoo`` (Shi et al. 2023, arXiv:2309.06497;
  the AlgoPerf external-tuning winner) as its README's drop-in for AdamW (Example 4): ``betas``
  (0.9, 0.999), ``epsilon`` 1e-12, decoupled ``weight_decay`` 1e-5, Adam grafting
  (``AdamPreconditionerConfig``, ``beta2`` = ``betas[1]``, ``epsilon`` 1e-8), ``lr`` 1e-3;
  ``precondition_frequency`` 100 (fixed, not tuned; preconditioning starts then, the README's
  default), ``max_preconditioner_dim`` 1024 (the library's default; the README's example uses 8192).
  Own knob: ``epsilon`` 1e-12–0.1 (log), the README's tuning range.
- ``kfac-pytorch``: ``kfac.preconditioner.KFACPreconditioner`` (KAISA; Pauloski et al. 2021) around a
  base optimizer, ``preconditioner.step()`` before ``opt.step()``: ``base`` ``"sgd"`` (momentum;
  for convolutional nets) or ``"adamw"`` (for language models). Defaults the
  library's and the usage its published step times were measured with (``factor_update_steps``
  10, ``inv_update_steps`` 100, fixed, not tuned; ``damping`` 0.001, ``factor_decay`` 0.95,
  ``kl_clip`` 0.001, scaled by the base optimizer's current learning rate; SGD ``lr`` 0.1,
  ``momentum`` 0.9); SGD's ``weight_decay`` 5e-4 (ResNet training's usual value, THOR's too);
  AdamW's torch defaults (``betas`` (0.9, 0.999), ``weight_decay`` 0.01) at ``lr`` 1e-3. Own knob:
  ``damping`` 1e-4–0.1 (log). Linear layers on ``(…, D)`` inputs count every token as a sample; a
  Linear whose weight is an Embedding's (a tied head) is left to the base optimizer (kfac-pytorch
  would precondition the shared gradient with the head's factors only). kfac-pytorch flattens a
  Linear's input with ``view``: a non-contiguous input raises, and the workload is then reported
  unsupported.
"""

from __future__ import annotations

import functools
import importlib
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from thor_planner.training.space import ADAMW_LR, BETA1, MOMENTUM as SGD_MOMENTUM, SGD_LR, WARMUP, Param
from thor_planner.training.space import WEIGHT_DECAY as ADAMW_WEIGHT_DECAY

#: Defaults every peer shares: the schedule's warm-up (read by the training loop, not by ``make``).
COMMON = {"warmup": 0.05}
NS_PRECISIONS = ("auto", "bfloat16", "float32")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


@dataclass(frozen=True)
class Peer:
    """One peer optimizer: what must import, its defaults and search space per base optimizer
    (the key ``None`` when it has no choice of base), and the function that builds it."""

    name: str
    module: str
    attribute: str
    defaults: Mapping[str | None, Mapping[str, object]]
    spaces: Mapping[str | None, tuple[Param, ...]]
    build: Callable[[nn.Module, dict], object]


def absence(name: str) -> str | None:
    """``None`` when peer ``name`` imports; else why not: ``"absent"`` when it is not installed,
    ``"absent (Error: message)"`` when importing it fails."""
    peer = _peer(name)
    try:
        module = _import(peer.module)
    except ModuleNotFoundError:
        return "absent"
    except Exception as exc:  # noqa: BLE001 - any failure to import means the peer is not there
        return f"absent ({_first_line(exc)})"
    return None if hasattr(module, peer.attribute) else "absent"


def available() -> tuple[str, ...]:
    """The peers that import here, in registry order."""
    return tuple(name for name in PEERS if absence(name) is None)


def unsupported(exc: BaseException) -> str:
    """How a peer that raised on a workload is reported."""
    return f"unsupported: {_first_line(exc)}"


def space(name: str, base: str | None = None) -> tuple[Param, ...]:
    """Peer ``name``'s search space (for K-FAC, that of its ``base`` optimizer; default SGD)."""
    peer = _peer(name)
    return peer.spaces[_base(peer, base)]


def settings(name: str, hp: Mapping[str, object]) -> dict:
    """Every setting peer ``name`` is built with: its defaults, overridden by ``hp``."""
    peer = _peer(name)
    base = _base(peer, hp.get("base"))
    defaults = {**COMMON, **peer.defaults[base]}
    unknown = sorted(set(hp) - set(defaults) - {"base"})
    if unknown:
        raise ValueError(f"Unknown hyperparameters for {name}: {unknown}; known: {sorted(defaults)}")
    return {**defaults, **hp, **({"base": base} if base is not None else {})}


def make(name: str, model: nn.Module, hp: Mapping[str, object]):
    """Peer ``name`` for ``model``'s parameters, with ``hp`` over its defaults (:func:`settings`)."""
    reason = absence(name)
    if reason is not None:
        raise RuntimeError(f"Peer {name} is {reason}")
    return _peer(name).build(model, settings(name, hp))


def _peer(name: str) -> Peer:
    if name not in PEERS:
        raise ValueError(f"Unknown peer {name!r}: must be one of {sorted(PEERS)}")
    return PEERS[name]


def _base(peer: Peer, base: object) -> str | None:
    choices = list(peer.spaces)
    if base is None:
        return choices[0]
    if base not in choices:
        if choices == [None]:
            raise ValueError(f"Peer {peer.name} has no base optimizer (got base={base!r})")
        raise ValueError(f"Invalid base={base!r} for {peer.name}: must be one of {choices}")
    return base  # type: ignore[return-value]


def _import(module: str):
    """``module``, imported with kfac-pytorch's warning about NVIDIA Apex kept quiet."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="NVIDIA Apex is not installed")
        return importlib.import_module(module)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160] if text else ''}".rstrip(": ")


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# ---------------------------------------------------------------------------------------- Muon


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (x86 AVX512-BF16 or AMX-BF16, ARM
    BF16), from the flags of ``/proc/cpuinfo`` (``cpuinfo``: its text; False where it is missing)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    flags = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def ns_precision_for(device: torch.device) -> str:
    """``"bfloat16"`` (torch's Newton–Schulz, unchanged) on CUDA and on CPUs with native bfloat16
    matrix products; ``"float32"`` elsewhere, where a bfloat16 product is many times slower."""
    return "bfloat16" if device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16()) else "float32"


def newton_schulz(grad: torch.Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int,
                  eps: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """torch.optim.Muon's Newton–Schulz orthogonalization of a 2-D ``grad`` (same coefficients,
    same operations in the same order), computed in ``dtype`` (torch's is bfloat16). ``grad`` is
    never written to, even when it is already of ``dtype``."""
    if ns_steps >= 100:
        raise ValueError("Number of steps must be less than 100 for computational efficiency")
    if grad.ndim != 2:
        raise ValueError("Input tensor gradient must be a 2D matrix")
    a, b, c = ns_coefficients
    x = grad.to(dtype)
    tall = grad.size(0) > grad.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)  # out of place: x may be grad itself
    for _ in range(ns_steps):
        gram = x @ x.T
        update = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, update, x, beta=a)
    return x.T if tall else x


if hasattr(torch.optim, "Muon"):
    from torch.optim._muon import _adjust_lr

    class Float32Muon(torch.optim.Muon):
        """``torch.optim.Muon`` with its Newton–Schulz iteration in ``ns_dtype`` (float32) instead
        of bfloat16; every other operation of the step is torch's."""

        ns_dtype = torch.float32

        @torch.no_grad()
        def step(self, closure=None):
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            for group in self.param_groups:
                params, grads, bufs = [], [], []
                self._init_group(group, params, grads, bufs)
                lr, momentum = float(group["lr"]), group["momentum"]
                for param, grad, buf in zip(params, grads, bufs):
                    buf.lerp_(grad, 1 - momentum)
                    update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                    update = newton_schulz(update, group["ns_coefficients"], group["ns_steps"], group["eps"],
                                           self.ns_dtype)
                    param.mul_(1 - lr * group["weight_decay"])
                    param.add_(update, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], param.shape))
            return loss


def output_head(model: nn.Module) -> str:
    """The name of ``model``'s output head: its last Linear module (in definition order)."""
    heads = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not heads:
        raise ValueError("Model has no Linear layer to serve as its output head")
    return heads[-1]


def muon_split(model: nn.Module, head: str | None = None) -> tuple[list[str], list[str]]:
    """Names of the parameters Muon updates (the 2-D weights of hidden layers) and of those AdamW
    updates (embeddings, the output ``head`` (default :func:`output_head`), 1-D and >2-D tensors)."""
    head = output_head(model) if head is None else head
    modules = dict(model.named_modules())
    if head not in modules:
        raise ValueError(f"Invalid head={head!r}: no such module in the model")
    excluded = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    excluded |= {id(p) for p in modules[head].parameters()}
    muon, adamw = [], []
    for name, param in model.named_parameters():
        (muon if param.ndim == 2 and id(param) not in excluded else adamw).append(name)
    return muon, adamw


class MuonWithAdamW:
    """Muon on the hidden matrices and AdamW on every other parameter, stepped together.

    ``param_groups`` lists Muon's groups then AdamW's; ``ns_precision`` is the dtype Muon's
    Newton–Schulz iteration runs in; ``muon_params`` / ``adamw_params`` name the parameters of each.
    """

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer, *, ns_precision: str,
                 muon_params: list[str], adamw_params: list[str]) -> None:
        self.muon, self.adamw = muon, adamw
        self.ns_precision = ns_precision
        self.muon_params, self.adamw_params = muon_params, adamw_params

    @property
    def param_groups(self) -> list[dict]:
        return self.muon.param_groups + self.adamw.param_groups

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])


def build_muon(model: nn.Module, s: dict) -> MuonWithAdamW:
    """``torch.optim.Muon`` on the hidden matrices, ``torch.optim.AdamW`` on the rest."""
    if s["ns_precision"] not in NS_PRECISIONS:
        raise ValueError(f"Invalid ns_precision={s['ns_precision']!r}: must be one of {list(NS_PRECISIONS)}")
    precision = ns_precision_for(_device(model)) if s["ns_precision"] == "auto" else s["ns_precision"]
    muon_names, adamw_names = muon_split(model, s["head"])
    if not muon_names:
        raise ValueError("Model has no hidden 2-D weight matrix for Muon")
    params = dict(model.named_parameters())
    muon_cls = torch.optim.Muon if precision == "bfloat16" else Float32Muon
    muon = muon_cls([params[n] for n in muon_names], lr=s["lr"], weight_decay=s["weight_decay"],
                    momentum=s["momentum"], nesterov=s["nesterov"], ns_steps=s["ns_steps"],
                    adjust_lr_fn=s["adjust_lr_fn"])
    adamw = torch.optim.AdamW([params[n] for n in adamw_names], lr=s["adamw_lr"],
                              weight_decay=s["adamw_weight_decay"])
    return MuonWithAdamW(muon, adamw, ns_precision=precision, muon_params=muon_names,
                         adamw_params=adamw_names)


# ---------------------------------------------------------------------------------------- SOAP


@functools.cache
def _eager_soap() -> type:
    """``heavyball.SOAP`` whose steps run eagerly (torch.compile's ``force_eager`` stance)."""
    heavyball = _import("heavyball")

    class EagerSOAP(heavyball.SOAP):
        def step(self, closure=None):
            with torch.compiler.set_stance("force_eager"):
                return super().step(closure)

    return EagerSOAP


def build_soap(model: nn.Module, s: dict):
    """``heavyball.SOAP``, compiled unless ``compile`` is False (default: on CUDA only)."""
    compiled = _device(model).type == "cuda" if s["compile"] is None else bool(s["compile"])
    cls = _import("heavyball").SOAP if compiled else _eager_soap()
    opt = cls(model.parameters(), lr=s["lr"], betas=(s["beta1"], s["beta2"]), shampoo_beta=s["shampoo_beta"],
              eps=s["eps"], weight_decay=s["weight_decay"],
              precondition_frequency=s["precondition_frequency"], max_precond_dim=s["max_precond_dim"])
    opt.compiled = compiled
    return opt


# ------------------------------------------------------------------------------------- Shampoo


def build_shampoo(model: nn.Module, s: dict):
    """``DistributedShampoo`` as the README's replacement of AdamW: Adam grafting with
    ``beta2 = betas[1]``, decoupled weight decay, preconditioning from ``precondition_frequency`` on."""
    ds = _import("distributed_shampoo")
    grafting = ds.AdamPreconditionerConfig(beta2=s["beta2"], epsilon=s["grafting_epsilon"])
    return ds.DistributedShampoo(
        model.parameters(), lr=s["lr"], betas=(s["beta1"], s["beta2"]), epsilon=s["epsilon"],
        weight_decay=s["weight_decay"], weight_decay_type=ds.WeightDecayType.DECOUPLED,
        max_preconditioner_dim=s["max_preconditioner_dim"],
        precondition_frequency=s["precondition_frequency"],
        start_preconditioning_step=s["precondition_frequency"], grafting_config=grafting)


# --------------------------------------------------------------------------------- kfac-pytorch


class KFACOptimizer:
    """A base optimizer preconditioned by kfac-pytorch: ``step()`` runs the preconditioner's step
    (which rewrites the gradients) and then the base optimizer's."""

    def __init__(self, base: torch.optim.Optimizer, preconditioner) -> None:
        self.base, self.preconditioner = base, preconditioner

    @property
    def param_groups(self) -> list[dict]:
        return self.base.param_groups

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.preconditioner.step()
        self.base.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"base": self.base.state_dict(), "kfac": self.preconditioner.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.base.load_state_dict(state["base"])
        self.preconditioner.load_state_dict(state["kfac"])


def tied_linears(model: nn.Module) -> list[str]:
    """Names of the Linear modules whose weight is an Embedding's weight (tied output heads)."""
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and id(m.weight) in embedded]


def build_kfac(model: nn.Module, s: dict) -> KFACOptimizer:
    """KFACPreconditioner around SGD with momentum or AdamW (``base``); its ``kl_clip`` scaling
    reads the base optimizer's current learning rate, as kfac-pytorch's examples pass it."""
    if s["base"] == "sgd":
        base = torch.optim.SGD(model.parameters(), lr=s["lr"], momentum=s["momentum"],
                               weight_decay=s["weight_decay"])
    else:
        base = torch.optim.AdamW(model.parameters(), lr=s["lr"], betas=(s["beta1"], s["beta2"]),
                                 weight_decay=s["weight_decay"])
    kfac = _import("kfac.preconditioner")
    preconditioner = kfac.KFACPreconditioner(
        model, factor_update_steps=s["factor_update_steps"], inv_update_steps=s["inv_update_steps"],
        damping=s["damping"], factor_decay=s["factor_decay"], kl_clip=s["kl_clip"],
        lr=lambda _step: base.param_groups[0]["lr"],
        skip_layers=[f"^{re.escape(name)}$" for name in tied_linears(model)])
    return KFACOptimizer(base, preconditioner)


# ------------------------------------------------------------------------------------ registry

_KFAC_COMMON = {"damping": 1e-3, "factor_update_steps": 10, "inv_update_steps": 100, "factor_decay": 0.95,
                "kl_clip": 1e-3}
_DAMPING = Param(name="damping", low=1e-4, high=0.1, log=True)

PEERS: dict[str, Peer] = {
    "muon": Peer(
        name="muon", module="torch.optim", attribute="Muon", build=build_muon,
        defaults={None: {"lr": 0.02, "weight_decay": 0.1, "momentum": 0.95, "nesterov": True, "ns_steps": 5,
                         "adjust_lr_fn": None, "adamw_lr": 3e-4, "adamw_weight_decay": 0.01,
                         "ns_precision": "auto", "head": None}},
        spaces={None: (Param(name="lr", low=2e-3, high=0.2, log=True),
                       Param(name="weight_decay", low=1e-3, high=0.3, log=True),
                       Param(name="momentum", low=0.8, high=0.99), WARMUP,
                       replace(ADAMW_LR, name="adamw_lr"))}),
    "soap": Peer(
        name="soap", module="heavyball", attribute="SOAP", build=build_soap,
        defaults={None: {"lr": 3e-3, "weight_decay": 0.01, "beta1": 0.9, "beta2": 0.95, "shampoo_beta": 0.95,
                         "eps": 1e-8, "precondition_frequency": 10, "max_precond_dim": 2048,
                         "compile": None}},
        spaces={None: (ADAMW_LR, ADAMW_WEIGHT_DECAY, BETA1, WARMUP,
                       Param(name="shampoo_beta", low=0.8, high=0.999))}),
    "shampoo": Peer(
        name="shampoo", module="distributed_shampoo", attribute="DistributedShampoo", build=build_shampoo,
        defaults={None: {"lr": 1e-3, "weight_decay": 1e-5, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-12,
                         "grafting_epsilon": 1e-8, "precondition_frequency": 100,
                         "max_preconditioner_dim": 1024}},
        spaces={None: (ADAMW_LR, ADAMW_WEIGHT_DECAY, BETA1, WARMUP,
                       Param(name="epsilon", low=1e-12, high=0.1, log=True))}),
    "kfac-pytorch": Peer(
        name="kfac-pytorch", module="kfac.preconditioner", attribute="KFACPreconditioner", build=build_kfac,
        defaults={"sgd": {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, **_KFAC_COMMON},
                  "adamw": {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "weight_decay": 0.01, **_KFAC_COMMON}},
        spaces={"sgd": (SGD_LR, ADAMW_WEIGHT_DECAY, SGD_MOMENTUM, WARMUP, _DAMPING),
                "adamw": (ADAMW_LR, ADAMW_WEIGHT_DECAY, BETA1, WARMUP, _DAMPING)}),
}
