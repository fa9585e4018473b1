"""Kronecker factors of Conv2d / Linear layers, captured with hooks (the model is not modified).

For a layer with inputs ``a`` (im2col-unfolded for convolutions, plus a ones column when the layer
has a bias) and per-sample output gradients ``g``:

    A = (1/R) Σ_rows a aᵀ          R = batch · positions (rows of the unfolded input)
    G = (1/B) Σ_n Σ_t g gᵀ          g = B · ∂loss/∂output, the per-sample gradient of a
                                   batch-mean loss; for convolutions the sum over positions t
                                   follows KFC (Grosse & Martens, 2016)

so that A ⊗ G approximates the Fisher of the weight gradient. :class:`FactorCollector` is used both
by the profiler and by the THOR runtime, so both see the same factors.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class LayerSpec:
    """A preconditionable layer: its name, kind and factor dimensions."""

    name: str
    kind: str  # "conv2d" | "linear"
    a_dim: int
    g_dim: int
    has_bias: bool


def _spec(name: str, module: nn.Module) -> LayerSpec | str:
    """The layer's spec, or the reason it cannot be preconditioned."""
    bias = module.bias is not None
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return f"grouped convolution (groups={module.groups}) is not supported; trained with SGD"
        kh, kw = module.kernel_size
        return LayerSpec(name, "conv2d", module.in_channels * kh * kw + bias, module.out_channels, bias)
    return LayerSpec(name, "linear", module.in_features + bias, module.out_features, bias)


def find_layers(model: nn.Module, skip: str | None = None) -> tuple[list[LayerSpec], list[dict]]:
    """All Conv2d / Linear layers of ``model``: the preconditionable specs and the skipped layers.

    ``skip`` is a regular expression; layers whose names it matches (``re.search``) are skipped.
    """
    pattern = re.compile(skip) if skip else None
    specs, skipped = [], []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        if pattern is not None and pattern.search(name):
            skipped.append({"name": name, "reason": f"matched --skip {skip!r}"})
            continue
        spec = _spec(name, module)
        if isinstance(spec, str):
            skipped.append({"name": name, "reason": spec})
        else:
            specs.append(spec)
    return specs, skipped


def layer_specs(model: nn.Module) -> list[LayerSpec]:
    """Specs of every preconditionable layer of ``model`` (no skipping)."""
    return find_layers(model)[0]


def input_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows ``(R, a_dim)``: im2col for convolutions, ones column for a bias."""
    if isinstance(module, nn.Conv2d):
        padding = module.padding
        if isinstance(padding, str) or module.padding_mode != "zeros":
            mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
            x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
            padding = 0
        cols = F.unfold(x, module.kernel_size, module.dilation, padding, module.stride)
        rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    else:
        rows = x.reshape(-1, x.shape[-1])
    if module.bias is not None:
        rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
    return rows


def output_grad_rows(module: nn.Module, grad: torch.Tensor) -> torch.Tensor:
    """The gradient w.r.t. the layer's output as rows ``(R, g_dim)``."""
    if isinstance(module, nn.Conv2d):
        return grad.movedim(1, -1).reshape(-1, grad.shape[1])
    return grad.reshape(-1, grad.shape[-1])


class FactorCollector:
    """Forward / output-gradient hooks that accumulate A and G sums while ``active``.

    Hooks are registered once and do nothing when ``active`` is false or the module is not in
    training mode. :meth:`factors` returns the averages over everything accumulated since the last
    :meth:`reset`; a module called several times per step contributes every call.
    """

    def __init__(self, model: nn.Module, specs: Iterable[LayerSpec], *, dtype=torch.float32):
        self.specs = list(specs)
        self.dtype = dtype
        self.active = False
        modules = dict(model.named_modules())
        self._a_sum: dict[str, torch.Tensor] = {}
        self._g_sum: dict[str, torch.Tensor] = {}
        self._a_rows: dict[str, int] = {}
        self._g_batches: dict[str, int] = {}
        self._handles = []
        for spec in self.specs:
            self._handles.append(modules[spec.name].register_forward_hook(self._forward_hook(spec.name)))
        self.reset()

    def reset(self) -> None:
        self._a_sum.clear(), self._g_sum.clear(), self._a_rows.clear(), self._g_batches.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _forward_hook(self, name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            if not (self.active and module.training and torch.is_grad_enabled()):
                return
            with torch.no_grad():
                rows = input_rows(module, inputs[0].detach()).to(self.dtype)
                self._add(self._a_sum, name, self._gram(name, "a", rows))
                self._a_rows[name] = self._a_rows.get(name, 0) + rows.shape[0]
            if isinstance(output, torch.Tensor) and output.requires_grad:
                batch = output.shape[0]
                output.register_hook(self._grad_hook(name, module, batch))

        return hook

    def _grad_hook(self, name: str, module: nn.Module, batch: int):
        def hook(grad: torch.Tensor) -> None:
            with torch.no_grad():
                rows = output_grad_rows(module, grad.detach()).to(self.dtype)
                self._add(self._g_sum, name, self._gram(name, "g", rows) * (batch * batch))
                self._g_batches[name] = self._g_batches.get(name, 0) + batch

        return hook

    def _gram(self, name: str, which: str, rows: torch.Tensor) -> torch.Tensor:
        """``rowsᵀ rows`` for factor ``which`` ("a" or "g") of layer ``name`` (THOR's runtime keeps
        only the diagonal blocks: :class:`thor_planner.optim.blocks.BlockFactorCollector`)."""
        return rows.T @ rows

    @staticmethod
    def _add(store: dict, name: str, value: torch.Tensor) -> None:
        if name in store:
            store[name] += value
        else:
            store[name] = value

    def has_gradients(self) -> bool:
        """Whether any output gradient was accumulated since the last reset."""
        return bool(self._g_sum)

    def factors(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(A, G)`` per layer name for the layers seen since the last reset."""
        a = {n: s / self._a_rows[n] for n, s in self._a_sum.items()}
        g = {n: s / self._g_batches[n] for n, s in self._g_sum.items()}
        return a, g


@dataclass
class CapturedFactors:
    """Factors captured by :func:`capture_factors`, in the order of ``specs``."""

    specs: list[LayerSpec]
    a: dict[str, torch.Tensor]
    g: dict[str, torch.Tensor]
    skipped: list[dict] = field(default_factory=list)
    fisher: str = "sampled"

    def named_factors(self) -> list[tuple[str, str, torch.Tensor]]:
        """``(layer, "a"|"g", factor)`` for every factor, layer by layer."""
        out = []
        for s in self.specs:
            out += [(s.name, "a", self.a[s.name]), (s.name, "g", self.g[s.name])]
        return out


def fisher_loss(logits: torch.Tensor, labels: torch.Tensor, fisher: str, generator: torch.Generator | None):
    """Cross-entropy whose gradient gives the sampled (labels drawn from the model) or empirical Fisher."""
    flat = logits.reshape(-1, logits.shape[-1])
    if fisher == "sampled":
        with torch.no_grad():
            probs = torch.softmax(flat.float(), dim=-1)
            target = torch.multinomial(probs.cpu(), 1, generator=generator).flatten().to(flat.device)
    elif fisher == "empirical":
        target = labels.reshape(-1).to(flat.device)
    else:
        raise ValueError(f"Invalid fisher={fisher!r}: must be 'sampled' or 'empirical'")
    return F.cross_entropy(flat, target)


def capture_factors(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    fisher: str = "sampled",
    skip: str | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress=None,
) -> CapturedFactors:
    """Average A and G over ``batches`` (one forward and backward each, in training mode).

    The model is left as it was: gradients are cleared and buffers (BatchNorm running statistics)
    restored afterwards. ``progress`` is an optional callable invoked once per batch. Layers the
    forward pass never reaches are moved to ``skipped``.
    """
    specs, skipped = find_layers(model, skip)
    if not specs:
        raise ValueError("The model has no Conv2d or Linear layer to precondition")
    was_training = model.training
    saved_buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    model.train()
    generator = torch.Generator().manual_seed(seed)
    collector = FactorCollector(model, specs)
    collector.active = True
    try:
        for inputs, labels in batches:
            logits = model(inputs.to(device))
            fisher_loss(logits, labels, fisher, generator).backward()
            model.zero_grad(set_to_none=True)
            if progress is not None:
                progress()
        a, g = collector.factors()
    finally:
        collector.remove()
        model.train(was_training)
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(saved_buffers[k])
    used = [s for s in specs if s.name in a and s.name in g]
    skipped += [{"name": s.name, "reason": "not reached by the forward pass (no gradient)"}
                for s in specs if s not in used]
    if not used:
        raise ValueError("No Conv2d or Linear layer received a gradient: check the model's output")
    return CapturedFactors(used, a, g, skipped, fisher)
