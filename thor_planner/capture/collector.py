"""Kronecker factors of Conv2d / Linear layers, captured with hooks (the model is not modified).

For a layer with inputs ``a`` (im2col-unfolded for convolutions, plus a ones column when the layer
has a bias) and per-sample output gradients ``g``:

    A = (1/R) Σ_rows a aᵀ          R = rows of the input (batch · positions for convolutions)
    G = (1/N) Σ_n Σ_t g gᵀ          g = N · ∂loss/∂output, the per-sample gradient of a mean loss
                                   over N samples: N = batch for convolutions (the sum over
                                   positions t follows KFC, Grosse & Martens 2016), N = every row
                                   (token) for Linear layers (:mod:`thor_planner.capture.layers`)

When the loss averages over some other number of terms ``M`` (a masked-LM loss over the masked
tokens only), the right scale is ``G = M Σ_n Σ_t ∂ₙ ∂ₙᵀ``: THOR rescales by ``M / N`` when its
``step`` is told ``loss_samples=M``.

so that A ⊗ G approximates the Fisher of the weight gradient. :class:`FactorCollector` is used both
by the profiler and by the THOR runtime, so both see the same factors.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from thor_planner.capture.layers import (  # noqa: F401  (re-exported: the collector's public names)
    LayerSpec, LayerType, find_layers, input_rows, layer_specs, layer_type, output_grad_rows,
)


class FactorCollector:
    """Forward and output-gradient hooks that accumulate A and G sums while ``active``.

    Hooks are registered once. A forward call counts only when the collector is ``active``, the
    module is in training mode and gradients are enabled; its A and G are both added when the
    backward pass reaches that call's output, so a forward whose output never gets a gradient (a
    monitoring loss, a stray evaluation in train mode) leaves no trace, and the statistics always
    come from the forwards whose backward produced the gradients. Several forward/backward pairs
    before :meth:`reset` (gradient accumulation, or a module called several times per step) are all
    averaged. Grams are computed in ``dtype`` (float32 by default) with autocast switched off, so
    factors are float32 whatever the autocast dtype.
    """

    def __init__(self, model: nn.Module, specs: Iterable[LayerSpec], *, dtype=torch.float32):
        self.specs = list(specs)
        self.dtype = dtype
        self.active = False
        modules = dict(model.named_modules())
        self._a_sum: dict[str, torch.Tensor] = {}
        self._g_sum: dict[str, torch.Tensor] = {}
        self._a_rows: dict[str, int] = {}
        self._g_rows: dict[str, int] = {}
        self._g_samples: dict[str, int] = {}
        self._handles = []
        for spec in self.specs:
            module = modules[spec.name]
            self._handles.append(module.register_forward_hook(self._forward_hook(spec.name, layer_type(module))))
        self.reset()

    def reset(self) -> None:
        self._a_sum.clear(), self._g_sum.clear(), self._a_rows.clear(), self._g_rows.clear(), self._g_samples.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _forward_hook(self, name: str, kind: LayerType):
        def hook(module: nn.Module, inputs, output) -> None:
            if not (self.active and module.training and torch.is_grad_enabled()):
                return
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(self._grad_hook(name, module, kind, inputs[0].detach(),
                                                    kind.samples(module, output)))

        return hook

    def _grad_hook(self, name: str, module: nn.Module, kind: LayerType, x: torch.Tensor, samples: int):
        def hook(grad: torch.Tensor) -> None:
            with torch.no_grad(), torch.autocast(grad.device.type, enabled=False):
                rows = kind.input_rows(module, x.to(self.dtype))
                if module.bias is not None:
                    rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
                self._add(self._a_sum, name, self._gram(name, "a", rows))
                self._a_rows[name] = self._a_rows.get(name, 0) + rows.shape[0]
                g_rows = kind.grad_rows(module, grad.detach().to(self.dtype))
                self._add(self._g_sum, name, self._gram(name, "g", g_rows) * float(samples * samples))
                self._g_rows[name] = self._g_rows.get(name, 0) + g_rows.shape[0]
                self._g_samples[name] = self._g_samples.get(name, 0) + samples

        return hook

    def _gram(self, name: str, which: str, rows: torch.Tensor) -> torch.Tensor:
        """``rowsᵀ rows`` for factor ``which`` ("a" or "g") of layer ``name`` (THOR's runtime keeps
        only the diagonal blocks: :class:`thor_planner.optim.factors.BlockFactorCollector`)."""
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

    def samples(self) -> dict[str, int]:
        """Per layer, the ``N`` of its G since the last reset (summed over forward/backward pairs)."""
        return dict(self._g_samples)

    def rows(self) -> dict[str, tuple[int, int]]:
        """Per layer, the rows of its A and G Grams since the last reset (summed over calls)."""
        return {n: (r, self._g_rows[n]) for n, r in self._a_rows.items()}

    def factors(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(A, G)`` per layer name for the layers seen since the last reset."""
        a = {n: s / self._a_rows[n] for n, s in self._a_sum.items()}
        g = {n: s / self._g_samples[n] for n, s in self._g_sum.items()}
        return a, g


@dataclass
class CapturedFactors:
    """Factors captured by :func:`capture_factors`, in the order of ``specs``."""

    specs: list[LayerSpec]
    a: dict[str, torch.Tensor]
    g: dict[str, torch.Tensor]
    skipped: list[dict] = field(default_factory=list)
    fisher: str = "sampled"
    #: per layer, the rows one batch gave its A and G Grams (what a training step's capture multiplies)
    rows: dict[str, tuple[int, int]] = field(default_factory=dict)

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
    count = 0
    try:
        for inputs, labels in batches:
            count += 1
            logits = model(inputs.to(device))
            fisher_loss(logits, labels, fisher, generator).backward()
            model.zero_grad(set_to_none=True)
            if progress is not None:
                progress()
        a, g = collector.factors()
        rows = {n: (ra // max(count, 1), rg // max(count, 1)) for n, (ra, rg) in collector.rows().items()}
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
    return CapturedFactors(used, a, g, skipped, fisher, {s.name: rows[s.name] for s in used})
